"""What every ``IndexBackend`` promises, run against each backend.

The embedded backend always runs (on a temporary directory). The OpenSearch backend runs when
``OPENSEARCH_URL`` names a cluster (``OPENSEARCH_USERNAME`` / ``OPENSEARCH_PASSWORD`` and
``OPENSEARCH_VERIFY_CERTS=false`` when it needs them); each test gets a fresh index, deleted
afterwards. Marks are per backend: the embedded runs are ``unit``, the OpenSearch runs
``integration``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ragfleet.domain import Chunk, Filter
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput
from ragfleet_retriever.backend import IndexBackend
from ragfleet_retriever.domain import ScoredId
from ragfleet_retriever.embedded import EmbeddedBackend
from ragfleet_retriever.opensearch.client import make_client
from ragfleet_retriever.server import open_opensearch
from ragfleet_retriever.settings import RetrieverSettings

DIM = 16
OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL", "")


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
        title="Operations",
        section="Shutdown",
        metadata={"lang": "en", "kind": "runbook"},
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
WITH_VECTORS = {c.id for c in CHUNKS if c.vector}
CHUNKS_IDS = [c.id for c in CHUNKS]


@dataclass
class Harness:
    """Opens a backend on one store (a directory, an index) and can reopen it."""

    open: Callable[[int], IndexBackend]
    opened: list[IndexBackend] = field(default_factory=list)

    def __call__(self, dimension: int = DIM) -> IndexBackend:
        backend = self.open(dimension)
        self.opened.append(backend)
        return backend

    def close_all(self) -> None:
        for backend in self.opened:
            backend.close()


def embedded_harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(lambda dimension: EmbeddedBackend.open(tmp_path, dimension=dimension))
    yield harness
    harness.close_all()


def opensearch_harness(tmp_path: Path) -> Iterator[Harness]:
    index = f"ragfleet-contract-{uuid.uuid4().hex[:12]}"

    def settings(dimension: int) -> RetrieverSettings:
        return RetrieverSettings(
            backend="opensearch",
            opensearch_url=OPENSEARCH_URL,
            opensearch_username=os.environ.get("OPENSEARCH_USERNAME", ""),
            opensearch_password=os.environ.get("OPENSEARCH_PASSWORD", ""),
            opensearch_verify_certs=os.environ.get("OPENSEARCH_VERIFY_CERTS", "true") != "false",
            opensearch_index=index,
            opensearch_replicas=0,
            dimension=dimension,
        )

    harness = Harness(lambda dimension: open_opensearch(settings(dimension)))
    yield harness
    harness.close_all()
    admin = make_client(settings(DIM))
    admin.indices.delete(index=index, params={"ignore_unavailable": "true"})
    admin.close()


HARNESSES = {"embedded": embedded_harness, "opensearch": opensearch_harness}


# Without a cluster the OpenSearch runs are left out (one skip below says so) rather than
# skipped one by one.
BACKENDS = [pytest.param("embedded", marks=pytest.mark.unit)] + (
    [pytest.param("opensearch", marks=pytest.mark.integration)] if OPENSEARCH_URL else []
)


@pytest.mark.unit
def test_the_opensearch_contract_needs_a_cluster() -> None:
    if not OPENSEARCH_URL:
        pytest.skip(
            "OPENSEARCH_URL is not set: the contract ran against the embedded backend only "
            "(set e.g. OPENSEARCH_URL=http://localhost:9200 to run it against OpenSearch)"
        )


@pytest.fixture(params=BACKENDS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield from HARNESSES[request.param](tmp_path)


@pytest.fixture
def backend(harness: Harness) -> IndexBackend:
    opened = harness()
    assert opened.upsert(CHUNKS) == len(CHUNKS)
    return opened


def ids(hits: list[ScoredId]) -> list[str]:
    return [hit.id for hit in hits]


def test_upsert_is_idempotent_by_id(backend: IndexBackend) -> None:
    assert backend.upsert(CHUNKS) == len(CHUNKS)
    stats = backend.stats()
    assert (stats.chunks, stats.sources, stats.dimension) == (len(CHUNKS), 4, DIM)
    assert stats.backend == backend.name
    assert ids(backend.search_lexical("drains", 10)) == ["c0"]
    assert len(backend.search_dense(vector(0), 10)) == len(WITH_VECTORS)


def test_re_upsert_replaces_text_vector_and_metadata(backend: IndexBackend) -> None:
    replacement = Chunk(
        id="c0",
        text="replaced words entirely",
        vector=vector(99),
        tenant="acme",
        metadata={"lang": "de"},
    )
    backend.upsert([replacement])
    assert backend.search_lexical("drains", 10) == []
    assert ids(backend.search_lexical("replaced", 10)) == ["c0"]
    best = backend.search_dense(vector(99), 1)[0]
    assert best.id == "c0"
    assert best.score == pytest.approx(1.0, abs=1e-3)
    assert backend.search_dense(vector(0), 1)[0].score < 0.9
    assert ids(backend.search_dense(vector(99), 10, Filter(equals={"lang": "de"}))) == ["c0"]
    assert backend.search_dense(vector(99), 10, Filter(equals={"kind": "runbook"})) == []
    assert backend.fetch(["c0"])["c0"] == Chunk(
        id="c0", text="replaced words entirely", tenant="acme", metadata={"lang": "de"}
    )
    assert backend.stats().chunks == len(CHUNKS)


def test_duplicate_ids_in_one_upsert_keep_the_last(backend: IndexBackend) -> None:
    assert backend.upsert([chunk(7, "first version"), chunk(7, "second version")]) == 1
    assert backend.fetch(["c7"])["c7"].text == "second version"
    assert ids(backend.search_lexical("version", 10)) == ["c7"]


def test_fetch_round_trips_every_field_but_the_vector(backend: IndexBackend) -> None:
    found = backend.fetch(["c0", "t4", "nope"])
    assert set(found) == {"c0", "t4"}
    original = CHUNKS[0]
    assert found["c0"] == Chunk(
        id=original.id,
        text=original.text,
        source=original.source,
        title=original.title,
        section=original.section,
        tenant=original.tenant,
        metadata=original.metadata,
    )
    assert found["t4"].vector == ()
    assert backend.fetch([]) == {}


def test_title_and_section_are_searchable(backend: IndexBackend) -> None:
    assert ids(backend.search_lexical("operations", 10)) == ["c0"]


def test_a_chunk_without_a_vector_is_found_by_lexical_search_only(backend: IndexBackend) -> None:
    assert "t4" in ids(backend.search_lexical("text only", 10))
    assert "t4" not in ids(backend.search_dense(vector(4), 10))


@pytest.mark.parametrize(
    ("delete", "left"),
    [
        ({"ids": ["c0", "missing"]}, {"c1", "c2", "c3", "t4"}),
        ({"filter": Filter(source="ops.md")}, {"c1", "c3", "t4"}),
        (
            {"filter": Filter(tenant="acme", source="ops.md", exact_tenant=True)},
            {"c1", "c2", "c3", "t4"},
        ),
        # An exact empty tenant is the chunks without a tenant: none here, so nothing goes.
        ({"filter": Filter(source="ops.md", exact_tenant=True)}, {"c0", "c1", "c2", "c3", "t4"}),
        ({"filter": Filter(tenant="globex")}, {"c0", "c1", "t4"}),
        ({"filter": Filter(equals={"lang": "en"})}, {"c2", "t4"}),
        ({"ids": ["c0", "c2"], "filter": Filter(tenant="acme")}, {"c1", "c2", "c3", "t4"}),
        ({"ids": []}, {"c0", "c1", "c2", "c3", "t4"}),
        (
            {"filter": Filter(tenant="acme"), "keep_ids": ["t4", "c2", "missing"]},
            {"c2", "c3", "t4"},
        ),
        ({"filter": Filter(equals={"lang": "en"}), "keep_ids": ["c0"]}, {"c0", "c2", "t4"}),
        ({"ids": ["c0", "c1"], "keep_ids": ["c1"]}, {"c1", "c2", "c3", "t4"}),
        (
            {"ids": ["c0", "c2"], "filter": Filter(tenant="acme"), "keep_ids": ["c0"]},
            set(CHUNKS_IDS),
        ),
    ],
)
def test_delete(backend: IndexBackend, delete: dict[str, object], left: set[str]) -> None:
    deleted = backend.delete(**delete)  # type: ignore[arg-type]
    assert deleted == len(CHUNKS) - len(left)
    assert set(backend.fetch([c.id for c in CHUNKS])) == left
    assert set(ids(backend.search_lexical("shutdown drains batches", 10))) <= left
    assert set(ids(backend.search_dense(vector(0), 10))) == left & WITH_VECTORS
    assert backend.stats().chunks == len(left)


def test_replacing_a_source_upserts_then_prunes_what_the_new_ids_do_not_keep(
    backend: IndexBackend,
) -> None:
    source = Filter(tenant="acme", source="ops.md", exact_tenant=True)
    kept = chunk(0, CHUNKS[0].text, source="ops.md", tenant="acme", metadata={"lang": "en"})
    new = [kept, chunk(10, "shutdown now waits for the drain", source="ops.md", tenant="acme")]
    backend.upsert(new)
    assert backend.delete(filter=source, keep_ids=[c.id for c in new]) == 0
    assert set(backend.fetch(["c0", "c10"])) == {"c0", "c10"}
    assert backend.fetch(["c0"])["c0"].metadata == {"lang": "en"}
    # A re-ingest with fewer chunks leaves exactly the new ones (other tenants untouched).
    backend.upsert([new[1]])
    assert backend.delete(filter=source, keep_ids=["c10"]) == 1
    assert {h.id for h in backend.search_lexical("shutdown", 10, source)} == {"c10"}
    assert {h.id for h in backend.search_dense(vector(0), 10, source)} == {"c10"}
    assert set(backend.fetch(CHUNKS_IDS)) == {"c1", "c2", "c3", "t4"}


def test_delete_refuses_to_delete_everything(backend: IndexBackend) -> None:
    with pytest.raises(InvalidInput):
        backend.delete(filter=Filter())
    assert backend.stats().chunks == len(CHUNKS)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        (Filter(tenant="acme"), {"c0", "t4"}),
        (Filter(tenant="globex"), {"c2", "c3"}),
        (Filter(source="ops.md"), {"c0", "c2"}),
        (Filter(tenant="globex", equals={"lang": "en"}), {"c3"}),
        (Filter(equals={"lang": "en", "kind": "runbook"}), {"c0"}),
        (Filter(equals={"lang": "xx"}), set()),
    ],
)
def test_filters_apply_inside_both_searches(
    backend: IndexBackend, filter: Filter, expected: set[str]
) -> None:
    assert set(ids(backend.search_lexical("shutdown", 10, filter))) == expected
    dense_expected = {
        c.id for c in CHUNKS if c.vector and filter.matches(c.tenant, c.source, c.metadata)
    }
    for seed in range(4):
        hits = backend.search_dense(vector(seed), 10, filter)
        assert set(ids(hits)) == dense_expected
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_filtered_k_1_search_finds_the_match_the_unfiltered_best_hides(
    backend: IndexBackend, seed: int
) -> None:
    # Post-filtering the unfiltered top-1 would return nothing here: the filter must apply
    # inside the search for k=1 to find the best chunk among those that match.
    best = backend.search_dense(vector(seed), 1)[0].id
    others = Filter(tenant="globex" if best in {"c0", "c1"} else "acme")
    allowed = {c.id for c in CHUNKS if c.tenant == others.tenant} & WITH_VECTORS
    dense = backend.search_dense(vector(seed), 1, others)
    assert len(dense) == 1
    assert dense[0].id == ids(backend.search_dense(vector(seed), 10, others))[0]
    assert dense[0].id in allowed

    top_lexical = backend.search_lexical("shutdown", 1)[0].id
    tenant = next(c.tenant for c in CHUNKS if c.id == top_lexical)
    excluding = Filter(tenant="globex" if tenant == "acme" else "acme")
    lexical = backend.search_lexical("shutdown", 1, excluding)
    assert len(lexical) == 1
    assert lexical[0].id != top_lexical


def test_dense_scores_are_cosine_similarities(backend: IndexBackend) -> None:
    query = np.asarray(vector(1)) + 0.3 * np.asarray(vector(42))
    hits = backend.search_dense(tuple(query.tolist()), len(WITH_VECTORS))
    assert hits[0].id == "c1"
    by_id = {c.id: np.asarray(c.vector) for c in CHUNKS if c.vector}
    for hit in hits:
        stored = by_id[hit.id]
        cosine = float(query @ stored / (np.linalg.norm(query) * np.linalg.norm(stored)))
        assert hit.score == pytest.approx(cosine, abs=2e-3)
    # The same direction at another length scores the same.
    scaled = backend.search_dense(tuple((5.0 * np.asarray(vector(2))).tolist()), 1)[0]
    assert scaled.id == "c2"
    assert scaled.score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("space", ["\u00a0", "\u000b", "\u000c", "\u0085", "\u2028", "\u3000"])
def test_any_unicode_space_separates_query_words(backend: IndexBackend, space: str) -> None:
    assert ids(backend.search_lexical(f"in-flight{space}drains{space}", 10))[0] == "c0"


def test_lexical_query_syntax_is_treated_as_text(backend: IndexBackend) -> None:
    assert ids(backend.search_lexical('drains: AND (in-flight "calls', 10))[0] == "c0"
    assert backend.search_lexical("?!", 10) == []


def test_writes_are_visible_on_return(harness: Harness) -> None:
    backend = harness()
    for round_ in range(3):
        backend.upsert(
            [Chunk(id=f"v{round_}", text=f"visible round{round_}", vector=vector(round_))]
        )
        assert ids(backend.search_lexical(f"round{round_}", 10)) == [f"v{round_}"]
        assert backend.search_dense(vector(round_), 1)[0].id == f"v{round_}"
        assert backend.stats().chunks == round_ + 1
    assert backend.delete(ids=["v0"]) == 1
    assert backend.search_lexical("round0", 10) == []
    assert backend.stats().chunks == 2


def test_data_survives_close_and_reopen(harness: Harness) -> None:
    backend = harness()
    backend.upsert(CHUNKS)
    backend.delete(ids=["c1"])
    backend.close()
    harness.opened.remove(backend)
    reopened = harness()
    assert reopened.stats().chunks == len(CHUNKS) - 1
    assert ids(reopened.search_lexical("drains", 10)) == ["c0"]
    assert reopened.search_dense(vector(2), 1)[0].id == "c2"
    assert "c1" not in ids(reopened.search_dense(vector(1), 10))


def test_reopening_with_another_dimension_is_refused(harness: Harness) -> None:
    harness().upsert(CHUNKS[:1])
    with pytest.raises(FailedPrecondition, match=str(DIM)):
        harness(2 * DIM)
