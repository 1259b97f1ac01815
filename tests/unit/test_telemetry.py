"""ragfleet.runtime.telemetry: when tracing is on, what an RPC's observation records, and the
trace context carried in gRPC metadata."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from ragfleet.runtime.errors import NotFound
from ragfleet.runtime.telemetry import (
    incoming_context,
    observe_rpc,
    outgoing_metadata,
    split_method,
    tracing_enabled,
    tracing_requested,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("environ", "requested"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_requested_only_by_an_otlp_endpoint(
    environ: dict[str, str], requested: bool
) -> None:
    assert tracing_requested(environ) is requested


def test_without_tracing_nothing_is_added_to_the_metadata() -> None:
    assert not tracing_enabled()
    base = (("application", "generator"),)
    assert outgoing_metadata(base) == base


def test_split_method() -> None:
    assert split_method("/ragfleet.embedder.v1.EmbedderService/Embed") == (
        "ragfleet.embedder.v1.EmbedderService",
        "Embed",
    )


def _count(side: str, method: str, code: str) -> float:
    labels = {"grpc_service": "test.v1.Toy", "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value(f"ragfleet_grpc_{side}_requests_total", labels) or 0.0


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, "OK"),
        (NotFound("no such chunk"), "NOT_FOUND"),
        (asyncio.CancelledError(), "CANCELLED"),
        (RuntimeError("boom"), "UNKNOWN"),
    ],
)
def test_each_outcome_is_counted_with_its_status_code(
    error: BaseException | None, code: str
) -> None:
    before = _count("server", "Outcome", code)
    with (
        contextlib.suppress(BaseException),
        observe_rpc("/test.v1.Toy/Outcome", kind=SpanKind.SERVER),
    ):
        if error is not None:
            raise error
    assert _count("server", "Outcome", code) - before == 1


def test_a_code_set_in_the_block_wins_over_the_exception() -> None:
    before = _count("client", "Closed", "OK")
    with (
        pytest.raises(GeneratorExit),
        observe_rpc("/test.v1.Toy/Closed", kind=SpanKind.CLIENT) as rpc,
    ):
        rpc.code = grpc.StatusCode.OK
        raise GeneratorExit
    assert _count("client", "Closed", "OK") - before == 1


def test_client_context_reaches_the_server_span(recorded_spans: InMemorySpanExporter) -> None:
    with observe_rpc("/test.v1.Toy/Call", kind=SpanKind.CLIENT):
        metadata = outgoing_metadata((("application", "x"),))
    assert metadata[0] == ("application", "x")
    assert [key for key, _ in metadata[1:]] == ["traceparent"]
    with (
        pytest.raises(NotFound),
        observe_rpc("/test.v1.Toy/Call", kind=SpanKind.SERVER, parent=incoming_context(metadata)),
    ):
        raise NotFound("no such chunk")
    client, server = recorded_spans.get_finished_spans()
    assert (client.kind, server.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert client.context is not None and server.context is not None
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.context.trace_id == client.context.trace_id
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert [event.name for event in server.events] == ["exception"]
