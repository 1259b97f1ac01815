"""The fleet the fuzz tests attack: the real embedder (its core and servicer, with the fake
embedding model and the word-overlap reranker), the real retriever over an embedded index on
disk, the generator's real Serve ingress and model deployment on the fake engine (behind a
grpc.aio stand-in for Serve's gRPC proxy), and the real gateway (``build_gateway``) with API
keys, gRPC and REST, all on port 0.

Hypothesis and schemathesis tests are synchronous, so the fleet runs on an event loop of its
own in a background thread; the tests reach it over real sockets, as clients do.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import httpx
import pytest
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.ingest import IngestSummary
from ragfleet.rerank import OverlapReranker
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.fakes import FakeEmbeddingModel
from ragfleet_embedder.server import build_server as build_embedder
from ragfleet_embedder.settings import EmbedderSettings
from ragfleet_gateway import ingest_jobs
from ragfleet_gateway.auth import Role, add_key, new_key
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.wiring import build_gateway
from ragfleet_generator.deployment import GeneratorIngress, ModelDeployment
from ragfleet_generator.engine import EngineKind
from ragfleet_generator.settings import GeneratorSettings
from ragfleet_retriever.server import build_core
from ragfleet_retriever.server import build_server as build_retriever
from ragfleet_retriever.settings import RetrieverSettings

T = TypeVar("T")
# Examples per test (per RPC, route, operation): the CI budget. RAGFLEET_FUZZ_SCALE=10 runs ten
# times as many, still reproducibly (derandomized), when hunting.
SCALE = float(os.environ.get("RAGFLEET_FUZZ_SCALE", "1"))


def examples(count: int) -> int:
    return max(1, round(count * SCALE))


DIMENSION = 16
TENANT = "fuzz"
Context = grpc.aio.ServicerContext[Any, Any]
# What the index holds before the fuzzing starts, so that searches find something and answers
# get generated.
SEED_DOCUMENTS = [
    {
        "source": "docs/operations.md",
        "title": "Operations",
        "text": "# Operations\n\n## Shutdown\n\nOn SIGTERM each service flips its health to "
        "NOT_SERVING and drains in-flight calls for the grace period.",
        "metadata": {"lang": "en"},
    },
    {
        "source": "docs/errors.md",
        "title": "Errors",
        "text": "# Errors\n\nHostile input gets a clear error naming the field.",
        "metadata": {"lang": "en"},
    },
]


class _ServeContext:
    """What ``GeneratorIngress`` needs of Serve's ``RayServegRPCContext``, over a grpc.aio
    context: the caller's metadata, and the code and details it sets before raising."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._code = grpc.StatusCode.OK
        self._details = ""

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def code(self) -> grpc.StatusCode:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    async def fail(self, exc: Exception) -> None:
        """Ends the call as Serve's proxy does: with the code set before ``exc`` was raised
        (UNKNOWN when none was)."""
        code = grpc.StatusCode.UNKNOWN if self._code is grpc.StatusCode.OK else self._code
        await self._context.abort(code, self._details or f"{type(exc).__name__}: {exc}")


class ServeProxyStandIn(generator_pb2_grpc.GeneratorServiceServicer):
    """Forwards each call to the ingress, as Serve's gRPC proxy does (in-process)."""

    def __init__(self, ingress: GeneratorIngress) -> None:
        self._ingress = ingress

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        serve_context = _ServeContext(context)
        try:
            async for response in self._ingress.Generate(request, serve_context):  # type: ignore[arg-type]
                yield response
        except Exception as exc:
            await serve_context.fail(exc)

    async def ListModels(
        self, request: generator_pb2.ListModelsRequest, context: Context
    ) -> generator_pb2.ListModelsResponse:
        serve_context = _ServeContext(context)
        try:
            return await self._ingress.ListModels(request, serve_context)  # type: ignore[arg-type]
        except Exception as exc:
            await serve_context.fail(exc)
            raise


class _LocalMethod:
    def __init__(self, remote: Callable[..., Any]) -> None:
        self.remote = remote


class _LocalStream:
    """A ``DeploymentResponseGenerator`` over an in-process async generator."""

    def __init__(self, events: AsyncGenerator[Any, None]) -> None:
        self._events = events
        self._closing: asyncio.Task[None] | None = None

    def __aiter__(self) -> _LocalStream:
        return self

    async def __anext__(self) -> Any:
        return await self._events.__anext__()

    def cancel(self) -> None:
        self._closing = asyncio.ensure_future(self._events.aclose())


class LocalHandle:
    """A ``DeploymentHandle`` of one ``ModelDeployment`` living in this process."""

    def __init__(self, deployment: ModelDeployment) -> None:
        self.generate = _LocalMethod(
            lambda *a: _LocalStream(cast(AsyncGenerator[Any, None], deployment.generate(*a)))
        )
        self.info = _LocalMethod(deployment.info)
        self.ready = _LocalMethod(deployment.ready)

    def options(self, **_: Any) -> LocalHandle:
        return self


@dataclass(frozen=True)
class Fleet:
    """Addresses and API keys of the running fleet."""

    embedder: str
    retriever: str
    generator: str
    gateway: str
    rest_url: str
    key: str
    """An admin key of tenant ``TENANT``."""
    query_key: str
    """A key of tenant ``TENANT`` with the query role only."""


async def _serve_generator(stack: AsyncExitStack) -> str:
    settings = GeneratorSettings(engine=EngineKind.FAKE, metrics_port=0)
    model = settings.served_models()[0]
    handles = {model.name: LocalHandle(ModelDeployment(model, settings))}
    ingress = GeneratorIngress(cast(dict[str, Any], handles), settings)
    server = grpc.aio.server()
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(ServeProxyStandIn(ingress), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stack.push_async_callback(server.stop, 0)
    return f"127.0.0.1:{port}"


async def _start(data_dir: Path, stack: AsyncExitStack) -> dict[str, str]:
    embedder_settings = EmbedderSettings(port=0, grace_period_s=0)
    embedder = Embedder(
        embedder_settings,
        lambda: FakeEmbeddingModel(dimension=DIMENSION),
        OverlapReranker,
        reranker_name="overlap",
    )
    embedder_service = build_embedder(embedder_settings, embedder)
    await embedder_service.start()
    stack.push_async_callback(embedder.close)
    stack.push_async_callback(embedder_service.stop, 0)
    await embedder.load()
    await embedder_service.mark_ready()

    retriever_settings = RetrieverSettings(
        port=0, data_dir=data_dir / "index", dimension=DIMENSION, grace_period_s=0
    )
    core = build_core(retriever_settings)
    retriever_service = build_retriever(retriever_settings, core)
    await retriever_service.start()
    stack.push_async_callback(core.close)
    stack.push_async_callback(retriever_service.stop, 0)
    await core.load()
    await retriever_service.mark_ready()

    generator = await _serve_generator(stack)

    keys_file = data_dir / "keys.json"
    key, entry = new_key(TENANT, frozenset({Role.ADMIN}))
    add_key(keys_file, entry)
    query_key, entry = new_key(TENANT, frozenset({Role.QUERY}))
    add_key(keys_file, entry)
    gateway = build_gateway(
        GatewaySettings(
            port=0,
            rest_port=0,
            embedder_address=f"127.0.0.1:{embedder_service.port}",
            retriever_address=f"127.0.0.1:{retriever_service.port}",
            generator_address=generator,
            grace_period_s=0,
            api_keys_file=keys_file,
            ingest_allowed_roots=[data_dir / "docs"],
            min_dense_score=-1,
        )
    )
    await gateway.start()
    stack.push_async_callback(gateway.stop)
    rest_url = f"http://127.0.0.1:{gateway.rest.port}"
    async with httpx.AsyncClient(
        base_url=rest_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        (await client.post("/v1/ingest", json={"documents": SEED_DOCUMENTS})).raise_for_status()
    return {
        "embedder": f"127.0.0.1:{embedder_service.port}",
        "retriever": f"127.0.0.1:{retriever_service.port}",
        "generator": generator,
        "gateway": f"127.0.0.1:{gateway.grpc.port}",
        "rest_url": rest_url,
        "key": key,
        "query_key": query_key,
    }


def _run_nothing(request: ingest_jobs.JobRequest, summary: IngestSummary) -> IngestSummary:
    return summary


@pytest.fixture(scope="package")
def fleet() -> Iterator[Fleet]:
    """The whole fleet, shared by the fuzz tests (and stopped after them)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-fleet", daemon=True)
    thread.start()
    stack = AsyncExitStack()

    def run(coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result(60)

    with (
        tempfile.TemporaryDirectory(prefix="ragfleet-fuzz-") as data_dir,
        pytest.MonkeyPatch.context() as patch,
    ):
        # Ingestion jobs validate their source, then run the Ray Data pipeline: that pipeline
        # is not what is fuzzed here (starting Ray takes most of a minute), so jobs that pass
        # validation run nothing.
        patch.setattr(ingest_jobs, "pipeline_runner", lambda _: _run_nothing)
        (Path(data_dir) / "docs").mkdir()
        try:
            addresses = run(_start(Path(data_dir), stack))
            yield Fleet(**addresses)
        finally:
            run(stack.aclose())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def openapi_document() -> dict[str, Any]:
    """The gateway's OpenAPI document, from an unstarted gateway wired as the fleet's is (its
    channels never connect): schemathesis needs the operations when the tests are collected,
    before the fleet runs."""

    async def build() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as keys_dir:
            keys_file = Path(keys_dir) / "keys.json"
            add_key(keys_file, new_key(TENANT, frozenset({Role.ADMIN}))[1])
            gateway = build_gateway(GatewaySettings(port=0, rest_port=0, api_keys_file=keys_file))
            try:
                return cast(FastAPI, gateway.rest.config.app).openapi()
            finally:
                await gateway.upstreams.close()

    return asyncio.run(build())


def health_status(address: str, service: str = "") -> int:
    """The grpc.health.v1 status ``address`` reports for ``service``."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)
