"""Retrieval evaluation on a tiny hand-made BEIR folder: metrics wiring with exact expected
values, dataset loading, caching, chunked documents, the reranker hook and the report.

The embedding model is a deterministic fake (hashed bag of words); the index is the retriever's
real ``EmbeddedBackend`` in ``tmp_path``."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from ragfleet.chunking import ChunkingConfig, ChunkingStrategy
from ragfleet.domain import SearchMode
from ragfleet.fusion import FusionMethod
from ragfleet.runtime.errors import InvalidInput
from ragfleet_tools.eval.beir import BeirDataset
from ragfleet_tools.eval.config import WHOLE_DOCUMENTS, RetrievalConfig
from ragfleet_tools.eval.metrics import evaluate_run
from ragfleet_tools.eval.report import markdown_table, write_report
from ragfleet_tools.eval.retrieval import RetrievalEvaluator, model_cache_key

pytestmark = pytest.mark.unit

CORPUS = [
    {"_id": "d1", "title": "Fruit", "text": "apple banana cherry date elderberry fig grape"},
    {"_id": "d2", "title": "", "text": "apple"},
    {"_id": "d3", "title": "", "text": "cherry"},
    {"_id": "d4", "title": "", "text": "kiwi mango"},
]
QUERIES = [
    {"_id": "q1", "text": "apple"},
    {"_id": "q2", "text": "zebra"},
    {"_id": "q3", "text": "unjudged"},
]
# q1: BM25 ranks d2 (short) above d1; d3 is relevant but never retrieved.
# q2: nothing matches "zebra" lexically.
QRELS = "query-id\tcorpus-id\tscore\nq1\td2\t1\nq1\td3\t1\nq2\td1\t1\n"
# nDCG@10 of q1 = (1/log2(2)) / (1/log2(2) + 1/log2(3)); q2 scores 0.
Q1_NDCG = 1 / (1 + 1 / math.log2(3))


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in CORPUS) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in QUERIES) + "\n")
    (root / "qrels" / "test.tsv").write_text(QRELS)
    return root


class HashedBagOfWords:
    """A deterministic stand-in for the embedding model: hashed word counts, unit length."""

    name = "fake/hashed-words"
    cache_key = "fake/hashed-words"
    dimension = 32

    def __init__(self) -> None:
        self.passages: list[str] = []

    def _encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        matrix = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                matrix[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 32] += 1.0
            matrix[row] /= max(float(np.linalg.norm(matrix[row])), 1e-9)
        return matrix

    def encode_queries(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._encode(texts)

    def encode_passages(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.passages.extend(texts)
        return self._encode(texts)


@pytest.fixture
def dataset(tmp_path: Path) -> BeirDataset:
    return BeirDataset.load(write_beir(tmp_path / "tiny"))


def test_metrics_on_a_hand_made_run() -> None:
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 2}}
    metrics = evaluate_run(qrels, {"q1": ["d3", "d1", "d2"], "q2": []})
    # q1: DCG = 1/log2(3) + 1/log2(4), ideal = 1 + 1/log2(3); q2 returned nothing: 0.
    expected_q1 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert metrics.ndcg_at_10 == pytest.approx(expected_q1 / 2)
    assert metrics.recall_at_100 == pytest.approx(0.5)
    assert metrics.mrr_at_10 == pytest.approx(0.25)
    assert metrics.queries == 2


def test_the_list_order_is_the_ranking_and_cutoffs_apply() -> None:
    qrels = {"q": {"rel": 1}}
    deep = [f"x{i}" for i in range(10)] + ["rel"]
    metrics = evaluate_run(qrels, {"q": deep})
    assert (metrics.ndcg_at_10, metrics.mrr_at_10, metrics.recall_at_100) == (0.0, 0.0, 1.0)


def test_loading_keeps_only_judged_queries(dataset: BeirDataset) -> None:
    assert dataset.name == "tiny" and dataset.split == "test"
    assert set(dataset.queries) == {"q1", "q2"}
    assert dataset.corpus["d1"].title == "Fruit" and dataset.corpus["d1"].source == "d1"
    assert dataset.qrels["q1"] == {"d2": 1, "d3": 1}


def test_loading_names_what_is_missing(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny")
    with pytest.raises(InvalidInput, match=r"qrels/dev.tsv does not exist \(splits here: test\)"):
        BeirDataset.load(root, "dev")
    (root / "queries.jsonl").write_text("not json\n")
    with pytest.raises(InvalidInput, match=r"queries\.jsonl line 1 is not JSON"):
        BeirDataset.load(root)


def test_lexical_dense_and_hybrid_are_scored_exactly(dataset: BeirDataset, tmp_path: Path) -> None:
    encoder = HashedBagOfWords()
    evaluator = RetrievalEvaluator(dataset, encoder, tmp_path / "cache")
    configs = [
        RetrievalConfig("bm25", mode=SearchMode.LEXICAL),
        RetrievalConfig("dense", mode=SearchMode.DENSE),
        RetrievalConfig("rrf", fusion=FusionMethod.RRF),
    ]
    evaluation = evaluator.evaluate(configs)
    evaluator.close()
    bm25, dense, rrf = (r.metrics for r in evaluation.results)
    assert bm25.queries == 2
    assert bm25.ndcg_at_10 == pytest.approx(Q1_NDCG / 2)
    assert bm25.recall_at_100 == pytest.approx(0.25)
    assert bm25.mrr_at_10 == pytest.approx(0.5)
    # Dense search returns every document, so q1 finds d3 too and q2 finds d1 somewhere.
    assert dense.recall_at_100 == pytest.approx(1.0)
    assert rrf.recall_at_100 == pytest.approx(1.0)
    # Titles are embedded with the text (the passage), as the gateway does.
    assert "Fruit\napple banana cherry date elderberry fig grape" in encoder.passages
    assert evaluation.as_json()["results"][0]["metrics"]["ndcg_at_10"] == pytest.approx(Q1_NDCG / 2)


def test_indexes_are_cached_per_chunking(dataset: BeirDataset, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = RetrievalConfig("bm25", mode=SearchMode.LEXICAL, chunking=WHOLE_DOCUMENTS)
    RetrievalEvaluator(dataset, HashedBagOfWords(), cache).evaluate([config])
    encoder = HashedBagOfWords()
    evaluator = RetrievalEvaluator(dataset, encoder, cache)
    evaluator.evaluate([config])
    assert encoder.passages == []  # reopened, not rebuilt
    chunked = RetrievalConfig(
        "chunked",
        mode=SearchMode.LEXICAL,
        chunking=ChunkingConfig(ChunkingStrategy.CHARACTERS, 12, 0),
    )
    result = evaluator.evaluate([chunked]).results[0]
    evaluator.close()
    assert len(encoder.passages) > len(CORPUS)  # d1 was cut into several chunks
    # A chunked document scores as its best chunk: d2 still first, d1 second.
    assert result.metrics.ndcg_at_10 == pytest.approx(Q1_NDCG / 2)
    folders = sorted(p.name for p in (cache / f"tiny-{dataset.fingerprint}").glob("*/*"))
    assert folders == ["characters-12-0", "none"]


class ReversingReranker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.calls.append((query, list(passages)))
        return [float(i) for i in range(len(passages))]


def test_the_reranker_hook_reorders_the_top_documents(dataset: BeirDataset, tmp_path: Path) -> None:
    reranker = ReversingReranker()
    specs: list[str] = []

    def load(spec: str) -> ReversingReranker:
        specs.append(spec)
        return reranker

    evaluator = RetrievalEvaluator(
        dataset, HashedBagOfWords(), tmp_path / "cache", reranker_loader=load
    )
    plain, reranked = evaluator.evaluate(
        [
            RetrievalConfig("bm25", mode=SearchMode.LEXICAL),
            RetrievalConfig("bm25+rev", mode=SearchMode.LEXICAL, reranker="rev:", rerank_k=2),
        ]
    ).results
    evaluator.close()
    assert specs == ["rev:"]
    assert reranker.calls[0] == (
        "apple",
        ["apple", "Fruit\napple banana cherry date elderberry fig grape"],
    )
    # d1 now ranks above d2: q1's reciprocal rank halves.
    assert plain.metrics.mrr_at_10 == pytest.approx(0.5)
    assert reranked.metrics.mrr_at_10 == pytest.approx(0.25)


def test_report_has_a_table_and_a_chart(dataset: BeirDataset, tmp_path: Path) -> None:
    evaluator = RetrievalEvaluator(dataset, HashedBagOfWords(), tmp_path / "cache")
    evaluation = evaluator.evaluate(
        [RetrievalConfig("bm25", mode=SearchMode.LEXICAL, chunking=WHOLE_DOCUMENTS)]
    )
    evaluator.close()
    table = markdown_table(evaluation)
    assert table.splitlines()[2] == "| bm25 | lexical depth 100 | none | 0.307 | 0.250 | 0.500 |"
    chart = write_report(evaluation, tmp_path / "out" / "tiny.md", "ragfleet eval retrieval")
    assert chart.read_bytes().startswith(b"\x89PNG")
    text = (tmp_path / "out" / "tiny.md").read_text()
    assert "ragfleet eval retrieval" in text and "![chart](tiny.png)" in text


def test_a_model_folder_gets_its_own_cache_key_that_changes_when_retrained(
    tmp_path: Path,
) -> None:
    from ragfleet_embedder.settings import EmbedderSettings

    packaged = EmbedderSettings(model_name="base")
    assert model_cache_key(packaged) == "base"
    (tmp_path / "model.safetensors").write_bytes(b"first weights")
    tuned = EmbedderSettings(model_name="base", model_path=tmp_path)
    key = model_cache_key(tuned)
    assert key.startswith("base-") and key != "base"
    assert model_cache_key(tuned) == key
    (tmp_path / "model.safetensors").write_bytes(b"retrained weights, longer")
    assert model_cache_key(tuned) != key


def test_settings_that_change_passage_vectors_change_the_cache_key() -> None:
    from ragfleet_embedder.settings import EmbedderSettings

    keys = {
        model_cache_key(EmbedderSettings(model_name="base")),
        model_cache_key(EmbedderSettings(model_name="base", long_text_windows=True)),
        model_cache_key(EmbedderSettings(model_name="base", passage_prefix="passage: ")),
        model_cache_key(EmbedderSettings(model_name="base", passage_prefix="doc: ")),
    }
    assert len(keys) == 4
    assert model_cache_key(EmbedderSettings(model_name="base", query_prefix="query: ")) == "base"
