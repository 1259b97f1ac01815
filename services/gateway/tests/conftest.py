"""In-process fake upstreams served over real gRPC on port 0, and the gateway in front of them."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import (
    Filter,
    GenerationParams,
    SearchQuery,
    chunk_from_proto,
    fusion_from_proto,
    hit_to_proto,
    search_mode_from_proto,
)
from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.gateway.v1 import gateway_pb2_grpc
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragfleet.runtime.channels import Deadline, insecure_channel
from ragfleet_gateway.auth import Role, add_key, new_key
from ragfleet_gateway.fakes import DIMENSION, FakeGenerator, FakeRetriever, fake_vector
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.wiring import build_gateway
from ragfleet_retriever.core import Retriever
from ragfleet_retriever.server import build_core
from ragfleet_retriever.server import build_server as build_retriever
from ragfleet_retriever.settings import RetrieverSettings

Context = grpc.aio.ServicerContext[Any, Any]


@pytest.fixture(autouse=True, scope="session")
def _no_relevance_threshold() -> Iterator[None]:
    """The fake embedder's hashed vectors are not on MiniLM's cosine scale, so these tests run
    without the relevance threshold unless they set one (``min_dense_score``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAGFLEET_GATEWAY_MIN_DENSE_SCORE", "-1")
        yield


class FakeEmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self) -> None:
        self.fail = False

    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: Context
    ) -> embedder_pb2.EmbedResponse:
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model not loaded")
        return embedder_pb2.EmbedResponse(
            embeddings=[embedder_pb2.Embedding(values=fake_vector(t)) for t in request.texts],
            model="fake",
            dimension=16,
        )

    async def GetModelInfo(self, request: Any, context: Context) -> embedder_pb2.ModelInfo:
        return embedder_pb2.ModelInfo(name="fake", dimension=16)


class FakeRetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    """The domain ``FakeRetriever`` behind the retriever's proto."""

    def __init__(self) -> None:
        self.core = FakeRetriever()

    async def Upsert(
        self, request: retriever_pb2.UpsertRequest, context: Context
    ) -> retriever_pb2.UpsertResponse:
        chunks = [chunk_from_proto(c) for c in request.chunks]
        return retriever_pb2.UpsertResponse(
            upserted=await self.core.upsert(chunks, Deadline.after(5))
        )

    async def Delete(
        self, request: retriever_pb2.DeleteRequest, context: Context
    ) -> retriever_pb2.DeleteResponse:
        deleted = await self.core.delete_source(
            request.filter.tenant, request.source, Deadline.after(5), keep_ids=request.keep_ids
        )
        return retriever_pb2.DeleteResponse(deleted=deleted)

    async def Search(
        self, request: retriever_pb2.SearchRequest, context: Context
    ) -> retriever_pb2.SearchResponse:
        fusion = request.fusion
        result = await self.core.search(
            SearchQuery(
                query=request.query,
                vector=list(request.query_vector),
                mode=search_mode_from_proto(request.mode),
                top_k=request.top_k if request.HasField("top_k") else None,
                fusion=fusion_from_proto(fusion.method),
                rrf_k=fusion.rrf_k or None,
                dense_weight=fusion.dense_weight if fusion.HasField("dense_weight") else None,
                filter=Filter(tenant=request.filter.tenant, equals=dict(request.filter.equals)),
            ),
            Deadline.after(5),
        )
        return retriever_pb2.SearchResponse(
            hits=[hit_to_proto(replace(h, chunk=replace(h.chunk, vector=()))) for h in result.hits],
            mode=request.mode,
            best_dense_score=result.best_dense_score,
        )

    async def GetStats(self, request: Any, context: Context) -> retriever_pb2.Stats:
        return retriever_pb2.Stats(chunks=len(self.core.chunks))


class FakeGeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """Answers only calls routed to the ``generator`` application, as the Ray Serve proxy does."""

    def __init__(self) -> None:
        self.core = FakeGenerator(tokens=("On SIGTERM it drains ", "in-flight calls [1]."))
        self.requests: list[generator_pb2.GenerateRequest] = []

    async def _check_app(self, context: Context) -> None:
        if ("application", "generator") not in tuple(context.invocation_metadata() or ()):
            await context.abort(grpc.StatusCode.NOT_FOUND, "application not found")

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        await self._check_app(context)
        self.requests.append(request)
        params = GenerationParams(request.model, [], request.max_tokens, None)
        async for event in self.core.generate(params, Deadline.after(5)):
            if hasattr(event, "text"):
                yield generator_pb2.GenerateResponse(
                    token=generator_pb2.TokenDelta(text=event.text)
                )
            else:
                yield generator_pb2.GenerateResponse(
                    done=generator_pb2.GenerationDone(
                        model=event.model,
                        finish_reason="stop",
                        usage=common_pb2.Usage(prompt_tokens=10, completion_tokens=2),
                    )
                )

    async def ListModels(self, request: Any, context: Context) -> generator_pb2.ListModelsResponse:
        await self._check_app(context)
        return generator_pb2.ListModelsResponse(default_model="fake-model")


@dataclass
class FakeFleet:
    embedder: FakeEmbedderServicer
    retriever: FakeRetrieverServicer
    generator: FakeGeneratorServicer
    health: health.aio.HealthServicer
    addresses: dict[str, str]


@pytest.fixture(scope="module")
async def fake_fleet() -> AsyncIterator[FakeFleet]:
    embedder, retriever, generator = (
        FakeEmbedderServicer(),
        FakeRetrieverServicer(),
        FakeGeneratorServicer(),
    )
    health_servicer = health.aio.HealthServicer()
    servers = []
    addresses = {}
    for name, servicer, add in (
        ("embedder", embedder, embedder_pb2_grpc.add_EmbedderServiceServicer_to_server),
        ("retriever", retriever, retriever_pb2_grpc.add_RetrieverServiceServicer_to_server),
        ("generator", generator, generator_pb2_grpc.add_GeneratorServiceServicer_to_server),
    ):
        server = grpc.aio.server()
        add(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        addresses[name] = f"127.0.0.1:{port}"
    for service in (
        "ragfleet.embedder.v1.EmbedderService",
        "ragfleet.retriever.v1.RetrieverService",
    ):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    yield FakeFleet(embedder, retriever, generator, health_servicer, addresses)
    await asyncio.gather(*(s.stop(0) for s in servers))


@dataclass
class Gateway:
    settings: GatewaySettings
    grpc_address: str
    rest: httpx.AsyncClient
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    key: str
    """An admin key of tenant "default", sent by ``rest`` and ``stub``."""


async def start_gateway(addresses: dict[str, str], **overrides: Any) -> AsyncIterator[Gateway]:
    with tempfile.TemporaryDirectory() as keys_dir:
        keys_file = Path(keys_dir) / "keys.json"
        key, entry = new_key("default", frozenset({Role.ADMIN}))
        add_key(keys_file, entry)
        settings = GatewaySettings(
            port=0,
            rest_port=0,
            embedder_address=addresses["embedder"],
            retriever_address=addresses["retriever"],
            generator_address=addresses["generator"],
            grace_period_s=0,
            api_keys_file=keys_file,
            **overrides,
        )
        gateway = build_gateway(settings)
        await gateway.start()
        address = f"127.0.0.1:{gateway.grpc.port}"
        async with (
            insecure_channel(address, key) as channel,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{gateway.rest.port}",
                timeout=10,
                headers={"Authorization": f"Bearer {key}"},
            ) as client,
        ):
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            yield Gateway(settings, address, client, stub, key)
        await gateway.stop()


async def start_retriever(data_dir: Path) -> AsyncIterator[tuple[str, Retriever]]:
    """A real retriever on port 0 over an embedded index in ``data_dir``: its address and
    core."""
    settings = RetrieverSettings(port=0, data_dir=data_dir, dimension=DIMENSION, grace_period_s=0)
    core = build_core(settings)
    server = build_retriever(settings, core)
    await server.start()
    await core.load()
    await server.mark_ready()
    yield f"127.0.0.1:{server.port}", core
    await server.stop(0)
    await core.close()


@pytest.fixture(scope="module")
async def gateway(fake_fleet: FakeFleet) -> AsyncIterator[Gateway]:
    async for gw in start_gateway(fake_fleet.addresses):
        yield gw
