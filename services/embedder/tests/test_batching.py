"""DynamicBatcher: concurrent callers share model calls and each gets exactly its own rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY

from ragfleet.runtime.errors import Unavailable
from ragfleet_embedder.batching import DynamicBatcher
from ragfleet_embedder.fakes import FakeEmbeddingModel

pytestmark = pytest.mark.unit


def expected(model: FakeEmbeddingModel, texts: list[str]) -> np.ndarray:
    return np.stack([model.vector(text) for text in texts])


async def started(
    model: FakeEmbeddingModel, max_batch_size: int, max_wait_s: float
) -> DynamicBatcher:
    batcher = DynamicBatcher(model.encode, max_batch_size=max_batch_size, max_wait_s=max_wait_s)
    batcher.start()
    return batcher


async def test_concurrent_callers_share_model_calls_and_get_their_own_rows() -> None:
    model = FakeEmbeddingModel(delay_s=0.02)
    batcher = await started(model, max_batch_size=64, max_wait_s=0.02)
    requests = [[f"caller {i} text {j}" for j in range(1 + i % 3)] for i in range(12)]
    try:
        results = await asyncio.gather(*(batcher.submit(texts) for texts in requests))
    finally:
        await batcher.close()
    assert len(model.calls) < len(requests)
    assert sum(len(call) for call in model.calls) == sum(len(texts) for texts in requests)
    for texts, vectors in zip(requests, results, strict=True):
        np.testing.assert_array_equal(vectors, expected(model, texts))


async def test_batches_respect_the_size_limit_without_splitting_requests() -> None:
    model = FakeEmbeddingModel(delay_s=0.01)
    batcher = await started(model, max_batch_size=8, max_wait_s=0.05)
    requests = [[f"r{i} a", f"r{i} b", f"r{i} c"] for i in range(10)]
    try:
        results = await asyncio.gather(*(batcher.submit(texts) for texts in requests))
    finally:
        await batcher.close()
    assert all(len(call) <= 8 for call in model.calls)
    # Whole requests only: every call holds a multiple of one request's three texts.
    assert all(len(call) % 3 == 0 for call in model.calls)
    assert len(model.calls) >= 4
    for texts, vectors in zip(requests, results, strict=True):
        np.testing.assert_array_equal(vectors, expected(model, texts))


async def test_a_request_larger_than_the_batch_size_is_encoded_whole() -> None:
    model = FakeEmbeddingModel()
    batcher = await started(model, max_batch_size=4, max_wait_s=0.0)
    texts = [f"text {i}" for i in range(10)]
    try:
        vectors = await batcher.submit(texts)
    finally:
        await batcher.close()
    assert model.calls == [texts]
    np.testing.assert_array_equal(vectors, expected(model, texts))


async def test_the_model_is_never_called_concurrently() -> None:
    model = FakeEmbeddingModel(delay_s=0.005)
    batcher = await started(model, max_batch_size=2, max_wait_s=0.0)
    try:
        await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(20)))
    finally:
        await batcher.close()
    assert model.max_concurrent_calls == 1
    assert len(model.calls) >= 10


async def test_a_lone_request_waits_for_company_at_most_the_max_wait() -> None:
    model = FakeEmbeddingModel()
    batcher = await started(model, max_batch_size=64, max_wait_s=0.2)
    try:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.02)
        second = await batcher.submit(["second"])
        await first
    finally:
        await batcher.close()
    assert model.calls == [["first", "second"]]
    np.testing.assert_array_equal(second, expected(model, ["second"]))


async def test_model_errors_reach_every_caller_of_the_batch_and_the_batcher_recovers() -> None:
    model = FakeEmbeddingModel(delay_s=0.01, error=RuntimeError("model exploded"))
    batcher = await started(model, max_batch_size=64, max_wait_s=0.02)
    try:
        outcomes = await asyncio.gather(
            *(batcher.submit([f"t{i}"]) for i in range(5)), return_exceptions=True
        )
        assert len(model.calls) == 1
        assert all(isinstance(o, RuntimeError) and "model exploded" in str(o) for o in outcomes)
        model.error = None
        vectors = await batcher.submit(["after the failure"])
    finally:
        await batcher.close()
    np.testing.assert_array_equal(vectors, expected(model, ["after the failure"]))


async def test_a_wrong_number_of_rows_is_an_error_not_a_misaligned_answer() -> None:
    batcher = DynamicBatcher(lambda texts: np.zeros((len(texts) - 1, 4), dtype=np.float32), 8, 0.0)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="returned 1 embeddings for 2 texts"):
            await batcher.submit(["a", "b"])
    finally:
        await batcher.close()


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    model = FakeEmbeddingModel(delay_s=0.01)
    batcher = await started(model, max_batch_size=64, max_wait_s=0.05)
    try:
        doomed = asyncio.ensure_future(batcher.submit(["doomed"]))
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        await asyncio.sleep(0)
        doomed.cancel()
        vectors = await kept
    finally:
        await batcher.close()
    assert model.calls == [["kept"]]
    np.testing.assert_array_equal(vectors, expected(model, ["kept"]))


async def test_close_fails_waiting_callers_and_refuses_new_ones() -> None:
    model = FakeEmbeddingModel(delay_s=0.05)
    batcher = await started(model, max_batch_size=64, max_wait_s=1.0)
    waiting = asyncio.ensure_future(batcher.submit(["never encoded"]))
    await asyncio.sleep(0.01)
    await batcher.close()
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable):
        await batcher.submit(["too late"])


async def test_submit_before_start_is_unavailable() -> None:
    batcher = DynamicBatcher(FakeEmbeddingModel().encode, 8, 0.0)
    with pytest.raises(Unavailable):
        await batcher.submit(["x"])


@pytest.mark.parametrize(("size", "wait"), [(0, 0.0), (-1, 0.0), (8, -0.1)])
def test_constructor_rejects_bad_limits(size: int, wait: float) -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(FakeEmbeddingModel().encode, size, wait)


async def test_batch_sizes_queue_depth_and_dropped_callers_are_measured() -> None:
    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    names = (
        "ragfleet_embedder_batch_texts_count",
        "ragfleet_embedder_batch_texts_sum",
        "ragfleet_embedder_dropped_requests_total",
    )
    before = [sample(name) for name in names]
    model = FakeEmbeddingModel(delay_s=0.01)
    batcher = await started(model, max_batch_size=64, max_wait_s=0.05)
    try:
        doomed = asyncio.ensure_future(batcher.submit(["doomed"]))
        kept = asyncio.ensure_future(batcher.submit(["kept", "too"]))
        await asyncio.sleep(0)
        assert sample("ragfleet_embedder_queued_texts") == 3
        doomed.cancel()
        await kept
    finally:
        await batcher.close()
    assert [sample(name) - b for name, b in zip(names, before, strict=True)] == [1, 2, 1]
    assert sample("ragfleet_embedder_queued_texts") == 0
