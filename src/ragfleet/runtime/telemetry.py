"""Traces and metrics every service shares.

Tracing is OpenTelemetry. It is on only where the standard environment asks for it:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, and neither
``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``. ``configure_tracing`` then installs
a tracer provider that batches spans to that endpoint over OTLP (``OTEL_EXPORTER_OTLP_PROTOCOL``
``grpc``, the default, or ``http/protobuf``); the other ``OTEL_*`` variables (sampler, batch
delay, headers, resource attributes) keep their SDK meaning. Otherwise no provider is installed,
``tracing_enabled()`` is False, and the interceptors and clients skip tracing altogether.

Context crosses services as W3C ``traceparent``/``tracestate`` gRPC metadata: ``outgoing_metadata``
on the calling side, ``incoming_context`` on the serving side (the Ray Serve proxy forwards the
metadata to the generator's replicas unchanged).

Metrics are Prometheus (prometheus-client's default registry), served on ``metrics_port`` by
``MetricsEndpoint``. Names start with ``ragfleet_``; labels are gRPC service, method and status
code names, stages and configured model names: bounded sets.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from ragfleet.runtime.logging import get_logger

log = get_logger(__name__)

Metadata = tuple[tuple[str, str], ...]

# Seconds; from sub-millisecond embeddings of one query to generations of a minute.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_RPC_LABELS = ("grpc_service", "grpc_method", "grpc_code")

SERVER_REQUESTS = Counter(
    "ragfleet_grpc_server_requests",
    "RPCs served, by service, method and status code",
    _RPC_LABELS,
)
SERVER_LATENCY = Histogram(
    "ragfleet_grpc_server_request_duration_seconds",
    "Time from the start of an RPC to its status (streams: to their last message)",
    _RPC_LABELS,
    buckets=LATENCY_BUCKETS,
)
SERVER_IN_FLIGHT = Gauge(
    "ragfleet_grpc_server_in_flight_requests",
    "RPCs being served now",
    ("grpc_service", "grpc_method"),
)
CLIENT_REQUESTS = Counter(
    "ragfleet_grpc_client_requests",
    "Calls made to other ragfleet services (retries included), by method and status code",
    _RPC_LABELS,
)
CLIENT_LATENCY = Histogram(
    "ragfleet_grpc_client_request_duration_seconds",
    "Time of a call to another ragfleet service, retries included: the caller's stage latency",
    _RPC_LABELS,
    buckets=LATENCY_BUCKETS,
)


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` environment asks for traces exported over OTLP."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def tracing_enabled() -> bool:
    """Whether spans are recorded in this process: an SDK tracer provider is installed (by
    ``configure_tracing``, or by a test with an in-memory exporter)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def _tracer() -> trace.Tracer:
    # Looked up per span (only while tracing is on) rather than held: a held proxy tracer keeps
    # the first provider it saw.
    return trace.get_tracer("ragfleet")


def _otlp_exporter() -> SpanExporter:
    env = os.environ
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol.strip() == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    if protocol.strip() != "grpc":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: ragfleet exports grpc or http/protobuf"
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    return GrpcExporter()


_configure_lock = threading.Lock()


def configure_tracing(service_name: str) -> bool:
    """Installs the OTLP-exporting tracer provider when ``tracing_requested()`` and none is
    installed yet (one per process: the first service started names it, unless
    ``OTEL_SERVICE_NAME`` does). Returns ``tracing_enabled()``."""
    with _configure_lock:
        if tracing_enabled() or not tracing_requested():
            return tracing_enabled()
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        trace.set_tracer_provider(provider)
        log.info("tracing_on", service=name)
        return True


def flush_traces(timeout_s: float = 5.0) -> None:
    """Exports the spans still batched (before a process or replica stops)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(int(timeout_s * 1000))


def outgoing_metadata(base: Metadata = ()) -> Metadata:
    """``base`` plus the current trace context as ``traceparent``/``tracestate`` entries."""
    if not tracing_enabled():
        return base
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return base + tuple(carrier.items())


def trace_carrier() -> dict[str, str]:
    """The current trace context as a dict, to hand to another process (a Serve replica)."""
    carrier: dict[str, str] = {}
    if tracing_enabled():
        propagate.inject(carrier)
    return carrier


def incoming_context(metadata: Iterable[tuple[str, Any]] | None) -> otel_context.Context:
    """The trace context a caller sent in its gRPC metadata (an empty one if none)."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class RpcObservation:
    """What the block of ``observe_rpc`` reports back: the span (a non-recording one when
    tracing is off) and, for callers that know it without an exception, the status code."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.code: grpc.StatusCode | None = None


def _status_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = getattr(exc, "grpc_code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    rpc_code = getattr(exc, "code", None)
    if callable(rpc_code) and isinstance(exc, grpc.RpcError):
        found = rpc_code()
        if isinstance(found, grpc.StatusCode):
            return found
    return grpc.StatusCode.UNKNOWN


@contextmanager
def observe_rpc(
    full_method: str,
    *,
    kind: SpanKind,
    parent: otel_context.Context | None = None,
) -> Iterator[RpcObservation]:
    """Times the block as one RPC (``/pkg.Service/Method``) served (``SpanKind.SERVER``) or made
    (``SpanKind.CLIENT``): a span when tracing is on, and the request counter and latency
    histogram of that side, labelled with the status code: ``observation.code`` if the block set
    it (say, from an abort), else OK when the block returns, else the code the exception carries
    (a domain error's, an ``RpcError``'s; CANCELLED for a cancellation; else UNKNOWN)."""
    service, method = split_method(full_method)
    server = kind is SpanKind.SERVER
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    span: Span = trace.INVALID_SPAN
    token: Token[otel_context.Context] | None = None
    if tracing_enabled():
        span = _tracer().start_span(
            full_method.lstrip("/"),
            context=parent,
            kind=kind,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
    if server:
        SERVER_IN_FLIGHT.labels(service, method).inc()
    observation = RpcObservation(span)
    try:
        yield observation
        code = observation.code or grpc.StatusCode.OK
    except BaseException as exc:
        code = observation.code or _status_of(exc)
        if span.is_recording() and code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            span.record_exception(exc)
        raise
    finally:
        elapsed = time.perf_counter() - start
        if server:
            SERVER_IN_FLIGHT.labels(service, method).dec()
        requests, latency = (
            (SERVER_REQUESTS, SERVER_LATENCY) if server else (CLIENT_REQUESTS, CLIENT_LATENCY)
        )
        requests.labels(service, method, code.name).inc()
        latency.labels(service, method, code.name).observe(elapsed)
        if token is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()
            otel_context.detach(token)


@contextmanager
def stage_span(
    name: str, *, parent: otel_context.Context | None = None, **attributes: str | int | float
) -> Iterator[Span]:
    """A span for one stage of a request (``retriever.search``, say), a child of the current
    span or of ``parent``; free when tracing is off."""
    if not tracing_enabled():
        yield trace.INVALID_SPAN
        return
    with _tracer().start_as_current_span(name, context=parent, attributes=attributes) as span:
        yield span


class MetricsEndpoint:
    """Prometheus' ``/metrics`` over HTTP on ``port`` (0: off), in a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._server: Any = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        if self._port == 0 or self._server is not None:
            return
        self._server, _ = start_http_server(self._port, addr=self._host)
        log.info("metrics_listening", port=self._port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
