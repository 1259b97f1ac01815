"""The shared server factory, on a real grpc.aio server on port 0, with toy servicers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.runtime.channels import REQUEST_DEADLINE
from ragfleet.runtime.errors import InvalidInput, NotFound
from ragfleet.runtime.server import GrpcService, Servicer, create_server
from ragfleet.runtime.settings import ServiceSettings

pytestmark = pytest.mark.integration


class ToyEmbedder(embedder_pb2_grpc.EmbedderServiceServicer):
    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        if not request.texts:
            raise InvalidInput("texts: at least one text is required")
        if request.texts[0] == "slow":
            await asyncio.sleep(1.0)
        if request.texts[0] == "crash":
            raise RuntimeError("boom")
        if request.texts[0] == "deadline":
            # Reports the deadline the interceptor handed to this RPC's task, in a worker thread.
            deadline = await asyncio.to_thread(REQUEST_DEADLINE.get)
            left = -1 if deadline is None else round(deadline.remaining())
            return embedder_pb2.EmbedResponse(model=f"deadline {left}", dimension=1)
        return embedder_pb2.EmbedResponse(model="toy", dimension=1)


class ToyGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        yield generator_pb2.GenerateResponse(token=generator_pb2.TokenDelta(text="a"))
        raise NotFound(f"model '{request.model}' is not served; available: toy")


@pytest.fixture
async def service() -> AsyncIterator[GrpcService]:
    svc = create_server(
        ServiceSettings(port=0, grace_period_s=2.0),
        [
            Servicer(
                ToyEmbedder(),
                embedder_pb2_grpc.add_EmbedderServiceServicer_to_server,
                "ragfleet.embedder.v1.EmbedderService",
            ),
            Servicer(
                ToyGenerator(),
                generator_pb2_grpc.add_GeneratorServiceServicer_to_server,
                "ragfleet.generator.v1.GeneratorService",
            ),
        ],
    )
    await svc.start()
    yield svc
    await svc.stop(0)


@pytest.fixture
async def channel(service: GrpcService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        yield ch


async def _health(channel: grpc.aio.Channel, name: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=name), timeout=2
    )
    return int(reply.status)


async def test_not_ready_answers_unavailable_at_once(channel: grpc.aio.Channel) -> None:
    assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Embed(embedder_pb2.EmbedRequest(texts=["x"]), timeout=2)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "starting" in (info.value.details() or "")


async def test_ready_serves_and_maps_domain_errors(
    service: GrpcService, channel: grpc.aio.Channel
) -> None:
    await service.mark_ready()
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert (
        await _health(channel, "ragfleet.embedder.v1.EmbedderService")
        == health_pb2.HealthCheckResponse.SERVING
    )
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    reply = await stub.Embed(embedder_pb2.EmbedRequest(texts=["x"]), timeout=2)
    assert reply.model == "toy"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Embed(embedder_pb2.EmbedRequest(), timeout=2)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "texts: at least one text is required"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Embed(embedder_pb2.EmbedRequest(texts=["crash"]), timeout=2)
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "RuntimeError" in (info.value.details() or "")


async def test_the_clients_deadline_reaches_the_handler_and_its_threads(
    service: GrpcService, channel: grpc.aio.Channel
) -> None:
    await service.mark_ready()
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    reply = await stub.Embed(embedder_pb2.EmbedRequest(texts=["deadline"]), timeout=30)
    assert reply.model == "deadline 30"
    reply = await stub.Embed(embedder_pb2.EmbedRequest(texts=["deadline"]))
    assert reply.model == "deadline -1"


async def test_streaming_error_after_first_message(
    service: GrpcService, channel: grpc.aio.Channel
) -> None:
    await service.mark_ready()
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for reply in stub.Generate(generator_pb2.GenerateRequest(model="big"), timeout=2):
            received.append(reply.token.text)
    assert received == ["a"]
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "available: toy" in (info.value.details() or "")


async def test_reflection_lists_services(service: GrpcService, channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = set()
    async for reply in stub.ServerReflectionInfo(iter([request]), timeout=2):
        names |= {s.name for s in reply.list_services_response.service}
    assert {"ragfleet.embedder.v1.EmbedderService", "grpc.health.v1.Health"} <= names


async def test_stop_drains_in_flight_calls(service: GrpcService) -> None:
    await service.mark_ready()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        stub = embedder_pb2_grpc.EmbedderServiceStub(ch)
        call = asyncio.ensure_future(
            stub.Embed(embedder_pb2.EmbedRequest(texts=["slow"]), timeout=5)
        )
        await asyncio.sleep(0.2)
        await service.stop()
        reply = await call
    assert reply.model == "toy"


def _served(method: str, code: str) -> float:
    service, _, name = method.rpartition("/")
    value = REGISTRY.get_sample_value(
        "ragfleet_grpc_server_requests_total",
        {"grpc_service": service, "grpc_method": name, "grpc_code": code},
    )
    return value or 0.0


async def test_each_rpc_is_counted_by_status_code_and_health_is_not(
    service: GrpcService, channel: grpc.aio.Channel
) -> None:
    embed = "ragfleet.embedder.v1.EmbedderService/Embed"
    generate = "ragfleet.generator.v1.GeneratorService/Generate"
    before = {
        code: _served(embed, code) for code in ("OK", "INVALID_ARGUMENT", "INTERNAL", "UNAVAILABLE")
    }
    before_stream = _served(generate, "NOT_FOUND")
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Embed(embedder_pb2.EmbedRequest(texts=["x"]), timeout=2)  # not ready yet
    await service.mark_ready()
    await stub.Embed(embedder_pb2.EmbedRequest(texts=["x"]), timeout=2)
    for texts in ([], ["crash"]):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Embed(embedder_pb2.EmbedRequest(texts=texts), timeout=2)
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in generator_pb2_grpc.GeneratorServiceStub(channel).Generate(
            generator_pb2.GenerateRequest(model="big"), timeout=2
        ):
            pass
    await _health(channel)
    assert {code: _served(embed, code) - before[code] for code in before} == {
        "OK": 1,
        "INVALID_ARGUMENT": 1,
        "INTERNAL": 1,
        "UNAVAILABLE": 1,
    }
    assert _served(generate, "NOT_FOUND") - before_stream == 1
    assert _served("grpc.health.v1.Health/Check", "OK") == 0


async def test_a_server_span_continues_the_callers_trace(
    service: GrpcService, channel: grpc.aio.Channel, recorded_spans: InMemorySpanExporter
) -> None:
    await service.mark_ready()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    await stub.Embed(embedder_pb2.EmbedRequest(texts=["x"]), timeout=2, metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Embed(embedder_pb2.EmbedRequest(texts=[]), timeout=2, metadata=metadata)
    ok, failed = recorded_spans.get_finished_spans()
    for span in (ok, failed):
        assert span.name == "ragfleet.embedder.v1.EmbedderService/Embed"
        assert span.kind is SpanKind.SERVER
        assert span.context is not None and span.parent is not None
        assert span.context.trace_id == int(trace_id, 16)
        assert span.parent.span_id == int(parent_id, 16)
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_metrics_are_served_on_the_metrics_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    svc = create_server(ServiceSettings(port=0, metrics_port=port), [])
    await svc.start()
    try:
        reply = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert reply.status_code == 200
        assert "ragfleet_grpc_server_request_duration_seconds" in reply.text
    finally:
        await svc.stop(0)
    with pytest.raises(httpx.ConnectError):
        await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics", timeout=5)
