"""The real embedder over gRPC: all-MiniLM-L6-v2 on CPU behind a server on port 0."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.runtime.channels import insecure_channel
from ragfleet.runtime.errors import ModelLoadError
from ragfleet.runtime.server import GrpcService
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.model import (
    INSTALL_HINT,
    EmbeddingModel,
    SentenceTransformerEmbedder,
    default_embedding_model_path,
)
from ragfleet_embedder.server import SERVICE_NAME, build_server
from ragfleet_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.integration

SETTINGS = EmbedderSettings(port=0, max_batch_texts=8, max_text_chars=1000, grace_period_s=0)


def load_minilm() -> EmbeddingModel:
    return SentenceTransformerEmbedder.load(
        path=SETTINGS.model_path, name=SETTINGS.model_name, device=SETTINGS.device
    )


@pytest_asyncio.fixture(scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a ready embedder with the real model, shared by this module's tests."""
    embedder = Embedder(SETTINGS, load_minilm)
    service = build_server(SETTINGS, embedder)
    await service.start()
    await embedder.load()
    await service.mark_ready()
    async with insecure_channel(f"127.0.0.1:{service.port}") as chan:
        yield chan
    await service.stop(0)
    await embedder.close()


@pytest_asyncio.fixture
async def loading_service() -> AsyncIterator[GrpcService]:
    """A started server whose model has not finished loading."""
    embedder = Embedder(SETTINGS, load_minilm)
    service = build_server(SETTINGS, embedder)
    await service.start()
    yield service
    await service.stop(0)


async def embed(
    channel: grpc.aio.Channel, texts: list[str], input_type: int
) -> embedder_pb2.EmbedResponse:
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    return await stub.Embed(
        embedder_pb2.EmbedRequest(texts=texts, input_type=input_type),  # type: ignore[arg-type]
        timeout=30,
    )


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_model_info(channel: grpc.aio.Channel) -> None:
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    info = await stub.GetModelInfo(embedder_pb2.GetModelInfoRequest(), timeout=5)
    assert info.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (info.dimension, info.max_sequence_length) == (384, 256)
    assert (info.max_batch_texts, info.max_text_chars) == (8, 1000)


async def test_a_related_passage_scores_higher_than_an_unrelated_one(
    channel: grpc.aio.Channel,
) -> None:
    query = await embed(
        channel, ["How do I stop a service gracefully?"], embedder_pb2.INPUT_TYPE_QUERY
    )
    passages = await embed(
        channel,
        [
            "On SIGTERM the server stops accepting calls and drains in-flight requests.",
            "Bananas are rich in potassium and grow in tropical climates.",
        ],
        embedder_pb2.INPUT_TYPE_PASSAGE,
    )
    for reply, count in ((query, 1), (passages, 2)):
        assert (reply.model, reply.dimension) == ("sentence-transformers/all-MiniLM-L6-v2", 384)
        assert len(reply.embeddings) == count
        assert all(len(e.values) == 384 for e in reply.embeddings)
    q = np.asarray(query.embeddings[0].values)
    related, unrelated = (np.asarray(e.values) for e in passages.embeddings)
    for vector in (q, related, unrelated):
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    assert float(q @ related) > float(q @ unrelated) + 0.2


async def test_concurrent_requests_get_the_same_vectors_as_lone_ones(
    channel: grpc.aio.Channel,
) -> None:
    texts = [f"document number {i} about topic {i % 3}" for i in range(12)]
    alone = await embed(channel, texts[:1], embedder_pb2.INPUT_TYPE_PASSAGE)
    together = await asyncio.gather(
        *(embed(channel, [text], embedder_pb2.INPUT_TYPE_PASSAGE) for text in texts)
    )
    np.testing.assert_allclose(
        together[0].embeddings[0].values, alone.embeddings[0].values, atol=1e-5
    )
    distinct = {tuple(np.round(r.embeddings[0].values[:8], 4)) for r in together}
    assert len(distinct) == len(texts)


@pytest.mark.parametrize(
    ("texts", "detail"),
    [
        ([], "texts must hold at least one text"),
        (["a"] * 9, "the limit is 8 (max_batch_texts)"),
        (["fine", "   "], "texts[1] is empty or whitespace only"),
        (["x" * 1001], "the limit is 1000 (max_text_chars)"),
    ],
)
async def test_bad_input_is_invalid_argument(
    channel: grpc.aio.Channel, texts: list[str], detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embed(channel, texts, embedder_pb2.INPUT_TYPE_QUERY)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (caught.value.details() or "")


async def test_an_unknown_input_type_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embed(channel, ["hello"], 7)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "input_type" in (caught.value.details() or "")


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = stub.ServerReflectionInfo(iter([request]), timeout=5)
    reply = await call.read()
    names = {s.name for s in reply.list_services_response.service}  # type: ignore[union-attr]
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_a_loading_service_answers_unavailable(loading_service: GrpcService) -> None:
    async with insecure_channel(f"127.0.0.1:{loading_service.port}") as chan:
        health = await health_pb2_grpc.HealthStub(chan).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await embed(chan, ["hello"], embedder_pb2.INPUT_TYPE_QUERY)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_corrupt_weights_stop_loading_with_an_install_hint(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(default_embedding_model_path(), folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="may be corrupt") as caught:
        SentenceTransformerEmbedder.load(path=folder, name="broken")
    assert INSTALL_HINT in caught.value.message


def test_the_entry_point_exits_with_an_install_hint_when_the_model_is_missing(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ragfleet_embedder"],
        env={
            "RAGFLEET_EMBEDDER_MODEL_PATH": str(tmp_path / "missing"),
            "RAGFLEET_EMBEDDER_PORT": "0",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "model_load_failed" in result.stderr
    assert INSTALL_HINT in result.stderr
