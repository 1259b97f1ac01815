"""Evaluation configurations: parsing TOML and YAML, defaults, validation naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragfleet.chunking import ChunkingConfig, ChunkingStrategy
from ragfleet.fusion import FusionMethod
from ragfleet.runtime.errors import InvalidInput
from ragfleet_tools.eval.config import (
    DEFAULT_CONFIGS,
    FLEET_CHUNKING,
    RetrievalConfig,
    SearchMode,
    load_configs,
    parse_configs,
)

pytestmark = pytest.mark.unit

TOML = """
[[config]]
name = "bm25"
mode = "lexical"

[[config]]
name = "hybrid-tokens"
fusion = "rrf"
rrf_k = 20
candidate_k = 200
chunking = { strategy = "tokens", size = 128, overlap = 16 }
reranker = "overlap:"
rerank_k = 30
"""

YAML = """
config:
  - name: dense
    mode: dense
  - name: weighted
    dense_weight: 0.4
    chunking: none
"""


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "configs.toml"
    path.write_text(TOML)
    bm25, hybrid = load_configs(path)
    assert bm25 == RetrievalConfig("bm25", mode=SearchMode.LEXICAL)
    assert bm25.chunking == FLEET_CHUNKING and bm25.reranker == "none"
    assert hybrid.mode is SearchMode.HYBRID and hybrid.fusion is FusionMethod.RRF
    assert (hybrid.rrf_k, hybrid.candidate_k, hybrid.reranker, hybrid.rerank_k) == (
        20,
        200,
        "overlap:",
        30,
    )
    assert hybrid.chunking == ChunkingConfig(ChunkingStrategy.TOKENS, 128, 16)
    assert hybrid.description == "hybrid rrf k=20 depth 200 rerank overlap: top 30"


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "configs.yaml"
    path.write_text(YAML)
    dense, weighted = load_configs(path)
    assert dense.mode is SearchMode.DENSE and dense.description == "dense depth 100"
    assert weighted.fusion is FusionMethod.WEIGHTED and weighted.dense_weight == 0.4
    assert weighted.description == "hybrid weighted w=0.4 depth 100"


def test_no_file_means_the_built_in_set() -> None:
    configs = load_configs(None)
    assert configs == list(DEFAULT_CONFIGS)
    assert [c.name for c in configs] == ["bm25", "dense", "hybrid-rrf", "hybrid-weighted"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"mode": "lexical"}, r"config\[0\]\.name: required"),
        ({"name": "x", "mode": "sparse"}, r"config\[0\]\.mode: unknown value 'sparse'"),
        ({"name": "x", "fusion": "max"}, r"config\[0\]\.fusion: unknown value"),
        ({"name": "x", "rrf_k": 0}, r"config\[0\]\.rrf_k"),
        ({"name": "x", "dense_weight": 1.5}, r"config\[0\]\.dense_weight"),
        ({"name": "x", "candidate_k": 0}, r"config\[0\]\.candidate_k: must be an integer in"),
        ({"name": "x", "rerank_k": 5000}, r"config\[0\]\.rerank_k"),
        ({"name": "x", "reranker": ""}, r"config\[0\]\.reranker"),
        ({"name": "x", "depth": 10}, r"config\[0\]: unknown keys \['depth'\]"),
        ({"name": "x", "chunking": "tokens"}, r"config\[0\]\.chunking: must be"),
        (
            {"name": "x", "chunking": {"strategy": "tokens", "size": 64, "overlap": 64}},
            r"config\[0\]\.chunking\.overlap",
        ),
        ({"name": "x", "chunking": {"strategy": "lines"}}, r"config\[0\]\.chunking\.strategy"),
    ],
)
def test_bad_entries_name_the_field(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_configs({"config": [entry]})


@pytest.mark.parametrize("data", [{}, {"config": []}, {"config": "bm25"}, [], None])
def test_the_file_must_hold_a_list(data: Any) -> None:
    with pytest.raises(InvalidInput, match="non-empty list"):
        parse_configs(data)


def test_names_are_unique() -> None:
    with pytest.raises(InvalidInput, match="repeated: a"):
        parse_configs({"config": [{"name": "a"}, {"name": "a", "mode": "dense"}]})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.json", "{}", "must end in .toml"),
        ("c.toml", "[[config]\nname=", "cannot parse"),
        ("c.yml", "config: [", "cannot parse"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        load_configs(path)
    with pytest.raises(InvalidInput, match="does not exist"):
        load_configs(tmp_path / "missing.toml")


def test_datasets_dir_is_beside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragfleet_tools.eval.beir import DATASETS_ENV, datasets_dir

    monkeypatch.delenv(DATASETS_ENV, raising=False)
    root = Path(__file__).resolve().parents[2]
    assert datasets_dir() == (root.parent / "shared" / "datasets").resolve()
