"""Rerank over gRPC on port 0, with a real cross-encoder built in a temp folder from the
all-MiniLM-L6-v2 weights (its one-logit head is untrained: these tests check the wiring, not
the ranking quality, which benchmarks/rerank_quality.py measures)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from ragfleet.domain import default_embedding_model_path
from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.rerank import CrossEncoderReranker, Reranker, load_reranker
from ragfleet.runtime.channels import insecure_channel
from ragfleet.runtime.errors import ModelLoadError
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.fakes import FakeEmbeddingModel
from ragfleet_embedder.server import build_server
from ragfleet_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.integration

SETTINGS = EmbedderSettings(port=0, max_rerank_passages=8, max_text_chars=2000, grace_period_s=0)


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sentence_transformers import CrossEncoder

    folder = tmp_path_factory.mktemp("cross-encoder")
    model = CrossEncoder(
        str(default_embedding_model_path()), num_labels=1, max_length=128, local_files_only=True
    )
    model.save(str(folder))
    return folder


async def _serve(reranker: Reranker | None) -> AsyncIterator[grpc.aio.Channel]:
    embedder = Embedder(
        SETTINGS,
        FakeEmbeddingModel,
        (lambda: reranker) if reranker is not None else None,
        reranker_name="tiny-ce",
    )
    service = build_server(SETTINGS, embedder)
    await service.start()
    await embedder.load()
    await service.mark_ready()
    async with insecure_channel(f"127.0.0.1:{service.port}") as chan:
        yield chan
    await service.stop(0)
    await embedder.close()


@pytest_asyncio.fixture(scope="module")
async def channel(cross_encoder_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    """An embedder serving the temp cross-encoder, loaded by path as the service does."""
    async for chan in _serve(CrossEncoderReranker.load(cross_encoder_dir, batch_size=2)):
        yield chan


@pytest_asyncio.fixture(scope="module")
async def bare_channel() -> AsyncIterator[grpc.aio.Channel]:
    """An embedder with no reranker configured."""
    async for chan in _serve(None):
        yield chan


async def rerank(
    channel: grpc.aio.Channel, query: str, passages: list[str]
) -> embedder_pb2.RerankResponse:
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    return await stub.Rerank(embedder_pb2.RerankRequest(query=query, passages=passages), timeout=30)


PASSAGES = [
    "Aspirin lowers the risk of heart attack in some adults.",
    "The Eiffel Tower is in Paris.",
    "Vitamin D deficiency is common in northern latitudes.",
    "Aspirin lowers the risk of heart attack in some adults.",
    "Cats sleep for most of the day.",
]


async def test_scores_one_per_passage_in_order_across_batches(channel: grpc.aio.Channel) -> None:
    reply = await rerank(channel, "Does aspirin prevent heart attacks?", PASSAGES)
    assert reply.model == "tiny-ce"
    assert len(reply.scores) == len(PASSAGES)
    # Batches of two: the duplicate passages fall in different batches yet score alike.
    assert reply.scores[0] == pytest.approx(reply.scores[3], abs=1e-5)
    reversed_reply = await rerank(channel, "Does aspirin prevent heart attacks?", PASSAGES[::-1])
    assert list(reversed_reply.scores) == pytest.approx(list(reply.scores)[::-1], abs=1e-5)


async def test_model_info_names_the_reranker(channel: grpc.aio.Channel) -> None:
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    info = await stub.GetModelInfo(embedder_pb2.GetModelInfoRequest(), timeout=10)
    assert info.reranker == "tiny-ce"


@pytest.mark.parametrize(
    ("query", "passages", "detail"),
    [
        ("", ["a"], "query: must not be empty"),
        ("q", [], "passages: must hold at least one passage"),
        ("q", ["a"] * 9, "passages: holds 9 passages; the limit is 8 (max_rerank_passages)"),
        ("q", ["a", "x" * 2001], "passages[1]: has 2001 characters; the limit is 2000"),
    ],
)
async def test_bad_input_is_invalid_argument(
    channel: grpc.aio.Channel, query: str, passages: list[str], detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rerank(channel, query, passages)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (caught.value.details() or "")


async def test_without_a_reranker_it_is_failed_precondition(
    bare_channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rerank(bare_channel, "q", ["a"])
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "ragfleet train reranker" in (caught.value.details() or "")


def test_the_spec_loader_reads_the_same_folder(cross_encoder_dir: Path) -> None:
    reranker = load_reranker(f"cross-encoder:{cross_encoder_dir}")
    scores = reranker.score("aspirin", ["aspirin and the heart", "cats"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)


def test_a_folder_without_a_model_says_how_to_train_one(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="ragfleet train reranker"):
        CrossEncoderReranker.load(tmp_path)
