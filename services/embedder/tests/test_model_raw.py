"""The service's embeddings are the raw sentence-transformers model's, on the real MiniLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
import pytest_asyncio
from sentence_transformers import SentenceTransformer

from ragfleet.domain import InputType, default_embedding_model_path
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.model import SentenceTransformerEmbedder, call_groups
from ragfleet_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.integration

BATCH_SIZE = 16
TEXTS = [
    f"{subject} {verb} {detail}"
    for subject in ("Penguins", "The gateway", "Vitamin D deficiency", "A retriever")
    for verb in ("dive for", "retries calls to", "is linked to", "fuses results of")
    for detail in ("krill.", "the embedder replicas behind one address, round robin.", "x")
] + ["word " * 300]  # past the model's 256 tokens: truncated by both


@pytest.fixture(scope="module")
def raw() -> SentenceTransformer:
    return SentenceTransformer(str(default_embedding_model_path()), local_files_only=True)


@pytest.fixture(scope="module")
def model() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder.load(
        path=None, name="all-MiniLM-L6-v2", batch_size=BATCH_SIZE
    )


def raw_encode(raw: SentenceTransformer, texts: list[str]) -> np.ndarray:
    return np.asarray(
        raw.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True), dtype=np.float32
    )


def test_one_text_is_bitwise_the_raw_models_encode(
    raw: SentenceTransformer, model: SentenceTransformerEmbedder
) -> None:
    for text in TEXTS[:3] + TEXTS[-1:]:
        vector = model.encode([text])
        assert vector.dtype == np.float32
        np.testing.assert_array_equal(vector, raw_encode(raw, [text]))


@pytest.mark.parametrize("count", [2, 7, BATCH_SIZE, BATCH_SIZE + 1, len(TEXTS)])
def test_each_model_call_is_bitwise_the_raw_models_encode_of_its_texts(
    raw: SentenceTransformer, model: SentenceTransformerEmbedder, count: int
) -> None:
    """Texts are sorted by length and cut into calls; each call's rows are exactly what the
    raw model gives for those texts, and every row is its text's vector alone to rounding."""
    texts = TEXTS[-count:]
    vectors = model.encode(texts)
    assert vectors.shape == (count, 384)
    lengths = [len(ids) for ids in raw.tokenizer(texts, truncation=True)["input_ids"]]
    for group in call_groups(lengths, BATCH_SIZE):
        np.testing.assert_array_equal(vectors[group], raw_encode(raw, [texts[i] for i in group]))
    alone = np.vstack([raw_encode(raw, [text]) for text in texts])
    np.testing.assert_allclose(vectors, alone, rtol=0, atol=1e-6)


class Recording:
    """``model``, noting how many texts each ``encode`` call got."""

    def __init__(self, model: SentenceTransformerEmbedder) -> None:
        self.model = model
        self.name, self.dimension = model.name, model.dimension
        self.max_sequence_length = model.max_sequence_length
        self.calls: list[int] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.model.encode(texts)


@pytest_asyncio.fixture
async def recording(
    model: SentenceTransformerEmbedder,
) -> AsyncIterator[tuple[Embedder, Recording]]:
    spy = Recording(model)
    core = Embedder(EmbedderSettings(batch_size=BATCH_SIZE), lambda: spy)
    await core.load()
    yield core, spy
    await core.close()


async def test_batched_queries_equal_the_raw_model_one_at_a_time(
    raw: SentenceTransformer, recording: tuple[Embedder, Recording]
) -> None:
    """Concurrent queries share model calls, padded to the longest text of the call; each
    vector still equals the raw model's for that text alone, to float32 rounding."""
    embedder, spy = recording
    queries = TEXTS[:12]
    replies = await asyncio.gather(*(embedder.embed([q], InputType.QUERY) for q in queries))
    assert max(spy.calls) > 1, spy.calls
    alone = np.vstack([raw_encode(raw, [q]) for q in queries])
    together = np.vstack([reply.vectors for reply in replies])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
