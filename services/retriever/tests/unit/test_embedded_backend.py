"""The embedded backend (SQLite + tantivy + usearch) on a temporary directory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragfleet.runtime.errors import FailedPrecondition, InvalidInput
from ragfleet_retriever.domain import Chunk, Filter
from ragfleet_retriever.embedded import EmbeddedBackend

pytestmark = pytest.mark.unit

DIM = 16


def vector(seed: int) -> tuple[float, ...]:
    return tuple(np.random.default_rng(seed).standard_normal(DIM).astype(np.float32).tolist())


def chunk(n: int, text: str, **fields: object) -> Chunk:
    return Chunk(id=f"c{n}", text=text, vector=vector(n), **fields)  # type: ignore[arg-type]


CHUNKS = [
    chunk(
        0,
        "graceful shutdown drains in-flight calls",
        source="ops.md",
        tenant="acme",
        metadata={"lang": "en"},
    ),
    chunk(
        1,
        "the embedder batches requests dynamically",
        source="embed.md",
        tenant="acme",
        metadata={"lang": "en"},
    ),
    chunk(
        2,
        "shutdown des services avec drainage",
        source="ops.md",
        tenant="globex",
        metadata={"lang": "fr"},
    ),
    chunk(
        3,
        "retriever fuses bm25 and dense shutdown scores",
        source="retr.md",
        tenant="globex",
        metadata={"lang": "en"},
    ),
    Chunk(id="t4", text="text only chunk about shutdown", source="notes.md", tenant="acme"),
]


def open_backend(path: Path, **options: object) -> EmbeddedBackend:
    return EmbeddedBackend.open(path, dimension=DIM, **options)  # type: ignore[arg-type]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[EmbeddedBackend]:
    opened = open_backend(tmp_path)
    opened.upsert(CHUNKS)
    yield opened
    opened.close()


def ids(hits: list[tuple[str, float]]) -> list[str]:
    return [hit[0] for hit in hits]


def test_upsert_is_idempotent_by_id(backend: EmbeddedBackend) -> None:
    assert backend.upsert(CHUNKS) == len(CHUNKS)
    assert backend.stats().chunks == len(CHUNKS)
    assert backend.stats().sources == 4
    assert ids(backend.search_lexical("drains", 10)) == ["c0"]


def test_re_upsert_replaces_text_vector_and_metadata(backend: EmbeddedBackend) -> None:
    backend.upsert(
        [
            Chunk(
                id="c0",
                text="replaced words entirely",
                vector=vector(99),
                tenant="acme",
                metadata={"lang": "de"},
            )
        ]
    )
    assert backend.search_lexical("drains", 10) == []
    assert ids(backend.search_lexical("replaced", 10)) == ["c0"]
    assert backend.search_dense(vector(99), 1)[0].id == "c0"
    assert backend.search_dense(vector(99), 1)[0].score == pytest.approx(1.0, abs=1e-5)
    assert backend.search_dense(vector(0), 1)[0].score < 0.9
    assert ids(backend.search_dense(vector(99), 10, Filter(equals={"lang": "de"}))) == ["c0"]
    assert backend.fetch(["c0"])["c0"].metadata == {"lang": "de"}
    assert backend.stats().chunks == len(CHUNKS)


def test_duplicate_ids_in_one_upsert_keep_the_last(backend: EmbeddedBackend) -> None:
    assert backend.upsert([chunk(7, "first version"), chunk(7, "second version")]) == 1
    assert backend.fetch(["c7"])["c7"].text == "second version"


def test_fetch_returns_chunks_without_vectors_and_skips_unknown(backend: EmbeddedBackend) -> None:
    found = backend.fetch(["c1", "nope"])
    assert list(found) == ["c1"]
    assert found["c1"].source == "embed.md"
    assert found["c1"].vector == ()


@pytest.mark.parametrize(
    ("delete", "left"),
    [
        ({"ids": ["c0", "missing"]}, {"c1", "c2", "c3", "t4"}),
        ({"filter": Filter(source="ops.md")}, {"c1", "c3", "t4"}),
        ({"filter": Filter(tenant="globex")}, {"c0", "c1", "t4"}),
        ({"filter": Filter(equals={"lang": "en"})}, {"c2", "t4"}),
        ({"ids": ["c0", "c2"], "filter": Filter(tenant="acme")}, {"c1", "c2", "c3", "t4"}),
    ],
)
def test_delete(backend: EmbeddedBackend, delete: dict[str, object], left: set[str]) -> None:
    deleted = backend.delete(**delete)  # type: ignore[arg-type]
    assert deleted == len(CHUNKS) - len(left)
    assert set(backend.fetch([c.id for c in CHUNKS])) == left
    assert set(ids(backend.search_lexical("shutdown drains batches", 10))) <= left
    assert set(ids(backend.search_dense(vector(0), 10))) == left - {"t4"}


def test_delete_refuses_to_delete_everything(backend: EmbeddedBackend) -> None:
    with pytest.raises(InvalidInput):
        backend.delete(filter=Filter())


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        (Filter(tenant="acme"), {"c0", "t4"}),
        (Filter(tenant="globex"), {"c2", "c3"}),
        (Filter(source="ops.md"), {"c0", "c2"}),
        (Filter(tenant="globex", equals={"lang": "en"}), {"c3"}),
        (Filter(equals={"lang": "xx"}), set()),
    ],
)
def test_filters_apply_inside_both_searches(
    backend: EmbeddedBackend, filter: Filter, expected: set[str]
) -> None:
    lexical = backend.search_lexical("shutdown", 1, filter)
    # Applied inside the query: k=1 still finds a match when the best unfiltered one is excluded.
    assert len(lexical) == min(1, len(expected))
    assert set(ids(backend.search_lexical("shutdown", 10, filter))) == expected
    dense_expected = {
        c.id for c in CHUNKS if c.vector and filter.matches(c.tenant, c.source, c.metadata)
    }
    for seed in range(4):
        hits = backend.search_dense(vector(seed), 10, filter)
        assert set(ids(hits)) == dense_expected
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_filtered_dense_search_over_fetches_when_the_filter_is_broad(tmp_path: Path) -> None:
    backend = open_backend(tmp_path, exact_search_max_candidates=0)
    rng = np.random.default_rng(7)
    many = [
        Chunk(
            id=f"m{i}",
            text=f"chunk {i}",
            tenant="odd" if i % 2 else "even",
            vector=tuple(rng.standard_normal(DIM).tolist()),
        )
        for i in range(300)
    ]
    backend.upsert(many)
    query = many[3].vector
    hits = backend.search_dense(query, 5, Filter(tenant="odd"))
    assert hits[0].id == "m3"
    assert len(hits) == 5
    assert all(int(h.id[1:]) % 2 for h in hits)
    backend.close()


def test_lexical_query_syntax_is_treated_as_text(backend: EmbeddedBackend) -> None:
    assert ids(backend.search_lexical('drains: AND (in-flight "calls', 10))[0] == "c0"
    assert backend.search_lexical("?!", 10) == []


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    backend = open_backend(tmp_path)
    backend.upsert(CHUNKS)
    backend.delete(ids=["c1"])
    backend.close()
    reopened = open_backend(tmp_path)
    assert reopened.stats().chunks == len(CHUNKS) - 1
    assert ids(reopened.search_lexical("drains", 10)) == ["c0"]
    assert reopened.search_dense(vector(2), 1)[0].id == "c2"
    assert "c1" not in ids(reopened.search_dense(vector(1), 10))
    reopened.close()


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_vector_index_is_rebuilt_from_the_catalog(tmp_path: Path, damage: str) -> None:
    backend = open_backend(tmp_path)
    backend.upsert(CHUNKS)
    backend.close()
    index_file = tmp_path / "vectors.usearch"
    if damage == "delete":
        index_file.unlink()
    else:
        index_file.write_bytes(b"not an index")
    reopened = open_backend(tmp_path)
    assert reopened.search_dense(vector(3), 1)[0].id == "c3"
    assert index_file.stat().st_size > 100
    reopened.close()


def test_stale_lexical_index_is_rebuilt(tmp_path: Path) -> None:
    backend = open_backend(tmp_path)
    backend.upsert(CHUNKS)
    backend.close()
    # Simulates a crash after the catalog commit and before the tantivy commit.
    shutil.rmtree(tmp_path / "lexical")
    reopened = open_backend(tmp_path)
    assert ids(reopened.search_lexical("drains", 10)) == ["c0"]
    reopened.close()


def test_int8_vectors(tmp_path: Path) -> None:
    backend = open_backend(tmp_path, vector_dtype="i8")
    backend.upsert(CHUNKS)
    assert backend.search_dense(vector(1), 1)[0].id == "c1"
    assert ids(backend.search_dense(vector(1), 10, Filter(tenant="acme")))[0] == "c1"
    backend.close()


def test_dimension_is_fixed_at_creation(tmp_path: Path) -> None:
    open_backend(tmp_path).close()
    with pytest.raises(FailedPrecondition, match="RAGFLEET_RETRIEVER_DIMENSION=16"):
        EmbeddedBackend.open(tmp_path, dimension=32)
