"""Outbound gRPC calls: channels (balanced over a service's replicas) and deadlines derived
from the caller's remaining time, and the deadline of the RPC being served
(``REQUEST_DEADLINE``), for calls a service makes to systems that are not gRPC (OpenSearch).

An address names one server (``host:port``, or any gRPC target such as ``dns:///name:port``)
or several replicas of one service, comma-separated: ``10.0.0.5:50051,10.0.0.6:50051``. Every
channel uses gRPC's ``round_robin`` load balancing: calls rotate over the replicas that are
connected, and a replica whose connection failed is skipped until it reconnects, so a call
retried after UNAVAILABLE lands on a live replica.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from ragfleet.runtime.errors import DeadlineExceeded

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # Reconnect quickly after an upstream restarts instead of backing off for minutes.
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retry (service config ``retryPolicy``) of the ``methods`` of ``service`` on
    UNAVAILABLE. gRPC retries a call only while no reply of it has arrived (not even its
    headers), so a retried stream has shown its caller nothing."""

    service: str
    methods: tuple[str, ...]
    attempts: int = 3

    def method_config(self) -> dict[str, Any]:
        return {
            "name": [{"service": self.service, "method": m} for m in self.methods],
            "retryPolicy": {
                "maxAttempts": self.attempts,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }


def _replica_entries(address: str) -> list[str]:
    """The ``host:port`` entries of a comma-separated replica list (one for a plain address)."""
    entries = [entry.strip() for entry in address.split(",")]
    if not all(entries):
        raise ValueError(f"{address!r}: an empty entry in the address list")
    return entries


def _ip_addresses(entry: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{entry!r}: every replica of a list needs host:port")
    host = host.removeprefix("[").removesuffix("]")
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        # A name in a list is resolved now, to its IPv4 addresses: a static list.
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
        return sorted({ipaddress.IPv4Address(info[4][0]) for info in infos})


def grpc_target(address: str) -> str:
    """The gRPC target of ``address``: a plain address unchanged, a replica list as one
    ``ipv4:a:p,b:p`` (or ``ipv6:[a]:p,...``) target that the channel balances over. Host
    names in a list are resolved once, here; for replicas behind one DNS name that changes,
    give the single address ``dns:///name:port`` instead."""
    entries = _replica_entries(address)
    if len(entries) == 1:
        return entries[0]
    endpoints: list[str] = []
    families: set[int] = set()
    for entry in entries:
        port = entry.rpartition(":")[2]
        for ip in _ip_addresses(entry):
            families.add(ip.version)
            endpoints.append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if len(families) != 1:
        raise ValueError(f"{address!r}: mixes IPv4 and IPv6 replicas; list one family")
    return f"ipv{families.pop()}:" + ",".join(endpoints)


def _service_config(retry: Sequence[RetryPolicy]) -> str:
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry:
        config["methodConfig"] = [policy.method_config() for policy in retry]
    return json.dumps(config)


class _BearerToken:
    """Adds ``authorization: Bearer <token>`` to every call (a gateway API key)."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._entry)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# A channel files each interceptor under the first call kind it implements: one class per kind.
class _UnaryUnaryBearer(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)


class _UnaryStreamBearer(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)


def insecure_channel(
    address: str, token: str | None = None, retry: Sequence[RetryPolicy] = ()
) -> grpc.aio.Channel:
    """A channel to ``address`` (one server or a comma-separated replica list), balanced
    round-robin; with ``token`` every call carries it as a bearer token; ``retry`` turns on
    gRPC's retry for those methods."""
    interceptors: list[grpc.aio.ClientInterceptor] | None = None
    if token:
        interceptors = [_UnaryUnaryBearer(token), _UnaryStreamBearer(token)]
    options: list[tuple[str, Any]] = [
        *CHANNEL_OPTIONS,
        ("grpc.service_config", _service_config(retry)),
    ]
    return grpc.aio.insecure_channel(
        grpc_target(address), options=options, interceptors=interceptors
    )


@dataclass
class Deadline:
    """An absolute point in time a whole request must finish by, split across its stages."""

    expires_at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def timeout(self, stage: str, cap: float | None = None) -> float:
        """Seconds left for the next call, at most ``cap``; raises when nothing is left."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"the request's deadline ran out before {stage}")
        return left if cap is None else min(left, cap)


REQUEST_DEADLINE: ContextVar[Deadline | None] = ContextVar(
    "ragfleet_request_deadline", default=None
)
"""The deadline of the RPC this task serves, set by the server's interceptor from the client's
gRPC deadline; None when the client set none. ``asyncio.to_thread`` carries it into worker
threads; a plain executor needs ``contextvars.copy_context().run``."""
