"""A typed client of the gateway's Retrieve and Ask, in the manner of ``ragfleet.clients``:
every call takes a ``Deadline`` and carries the API key (``authorization: Bearer`` metadata);
failures become domain errors naming the gateway; Retrieve is retried on UNAVAILABLE
(idempotent), the streaming Ask never."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Self

import grpc
from langchain_core.utils import secret_from_env
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from ragfleet.clients import DEFAULT_ATTEMPTS
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import Deadline, insecure_channel
from ragfleet.runtime.errors import (
    PermissionDenied,
    RagfleetError,
    Unauthenticated,
    from_rpc_error,
)

API_KEY_ENV = "RAGFLEET_API_KEY"

default_api_key: Callable[[], SecretStr | None] = secret_from_env(API_KEY_ENV, default=None)
"""``RAGFLEET_API_KEY`` (the key ``ragfleet up`` prints, or one of ``ragfleet keys create``),
else None."""


def _error(err: grpc.aio.AioRpcError, label: str) -> RagfleetError:
    """The domain error for a failed call. A refused key is this caller's to fix, so it stays
    ``Unauthenticated`` / ``PermissionDenied`` rather than the upstream being unavailable."""
    refusals: dict[grpc.StatusCode, type[RagfleetError]] = {
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    }
    refused = refusals.get(err.code())
    if refused is not None:
        return refused(f"{label}: {err.details()}")
    return from_rpc_error(err, label)


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.UNAVAILABLE


class GatewayClient:
    def __init__(self, channel: grpc.aio.Channel, address: str, attempts: int) -> None:
        self._channel = channel
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.label = f"gateway at {address}"
        self._attempts = attempts

    @classmethod
    def connect(
        cls, address: str, attempts: int = DEFAULT_ATTEMPTS, api_key: SecretStr | None = None
    ) -> Self:
        """A client on a channel of its own (no I/O until the first call) whose every call
        carries ``api_key``."""
        token = None if api_key is None else api_key.get_secret_value()
        return cls(insecure_channel(address, token), address, attempts)

    async def retrieve(
        self, request: gateway_pb2.RetrieveRequest, deadline: Deadline
    ) -> gateway_pb2.RetrieveResponse:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception(_is_unavailable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._stub.Retrieve(request, timeout=deadline.timeout("retrieval"))
        except grpc.aio.AioRpcError as err:
            raise _error(err, self.label) from err
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def ask(
        self, request: gateway_pb2.AskRequest, deadline: Deadline
    ) -> AsyncIterator[gateway_pb2.AskEvent]:
        """The Ask events as they arrive; closing the iterator cancels the call. A call refused
        UNAVAILABLE before its first event is tried again (nothing was answered yet); once
        events flow, a failure is the caller's."""
        for attempt in range(1, self._attempts + 1):
            call = self._stub.Ask(request, timeout=deadline.timeout("ask"))
            started = False
            try:
                async for event in call:
                    started = True
                    yield event
                return
            except grpc.aio.AioRpcError as err:
                if started or attempt == self._attempts or not _is_unavailable(err):
                    raise _error(err, self.label) from err
            finally:
                call.cancel()
            await asyncio.sleep(min(0.05 * 2**attempt, 0.5))
