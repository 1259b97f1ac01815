"""The real retriever server on port 0 over a real on-disk index, restarted on the same dir."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragfleet.clients import RetrieverClient
from ragfleet.common.v1 import common_pb2
from ragfleet.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragfleet.runtime.channels import Deadline, insecure_channel
from ragfleet.runtime.server import GrpcService
from ragfleet_retriever.core import Retriever
from ragfleet_retriever.server import build_core, build_server
from ragfleet_retriever.settings import RetrieverSettings

pytestmark = pytest.mark.integration

DIM = 384
LEXICAL = common_pb2.SEARCH_MODE_LEXICAL
TEXTS = {
    "ops-1": (
        "Operations",
        "Shutdown",
        "On SIGTERM the service drains in-flight calls, then stops.",
    ),
    "ops-2": ("Operations", "Health", "Health reports SERVING only after the index is loaded."),
    "emb-1": ("Embedder", "Batching", "Concurrent embedding requests are batched dynamically."),
    "ret-1": ("Retriever", "Fusion", "Hybrid search fuses BM25 and dense rankings with RRF."),
    "gen-1": ("Generator", "Models", "The generator falls back to the next model on failure."),
    "acme-1": ("Tenant notes", "", "Acme's private runbook for draining the fleet at night."),
}


def embed(text: str) -> list[float]:
    """A stand-in embedding: a unit vector seeded by the text (real-looking, deterministic)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8]))
    vector = rng.standard_normal(DIM).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


def chunks() -> list[common_pb2.Chunk]:
    return [
        common_pb2.Chunk(
            id=chunk_id,
            title=title,
            section=section,
            text=text,
            source=f"docs/{chunk_id.split('-')[0]}.md",
            tenant="acme" if chunk_id.startswith("acme") else "",
            metadata={"kind": "runbook" if chunk_id.startswith(("ops", "acme")) else "design"},
            vector=embed(text),
        )
        for chunk_id, (title, section, text) in TEXTS.items()
    ]


async def start(data_dir: Path) -> tuple[GrpcService, Retriever]:
    settings = RetrieverSettings(port=0, data_dir=data_dir, dimension=DIM, grace_period_s=0)
    core = build_core(settings)
    service = build_server(settings, core)
    await service.start()
    await core.load()
    await service.mark_ready()
    return service, core


async def stop(service: GrpcService, core: Retriever) -> None:
    await service.stop(0)
    await core.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("index")


@pytest.fixture(scope="module")
async def stub(data_dir: Path) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceStub]:
    service, core = await start(data_dir)
    async with insecure_channel(f"127.0.0.1:{service.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="ragfleet.retriever.v1.RetrieverService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        upserted = await stub.Upsert(retriever_pb2.UpsertRequest(chunks=chunks()))
        assert upserted.upserted == len(TEXTS)
        yield stub
    await stop(service, core)


async def test_stats(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    stats = await stub.GetStats(retriever_pb2.GetStatsRequest())
    assert (stats.chunks, stats.sources, stats.dimension, stats.backend) == (6, 5, DIM, "embedded")


async def test_lexical_search(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    reply = await stub.Search(
        retriever_pb2.SearchRequest(
            query="how are in-flight calls drained on shutdown?",
            mode=common_pb2.SEARCH_MODE_LEXICAL,
            top_k=3,
        )
    )
    assert reply.mode == common_pb2.SEARCH_MODE_LEXICAL
    assert reply.hits[0].chunk.id == "ops-1"
    assert reply.hits[0].chunk.text == TEXTS["ops-1"][2]
    assert reply.hits[0].chunk.section == "Shutdown"
    assert reply.hits[0].lexical_rank == 1
    assert reply.hits[0].dense_rank == 0
    assert not reply.hits[0].chunk.vector
    assert not reply.HasField("best_dense_score")


async def test_dense_search_finds_the_exact_vector(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
) -> None:
    reply = await stub.Search(
        retriever_pb2.SearchRequest(
            query_vector=embed(TEXTS["gen-1"][2]), mode=common_pb2.SEARCH_MODE_DENSE, top_k=2
        )
    )
    assert reply.hits[0].chunk.id == "gen-1"
    assert reply.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert reply.hits[0].dense_rank == 1


@pytest.mark.parametrize(
    "method", [common_pb2.FUSION_METHOD_RRF, common_pb2.FUSION_METHOD_WEIGHTED]
)
async def test_hybrid_search_fuses_and_filters(
    stub: retriever_pb2_grpc.RetrieverServiceStub, method: common_pb2.FusionMethod.ValueType
) -> None:
    # Lexically about SIGTERM, densely identical to the batching chunk: both belong on top.
    request = retriever_pb2.SearchRequest(
        query="SIGTERM in-flight calls",
        query_vector=embed(TEXTS["emb-1"][2]),
        top_k=3,
        fusion=common_pb2.Fusion(method=method),
    )
    reply = await stub.Search(request)
    assert reply.mode == common_pb2.SEARCH_MODE_HYBRID
    top = {h.chunk.id: h for h in reply.hits[:2]}
    assert set(top) == {"ops-1", "emb-1"}
    assert top["ops-1"].lexical_rank == 1
    assert top["emb-1"].dense_rank == 1
    assert reply.best_dense_score == pytest.approx(1.0, abs=1e-4)

    request.filter.CopyFrom(common_pb2.Filter(tenant="acme", equals={"kind": "runbook"}))
    reply = await stub.Search(request)
    assert [h.chunk.id for h in reply.hits] == ["acme-1"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (retriever_pb2.SearchRequest(query="", mode=common_pb2.SEARCH_MODE_LEXICAL), "query"),
        (retriever_pb2.SearchRequest(query="x"), "query_vector"),
        (
            retriever_pb2.SearchRequest(mode=common_pb2.SEARCH_MODE_DENSE, query_vector=[1.0] * 3),
            "query_vector",
        ),
        (
            retriever_pb2.SearchRequest(query="x", mode=common_pb2.SEARCH_MODE_LEXICAL, top_k=-1),
            "top_k",
        ),
        (
            retriever_pb2.SearchRequest(query="x", mode=common_pb2.SEARCH_MODE_LEXICAL, top_k=101),
            "top_k",
        ),
        (retriever_pb2.SearchRequest(query="x", mode=9), "mode"),  # type: ignore[arg-type]
        (
            retriever_pb2.SearchRequest(
                query="x",
                mode=common_pb2.SEARCH_MODE_LEXICAL,
                fusion=common_pb2.Fusion(method=7),  # type: ignore[arg-type]
            ),
            "fusion.method",
        ),
        (
            retriever_pb2.SearchRequest(
                query="x",
                mode=common_pb2.SEARCH_MODE_LEXICAL,
                fusion=common_pb2.Fusion(dense_weight=1.5),
            ),
            "fusion.dense_weight",
        ),
        (
            retriever_pb2.SearchRequest(
                query="x",
                mode=common_pb2.SEARCH_MODE_LEXICAL,
                filter=common_pb2.Filter(equals={"metadata.kind": "runbook"}),
            ),
            "filter.equals['metadata.kind']",
        ),
    ],
)
async def test_bad_search_is_invalid_argument(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    request_: retriever_pb2.SearchRequest,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Search(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(f"{field}:")


@pytest.mark.parametrize(
    ("chunk", "field"),
    [
        (common_pb2.Chunk(id="", text="t"), "chunks[1].id"),
        (common_pb2.Chunk(id="x", text=""), "chunks[1].text"),
        (common_pb2.Chunk(id="x", text="t", vector=[0.5] * 10), "chunks[1].vector"),
        (common_pb2.Chunk(id="x", text="t", metadata={"a/b": "v"}), "chunks[1].metadata['a/b']"),
    ],
)
async def test_bad_upsert_is_invalid_argument_and_writes_nothing(
    stub: retriever_pb2_grpc.RetrieverServiceStub, chunk: common_pb2.Chunk, field: str
) -> None:
    good = common_pb2.Chunk(id="never", text="never stored")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Upsert(retriever_pb2.UpsertRequest(chunks=[good, chunk]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(f"{field}:")
    stats = await stub.GetStats(retriever_pb2.GetStatsRequest())
    assert stats.chunks == len(TEXTS)


async def test_delete_needs_ids_or_filter(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Delete(retriever_pb2.DeleteRequest())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (retriever_pb2.DeleteRequest(ids=["a"], keep_ids=["a"]), "keep_ids"),
        (retriever_pb2.DeleteRequest(source="s.md", keep_ids=["a", ""]), r"keep_ids\[1\]"),
    ],
)
async def test_a_bad_keep_ids_is_invalid_argument(
    stub: retriever_pb2_grpc.RetrieverServiceStub, request_: retriever_pb2.DeleteRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Delete(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.match(field, raised.value.details() or "")


async def test_restart_on_the_same_dir_keeps_the_data(tmp_path: Path) -> None:
    service, core = await start(tmp_path)
    async with insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        await stub.Upsert(retriever_pb2.UpsertRequest(chunks=chunks()))
        await stub.Upsert(
            retriever_pb2.UpsertRequest(chunks=[common_pb2.Chunk(id="txt-1", text="plain text")])
        )
        deleted = await stub.Delete(retriever_pb2.DeleteRequest(source="docs/gen.md"))
        assert deleted.deleted == 1
    await stop(service, core)

    service, core = await start(tmp_path)
    async with insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        stats = await stub.GetStats(retriever_pb2.GetStatsRequest())
        assert stats.chunks == len(TEXTS)
        lexical = await stub.Search(
            retriever_pb2.SearchRequest(query="plain text", mode=common_pb2.SEARCH_MODE_LEXICAL)
        )
        assert lexical.hits[0].chunk.id == "txt-1"
        dense = await stub.Search(
            retriever_pb2.SearchRequest(
                query_vector=embed(TEXTS["ret-1"][2]), mode=common_pb2.SEARCH_MODE_DENSE, top_k=10
            )
        )
        assert dense.hits[0].chunk.id == "ret-1"
        assert "gen-1" not in {h.chunk.id for h in dense.hits}
    await stop(service, core)


async def test_deleting_a_source_with_an_empty_tenant_spares_every_tenant(tmp_path: Path) -> None:
    """A source deleted without a tenant loses only its chunks that have no tenant: an empty
    tenant is never "every tenant" when deleting."""
    service, core = await start(tmp_path)
    try:
        async with insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            copies = [
                common_pb2.Chunk(
                    id=f"{tenant or 'none'}-1", text="shared", source="s.md", tenant=tenant
                )
                for tenant in ("", "acme", "globex")
            ]
            await stub.Upsert(retriever_pb2.UpsertRequest(chunks=copies))
            deleted = await stub.Delete(retriever_pb2.DeleteRequest(source="s.md"))
            assert deleted.deleted == 1
            deleted = await stub.Delete(
                retriever_pb2.DeleteRequest(source="s.md", filter=common_pb2.Filter(tenant="acme"))
            )
            assert deleted.deleted == 1
            stats = await stub.GetStats(retriever_pb2.GetStatsRequest())
            assert stats.chunks == 1
            hits = await stub.Search(
                retriever_pb2.SearchRequest(
                    query="shared", mode=common_pb2.SEARCH_MODE_LEXICAL, top_k=5
                )
            )
            assert [h.chunk.id for h in hits.hits] == ["globex-1"]
    finally:
        await stop(service, core)


async def test_a_service_credential_is_required_once_configured(tmp_path: Path) -> None:
    settings = RetrieverSettings(
        port=0,
        data_dir=tmp_path,
        dimension=DIM,
        grace_period_s=0,
        service_credential="s3cret-credential",
    )
    core = build_core(settings)
    service = build_server(settings, core)
    await service.start()
    await core.load()
    await service.mark_ready()
    try:
        async with insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.GetStats(retriever_pb2.GetStatsRequest(), metadata=metadata)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        client = RetrieverClient.connect(
            f"127.0.0.1:{service.port}", credential="s3cret-credential"
        )
        try:
            assert (await client.stats(Deadline.after(5))).chunks == 0
        finally:
            await client.close()
    finally:
        await stop(service, core)
