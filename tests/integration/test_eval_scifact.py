"""SciFact test split through `ragfleet_tools.eval`: the fleet's retrieval meets its quality
targets.

Slow (embeds 5,183 abstracts on first run; later runs reuse var/eval-cache) and needs the
third-party dataset, so it is not part of `make test`:

    .venv/bin/pytest -m slow tests/integration/test_eval_scifact.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet_tools.eval.beir import DATASETS_ENV, BeirDataset, datasets_dir
from ragfleet_tools.eval.config import load_configs
from ragfleet_tools.eval.retrieval import EmbedderEncoder, RetrievalEvaluator

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCIFACT = datasets_dir() / "scifact"
# Tuned on the train split by benchmarks/tune_retrieval.py.
TUNED = ROOT / "benchmarks" / "configs" / "scifact.toml"
TARGETS = {"bm25": 0.66, "dense": 0.64, "hybrid-weighted": 0.72, "hybrid-rrf": 0.70}


@pytest.mark.skipif(
    not (SCIFACT / "corpus.jsonl").is_file(),
    reason=f"SciFact not found at {SCIFACT} (set {DATASETS_ENV} to the datasets folder)",
)
def test_scifact_test_split_meets_the_targets() -> None:
    dataset = BeirDataset.load(SCIFACT, "test")
    configs = [c for c in load_configs(TUNED) if c.name in TARGETS]
    encoder = EmbedderEncoder.from_env()
    evaluator = RetrievalEvaluator(
        dataset, encoder, ROOT / "var" / "eval-cache", tokenizer=encoder.tokenizer
    )
    try:
        results = {r.config.name: r.metrics for r in evaluator.evaluate(configs).results}
    finally:
        evaluator.close()
    assert set(results) == set(TARGETS)
    for name, target in TARGETS.items():
        assert results[name].queries == 300
        assert results[name].ndcg_at_10 >= target, (name, results[name])
