"""What only the embedded backend (SQLite + tantivy + usearch) does: repairs from the catalog,
filtered over-fetching, int8 storage. The behaviour every backend shares is in
tests/contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ragfleet.domain import Chunk, Filter
from ragfleet.runtime.errors import FailedPrecondition
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


def ids(hits: list[tuple[str, float]]) -> list[str]:
    return [hit[0] for hit in hits]


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


def test_exact_filtered_search_sees_every_write(tmp_path: Path) -> None:
    """The vectors a filter selects are kept between exact scans: a write must not leave a
    later search on the old ones."""
    backend = open_backend(tmp_path)
    backend.upsert(CHUNKS)
    acme = Filter(tenant="acme")
    query = CHUNKS[1].vector
    assert backend.search_dense(query, 5, acme)[0].id == "c1"
    assert backend.search_dense(query, 5, acme)[0].id == "c1"  # from the kept vectors

    backend.upsert([Chunk(id="c9", text="a twin", tenant="acme", vector=query)])
    assert {h.id for h in backend.search_dense(query, 2, acme)} == {"c1", "c9"}
    backend.delete(ids=["c1", "c9"])
    hits = backend.search_dense(query, 5, acme)
    assert [h.id for h in hits] == ["c0"]
    moved = Chunk(id="c0", text="moved", tenant="acme", vector=CHUNKS[3].vector)
    backend.upsert([moved])
    assert backend.search_dense(CHUNKS[3].vector, 1, acme)[0].score == pytest.approx(1.0)
    # Another filter's vectors are kept apart.
    assert {h.id for h in backend.search_dense(query, 5, Filter(tenant="globex"))} == {"c2", "c3"}
    backend.close()


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


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": "body"}, "body"),
        ({"text": "body", "title": "T", "section": "A > B"}, "T\nA > B\nbody"),
        # ragfleet.chunking starts a chunk's text with its section path: counted once.
        ({"text": "A > B\n\nbody", "title": "T", "section": "A > B"}, "T\nA > B\n\nbody"),
    ],
)
def test_bm25_reads_title_section_and_text_once_each(fields: dict[str, str], expected: str) -> None:
    assert Chunk(id="c", **fields).search_text == expected  # type: ignore[arg-type]


def test_filtered_search_matches_a_brute_force_scan_through_writes_and_reopening(
    tmp_path: Path,
) -> None:
    """Random upserts, replacements, moves between tenants and deletes, with a reopen halfway:
    every tenant's exact filtered search equals a scan of what it holds now (the vectors kept
    per filter and the float copy of the index stay in step with usearch)."""
    rng = np.random.default_rng(11)
    tenants = ("acme", "globex", "initech")
    held: dict[str, tuple[str, np.ndarray]] = {}
    backend = open_backend(tmp_path)

    def check() -> None:
        query = rng.standard_normal(DIM).astype(np.float32)
        for tenant in tenants:
            mine = {i: v for i, (t, v) in held.items() if t == tenant}
            cosine = {
                i: float(v @ query / (np.linalg.norm(v) * np.linalg.norm(query)))
                for i, v in mine.items()
            }
            expected = sorted(cosine, key=lambda i: -cosine[i])[:5]
            hits = backend.search_dense(tuple(query.tolist()), 5, Filter(tenant=tenant))
            assert [h.id for h in hits] == expected
            assert [h.score for h in hits] == pytest.approx([cosine[i] for i in expected], 1e-5)

    for step in range(12):
        if step == 6:
            backend.close()
            backend = open_backend(tmp_path)
        batch = []
        for _ in range(15):
            chunk_id = f"k{rng.integers(0, 40)}"
            tenant = tenants[int(rng.integers(0, len(tenants)))]
            vec = rng.standard_normal(DIM).astype(np.float32)
            held[chunk_id] = (tenant, vec)
            batch.append(Chunk(id=chunk_id, text=chunk_id, tenant=tenant, vector=tuple(vec)))
        backend.upsert(list({c.id: c for c in batch}.values()))
        gone = [f"k{i}" for i in rng.integers(0, 40, 4)]
        backend.delete(ids=gone)
        for chunk_id in gone:
            held.pop(chunk_id, None)
        check()
        check()  # again, from the vectors kept for each filter
    backend.close()


def test_a_write_to_one_tenant_keeps_the_other_tenants_gathered_vectors(tmp_path: Path) -> None:
    backend = open_backend(tmp_path)
    backend.upsert(CHUNKS)
    query = CHUNKS[1].vector
    backend.search_dense(query, 5, Filter(tenant="acme"))
    backend.search_dense(query, 5, Filter(tenant="globex"))
    kept = backend._dense._slices  # the gathered vectors per filter
    assert len(kept) == 2
    backend.upsert([Chunk(id="g9", text="new", tenant="globex", vector=vector(9))])
    assert [wanted[0][1] for wanted in kept] == ["acme"]
    assert {h.id for h in backend.search_dense(query, 5, Filter(tenant="globex"))} == {
        "c2",
        "c3",
        "g9",
    }
    backend.close()
