"""Outbound gRPC calls: channels and deadlines derived from the caller's remaining time, and
the deadline of the RPC being served (``REQUEST_DEADLINE``), for calls a service makes to
systems that are not gRPC (OpenSearch)."""

from __future__ import annotations

import time
from collections.abc import Callable
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


def insecure_channel(address: str, token: str | None = None) -> grpc.aio.Channel:
    """A channel to ``address``; with ``token`` every call carries it as a bearer token."""
    interceptors: list[grpc.aio.ClientInterceptor] | None = None
    if token:
        interceptors = [_UnaryUnaryBearer(token), _UnaryStreamBearer(token)]
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)


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
