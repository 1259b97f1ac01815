"""The retriever core's validation and search modes, on a deterministic in-memory fake backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from ragfleet.domain import MATCH_ALL, Chunk, Filter, SearchMode, SearchQuery
from ragfleet.fusion import DEFAULT_DENSE_WEIGHT, FusionMethod
from ragfleet.runtime.errors import InvalidInput, Unavailable
from ragfleet_retriever.core import Retriever
from ragfleet_retriever.domain import IndexStats, ScoredId
from ragfleet_retriever.settings import RetrieverSettings

pytestmark = pytest.mark.unit

DIM = 3


class FakeBackend:
    """Lexical: fixed ranking by word overlap; dense: dot product. Records what it was asked."""

    name = "fake"
    dimension = DIM

    def __init__(self) -> None:
        self.chunks: dict[str, Chunk] = {}
        self.calls: list[tuple[str, int, Filter]] = []

    def upsert(self, chunks: Sequence[Chunk]) -> int:
        self.chunks.update({c.id: c for c in chunks})
        return len({c.id for c in chunks})

    def delete(
        self,
        *,
        ids: Sequence[str] | None = None,
        filter: Filter = MATCH_ALL,
        keep_ids: Sequence[str] = (),
    ) -> int:
        doomed = [
            c.id
            for c in self.chunks.values()
            if (ids is None or c.id in ids)
            and c.id not in keep_ids
            and filter.matches(c.tenant, c.source, c.metadata)
        ]
        for chunk_id in doomed:
            del self.chunks[chunk_id]
        return len(doomed)

    def search_lexical(self, query: str, k: int, filter: Filter = MATCH_ALL) -> list[ScoredId]:
        self.calls.append(("lexical", k, filter))
        words = set(query.split())
        scored = [
            ScoredId(c.id, float(len(words & set(c.text.split())))) for c in self._all(filter)
        ]
        return sorted((s for s in scored if s.score), key=lambda s: -s.score)[:k]

    def search_dense(
        self, vector: Sequence[float], k: int, filter: Filter = MATCH_ALL
    ) -> list[ScoredId]:
        self.calls.append(("dense", k, filter))
        scored = [
            ScoredId(c.id, sum(a * b for a, b in zip(vector, c.vector, strict=True)))
            for c in self._all(filter)
        ]
        return sorted(scored, key=lambda s: -s.score)[:k]

    def _all(self, filter: Filter) -> list[Chunk]:
        return [c for c in self.chunks.values() if filter.matches(c.tenant, c.source, c.metadata)]

    def fetch(self, ids: Sequence[str]) -> dict[str, Chunk]:
        return {i: self.chunks[i] for i in ids if i in self.chunks}

    def stats(self) -> IndexStats:
        return IndexStats(
            len(self.chunks), len({c.source for c in self.chunks.values()}), DIM, "fake"
        )

    def close(self) -> None:
        pass


CHUNKS = [
    Chunk(id="a", text="alpha beta", source="s1", vector=(1.0, 0.0, 0.0)),
    Chunk(id="b", text="beta gamma", source="s1", vector=(0.0, 1.0, 0.0)),
    Chunk(id="c", text="gamma delta", source="s2", tenant="t", vector=(0.0, 0.0, 1.0)),
]


@pytest.fixture
async def core() -> Retriever:
    backend = FakeBackend()
    retriever = Retriever(
        RetrieverSettings(default_top_k=3, max_top_k=5, max_upsert_chunks=4), lambda: backend
    )
    await retriever.load()
    await retriever.upsert(CHUNKS)
    return retriever


async def test_calls_before_load_are_unavailable() -> None:
    retriever = Retriever(RetrieverSettings(), FakeBackend)
    with pytest.raises(Unavailable):
        await retriever.stats()


async def test_lexical_and_dense_modes_report_their_own_rank(core: Retriever) -> None:
    lexical = await core.search(SearchQuery(query="gamma delta", mode=SearchMode.LEXICAL))
    assert [(h.chunk.id, h.lexical_rank, h.dense_rank) for h in lexical.hits] == [
        ("c", 1, 0),
        ("b", 2, 0),
    ]
    dense = await core.search(SearchQuery(vector=(0.1, 0.9, 0.0), mode=SearchMode.DENSE, top_k=1))
    assert [(h.chunk.id, h.lexical_rank, h.dense_rank) for h in dense.hits] == [("b", 0, 1)]
    assert dense.hits[0].score == pytest.approx(0.9)


async def test_hybrid_is_the_default_and_fuses_both_lists(core: Retriever) -> None:
    backend = core.backend
    assert isinstance(backend, FakeBackend)
    result = await core.search(
        SearchQuery(
            query="alpha", vector=(0.0, 0.0, 1.0), top_k=2, candidate_k=3, fusion=FusionMethod.RRF
        )
    )
    assert result.mode is SearchMode.HYBRID
    assert {(h.chunk.id, h.lexical_rank, h.dense_rank) for h in result.hits} == {
        ("a", 1, 2),
        ("c", 0, 1),
    }
    assert sorted((kind, k) for kind, k, _ in backend.calls) == [("dense", 3), ("lexical", 3)]


async def test_best_dense_score_is_the_dense_lists_top_cosine(core: Retriever) -> None:
    """The gateway's relevance gate reads it: the top of the dense list, which may fall outside
    the fused top_k; absent when no dense list was searched."""
    hybrid = await core.search(
        SearchQuery(query="gamma delta", vector=(0.1, 0.9, 0.0), top_k=1, dense_weight=0.0)
    )
    assert [h.chunk.id for h in hybrid.hits] == ["c"]
    assert hybrid.best_dense_score == pytest.approx(0.9)
    dense = await core.search(SearchQuery(vector=(0.1, 0.9, 0.0), mode=SearchMode.DENSE))
    assert dense.best_dense_score == pytest.approx(0.9)
    lexical = await core.search(SearchQuery(query="gamma", mode=SearchMode.LEXICAL))
    assert lexical.best_dense_score is None


async def test_filter_reaches_both_sub_searches(core: Retriever) -> None:
    backend = core.backend
    assert isinstance(backend, FakeBackend)
    result = await core.search(
        SearchQuery(query="beta gamma", vector=(1.0, 1.0, 1.0), filter=Filter(tenant="t"))
    )
    assert [h.chunk.id for h in result.hits] == ["c"]
    assert {f.tenant for _, _, f in backend.calls} == {"t"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (SearchQuery(query=" ", vector=(1.0, 0.0, 0.0)), "query"),
        (SearchQuery(query="x" * 9000, mode=SearchMode.LEXICAL), "query"),
        (SearchQuery(query="alpha"), "query_vector"),
        (SearchQuery(mode=SearchMode.DENSE, vector=(1.0, 0.0)), "query_vector"),
        (SearchQuery(mode=SearchMode.DENSE, vector=(0.0, 0.0, 0.0)), "query_vector"),
        (SearchQuery(mode=SearchMode.DENSE, vector=(float("nan"), 0.0, 1.0)), "query_vector"),
        (SearchQuery(query="alpha", mode=SearchMode.LEXICAL, top_k=0), "top_k"),
        (SearchQuery(query="alpha", mode=SearchMode.LEXICAL, top_k=6), "top_k"),
        (SearchQuery(query="alpha", mode=SearchMode.LEXICAL, candidate_k=1001), "candidate_k"),
        (
            SearchQuery(query="alpha", mode=SearchMode.LEXICAL, dense_weight=1.5),
            "fusion.dense_weight",
        ),
        (
            SearchQuery(query="alpha", mode=SearchMode.LEXICAL, fusion=FusionMethod.RRF, rrf_k=-1),
            "fusion.rrf_k",
        ),
        (
            SearchQuery(query="alpha", mode=SearchMode.LEXICAL, dense_weight=-0.1),
            "fusion.dense_weight",
        ),
        (
            SearchQuery(query="alpha", mode=SearchMode.LEXICAL, fusion="mean"),  # type: ignore[arg-type]
            "fusion",
        ),
        (
            SearchQuery(query="alpha", mode=SearchMode.LEXICAL, filter=Filter(equals={"a.b": "x"})),
            "filter.equals['a.b']",
        ),
        (
            SearchQuery(query="alpha", mode=SearchMode.LEXICAL, filter=Filter(equals={"": "x"})),
            "filter.equals['']",
        ),
        (
            SearchQuery(
                query="alpha", mode=SearchMode.LEXICAL, filter=Filter(equals={"k": "v" * 2049})
            ),
            "filter.equals['k']",
        ),
    ],
)
async def test_invalid_searches_name_the_field(
    core: Retriever, query: SearchQuery, field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        await core.search(query)
    assert raised.value.message.startswith(f"{field}:")


@pytest.mark.parametrize(
    ("chunks", "field"),
    [
        ([Chunk(id="", text="x")], "chunks[0].id"),
        ([Chunk(id="ok", text="x"), Chunk(id="e", text="  ")], "chunks[1].text"),
        ([Chunk(id="v", text="x", vector=(1.0, 2.0))], "chunks[0].vector"),
        ([Chunk(id=str(i), text="x") for i in range(5)], "chunks"),
        ([Chunk(id="é" * 257, text="x")], "chunks[0].id"),
        (
            [Chunk(id="m", text="x", metadata={"tenant.name": "x"})],
            "chunks[0].metadata['tenant.name']",
        ),
        ([Chunk(id="m", text="x", metadata={"k" * 65: "x"})], f"chunks[0].metadata['{'k' * 65}']"),
    ],
)
async def test_invalid_upserts_name_the_chunk(
    core: Retriever, chunks: list[Chunk], field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        await core.upsert(chunks)
    assert raised.value.message.startswith(f"{field}:")


async def test_delete_needs_ids_or_filter(core: Retriever) -> None:
    with pytest.raises(InvalidInput, match="ids, filter"):
        await core.delete([], Filter())
    with pytest.raises(InvalidInput, match=r"^filter.equals\['a b'\]: not a metadata key"):
        await core.delete([], Filter(equals={"a b": "x"}))
    assert await core.delete([], Filter(source="s1")) == 2
    assert (await core.stats()).chunks == 1


async def test_delete_keeps_the_keep_ids_of_a_filter(core: Retriever) -> None:
    s1 = [c.id for c in CHUNKS if c.source == "s1"]
    assert await core.delete([], Filter(source="s1"), keep_ids=s1[:1]) == len(s1) - 1
    assert (await core.stats()).chunks == len(CHUNKS) - len(s1) + 1


@pytest.mark.parametrize(
    ("ids", "filter", "keep_ids", "message"),
    [
        ([], Filter(), ["a"], r"^ids, filter: give chunk ids"),
        (["a"], Filter(), ["a"], r"^keep_ids: only with a non-empty filter or source$"),
        ([], Filter(source="s1"), ["a", ""], r"^keep_ids\[1\]: must not be empty$"),
        ([], Filter(source="s1"), ["k"] * 4, r"^keep_ids: at most 3 per request, got 4$"),
        (["a"] * 3, Filter(), [], r"^ids: at most 2 per request, got 3$"),
    ],
)
async def test_delete_validates_ids_and_keep_ids_before_deleting(
    ids: list[str], filter: Filter, keep_ids: list[str], message: str
) -> None:
    backend = FakeBackend()
    retriever = Retriever(RetrieverSettings(max_delete_ids=2, max_keep_ids=3), lambda: backend)
    await retriever.load()
    await retriever.upsert(CHUNKS)
    with pytest.raises(InvalidInput, match=message):
        await retriever.delete(ids, filter, keep_ids)
    assert len(backend.chunks) == len(CHUNKS)


async def test_valid_metadata_keys_pass(core: Retriever) -> None:
    chunk = Chunk(
        id="m", text="meta", metadata={"chunk_index": "0", "content-type": "md", "A1": ""}
    )
    assert await core.upsert([chunk]) == 1
    found = await core.search(
        SearchQuery(
            query="meta", mode=SearchMode.LEXICAL, filter=Filter(equals={"chunk_index": "0"})
        )
    )
    assert [h.chunk.id for h in found.hits] == ["m"]


class ServerFusingBackend(FakeBackend):
    """A backend that fuses RRF itself and leaves weighted fusion to the core."""

    def __init__(self) -> None:
        super().__init__()
        self.hybrid_calls: list[tuple[int, int, FusionMethod, float, int, Filter]] = []

    def search_hybrid(
        self,
        query: str,
        vector: Sequence[float],
        k: int,
        candidate_k: int,
        fusion: FusionMethod,
        *,
        dense_weight: float,
        rrf_k: int,
        filter: Filter = MATCH_ALL,
    ) -> list[ScoredId] | None:
        self.hybrid_calls.append((k, candidate_k, fusion, dense_weight, rrf_k, filter))
        if fusion is not FusionMethod.RRF:
            return None
        return [ScoredId("c", 0.9), ScoredId("gone", 0.5), ScoredId("a", 0.1)]


async def test_a_backend_that_fuses_itself_serves_hybrid_search() -> None:
    backend = ServerFusingBackend()
    retriever = Retriever(RetrieverSettings(), lambda: backend)
    await retriever.load()
    await retriever.upsert(CHUNKS)
    query = SearchQuery(
        query="alpha", vector=(0.0, 0.0, 1.0), top_k=3, candidate_k=7, filter=Filter(source="s1")
    )
    served = await retriever.search(dataclasses.replace(query, fusion=FusionMethod.RRF, rrf_k=9))
    # Only the fused score is known; a hit deleted meanwhile ("gone") is left out.
    assert [(h.chunk.id, h.score, h.lexical_rank, h.dense_rank) for h in served.hits] == [
        ("c", 0.9, 0, 0),
        ("a", 0.1, 0, 0),
    ]
    assert backend.hybrid_calls[0] == (
        3,
        7,
        FusionMethod.RRF,
        DEFAULT_DENSE_WEIGHT,
        9,
        Filter(source="s1"),
    )
    assert backend.calls == []
    fused = await retriever.search(
        dataclasses.replace(query, fusion=FusionMethod.WEIGHTED, dense_weight=0.2)
    )
    assert backend.hybrid_calls[1][2:5] == (FusionMethod.WEIGHTED, 0.2, 60)
    assert sorted(kind for kind, _, _ in backend.calls) == ["dense", "lexical"]
    assert fused.hits[0].lexical_rank or fused.hits[0].dense_rank
