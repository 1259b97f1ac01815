"""Server factory shared by the grpc.aio services.

``create_server`` builds an unstarted server with health, reflection, the telemetry interceptor
(spans, request and latency metrics), the authentication interceptor (the service credential,
when one is configured; the gateway's API keys) and the error/readiness interceptor.
``run_service`` starts it, loads the service's models or indexes, flips health to SERVING, and
on SIGTERM or SIGINT flips to NOT_SERVING, drains for the grace period and stops.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import SpanKind

from ragfleet.runtime.channels import REQUEST_DEADLINE, Deadline
from ragfleet.runtime.errors import RagfleetError, Unauthenticated
from ragfleet.runtime.logging import get_logger
from ragfleet.runtime.settings import ServiceSettings
from ragfleet.runtime.telemetry import (
    MetricsEndpoint,
    configure_tracing,
    flush_traces,
    incoming_context,
    observe_rpc,
    tracing_enabled,
)

log = get_logger(__name__)

_ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Servicer:
    """A servicer and the generated function that registers it, e.g.
    ``Servicer(EmbedderServicer(core), embedder_pb2_grpc.add_EmbedderServiceServicer_to_server,
    "ragfleet.embedder.v1.EmbedderService")``."""

    implementation: object
    add_to_server: Callable[[Any, Any], None]
    service_name: str


class _Readiness:
    def __init__(self) -> None:
        self.ready = False
        self.reason = "the service is still starting (loading models or indexes)"


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes did not decode, so the call can end with
    INVALID_ARGUMENT; raised from the deserializer, the error would reach the client as
    UNKNOWN (and grpc would log a traceback per call)."""

    error: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return _Undecodable(str(exc)[:200])

    return decode


def _note_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Makes the client's deadline the task's ``REQUEST_DEADLINE`` (each RPC is a task)."""
    remaining = context.time_remaining()
    REQUEST_DEADLINE.set(None if remaining is None else Deadline.after(remaining))


class _ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of the services' own methods (health and reflection pass as they are)
    with what ``wrap`` returns, once per method: a method's handler never changes, and building
    the wrappers on every call would cost each RPC tens of microseconds."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_ALWAYS_OPEN):
            return handler
        wrapped = self._wrapped[method] = self.wrap(handler, method)
        return wrapped

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        raise NotImplementedError


class ErrorInterceptor(_ServiceInterceptor):
    """Maps domain errors to status codes, and answers UNAVAILABLE at once while not ready."""

    def __init__(self, readiness: _Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        readiness = self._readiness

        async def check_request(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if not readiness.ready:
                await context.abort(grpc.StatusCode.UNAVAILABLE, readiness.reason)
            if isinstance(request, _Undecodable):
                log.info("rpc_refused", method=method, code="INVALID_ARGUMENT")
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid protobuf message: {request.error}",
                )

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
            if isinstance(exc, RagfleetError):
                if exc.grpc_code is grpc.StatusCode.INTERNAL:
                    log.error("rpc_failed", method=method, error=exc.message)
                await context.abort(exc.grpc_code, exc.message)
            log.exception("rpc_crashed", method=method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

        async def unary_unary(
            inner: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            await check_request(request, context)
            _note_deadline(context)
            try:
                return await inner(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await fail(context, exc)

        async def unary_stream(
            inner: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await check_request(request, context)
            _note_deadline(context)
            try:
                async for response in inner(request, context):
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await fail(context, exc)

        return _wrap_handler(
            handler, unary_unary, unary_stream, _tolerant(handler.request_deserializer)
        )


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata; None without one."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


Authenticate = Callable[[str, Iterable[tuple[str, Any]]], None]
"""Checks a call's credentials, given its method and metadata: returns when it may proceed,
raises ``Unauthenticated`` or ``PermissionDenied`` when not."""


def service_credential_check(credential: str) -> Authenticate:
    """Lets through only calls that carry ``credential`` as their bearer token (compared in
    constant time)."""
    expected = credential.encode()

    def authenticate(method: str, metadata: Iterable[tuple[str, Any]]) -> None:
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated(
                f"{method}: this service needs the fleet's service credential "
                "(metadata authorization: Bearer <credential>)"
            )
        if not hmac.compare_digest(token.encode(), expected):
            raise Unauthenticated(f"{method}: the service credential is not this fleet's")

    return authenticate


class AuthInterceptor(_ServiceInterceptor):
    """Runs ``authenticate`` before each call of the services' own methods (health and
    reflection stay open) and ends the call with its error's status code when it refuses.
    Whatever ``authenticate`` sets in context variables is seen by the handler (same task)."""

    def __init__(self, authenticate: Authenticate) -> None:
        super().__init__()
        self._authenticate = authenticate

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        authenticate = self._authenticate

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                authenticate(method, context.invocation_metadata() or ())
            except RagfleetError as exc:
                log.info("rpc_refused", method=method, code=exc.grpc_code.name)
                await context.abort(exc.grpc_code, exc.message)

        async def unary_unary(
            inner: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            await check(context)
            return await inner(request, context)

        async def unary_stream(
            inner: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await check(context)
            async for response in inner(request, context):
                yield response

        return _wrap_handler(handler, unary_unary, unary_stream)


class TelemetryInterceptor(_ServiceInterceptor):
    """A server span per RPC (its parent the caller's ``traceparent``) when tracing is on, and
    the request counter and latency histogram per service, method and status code. Outermost,
    so it sees the status the error interceptor chose; health and reflection are left out."""

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:

        def observe(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            parent = incoming_context(context.invocation_metadata()) if tracing_enabled() else None
            return observe_rpc(method, kind=SpanKind.SERVER, parent=parent)

        async def unary_unary(
            inner: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            with observe(context) as rpc:
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    rpc.code = context.code()
                    raise

        async def unary_stream(
            inner: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with observe(context) as rpc:
                try:
                    async for response in inner(request, context):
                        yield response
                except grpc.aio.AbortError:
                    rpc.code = context.code()
                    raise

        return _wrap_handler(handler, unary_unary, unary_stream)


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary_unary: Callable[..., Awaitable[Any]],
    unary_stream: Callable[..., AsyncIterator[Any]],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its unary-unary or unary-stream behaviour wrapped: the wrappers take the
    inner behaviour first, then the request and context; ``request_deserializer`` replaces the
    handler's when given. Other kinds pass unchanged."""
    deserializer = request_deserializer or handler.request_deserializer
    # partial keeps them coroutine and async-generator functions, which grpc.aio checks.
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            functools.partial(unary_unary, handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            functools.partial(unary_stream, handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class GrpcService:
    """An unstarted grpc.aio server with health and readiness; see ``create_server``."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: health.aio.HealthServicer,
        service_names: Sequence[str],
        readiness: _Readiness,
        grace_period_s: float,
        metrics: MetricsEndpoint | None = None,
        telemetry_name: str = "ragfleet",
    ) -> None:
        self.server = server
        self.port = port
        self._health = health_servicer
        self._service_names = list(service_names)
        self._readiness = readiness
        self._grace_period_s = grace_period_s
        self.metrics = metrics or MetricsEndpoint("127.0.0.1", 0)
        self._telemetry_name = telemetry_name

    @property
    def ready(self) -> bool:
        return self._readiness.ready

    async def start(self) -> None:
        """Starts serving (NOT_SERVING until ``mark_ready``), the metrics endpoint if
        configured, and tracing if the ``OTEL_*`` environment asks for it."""
        configure_tracing(self._telemetry_name)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.metrics.start()
        await self.server.start()
        log.info("listening", port=self.port, services=self._service_names)

    async def mark_ready(self) -> None:
        self._readiness.ready = True
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", services=self._service_names)

    async def stop(self, grace_period_s: float | None = None) -> None:
        """Flips health to NOT_SERVING, lets in-flight calls finish for the grace period, stops."""
        self._readiness.ready = False
        self._readiness.reason = "the service is shutting down"
        await self._health.enter_graceful_shutdown()
        grace = self._grace_period_s if grace_period_s is None else grace_period_s
        log.info("draining", grace_period_s=grace)
        await self.server.stop(grace)
        self.metrics.stop()
        flush_traces()
        log.info("stopped")

    async def _set_all(self, status: int) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)  # type: ignore[arg-type]


def create_server(
    settings: ServiceSettings,
    servicers: Sequence[Servicer],
    options: Sequence[tuple[str, Any]] = (),
    authenticate: Authenticate | None = None,
) -> GrpcService:
    """Builds an unstarted server bound to ``settings.bind_address`` (port 0 picks a free port),
    with its metrics on ``settings.metrics_port`` (0: none). Calls are checked by
    ``authenticate`` (the gateway's API keys); without it, by the service credential when
    ``settings`` has one, and otherwise not at all."""
    readiness = _Readiness()
    if authenticate is None and (credential := settings.credential()) is not None:
        authenticate = service_credential_check(credential)
    auth = [] if authenticate is None else [AuthInterceptor(authenticate)]
    server = grpc.aio.server(
        interceptors=[TelemetryInterceptor(), *auth, ErrorInterceptor(readiness)],
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            *options,
        ],
    )
    for servicer in servicers:
        servicer.add_to_server(servicer.implementation, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.service_name for s in servicers]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(settings.bind_address)
    if port == 0:
        raise OSError(f"cannot bind {settings.bind_address}: is the port already in use?")
    return GrpcService(
        server,
        port,
        health_servicer,
        names,
        readiness,
        settings.grace_period_s,
        MetricsEndpoint(settings.host, settings.metrics_port),
        settings.telemetry_name,
    )


async def run_service(service: GrpcService, load: Callable[[], Awaitable[None]]) -> None:
    """Starts ``service``, runs ``load`` (models, indexes), marks it ready, and serves until
    SIGTERM or SIGINT, then drains. A failing ``load`` stops the service with its error."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    loading = asyncio.ensure_future(load())
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading in done:
        try:
            loading.result()
        except BaseException:
            stopping.cancel()
            await service.stop(0)
            raise
        await service.mark_ready()
        await stopping
    else:
        loading.cancel()
    await service.stop()
