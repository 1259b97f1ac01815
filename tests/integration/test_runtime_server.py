"""The shared server factory, on a real grpc.aio server on port 0, with toy servicers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

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
