"""Replacing a source through a real gateway in front of a real retriever (its on-disk index):
the new chunks are upserted first, then the source's other chunks pruned, so a failure between
the two steps, or within the upsert, leaves the old chunks searchable and a retry converges."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import Filter
from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.runtime.errors import Unavailable
from ragfleet_retriever.core import Retriever

from .conftest import FakeFleet, Gateway, start_gateway, start_retriever

pytestmark = pytest.mark.integration

SOURCE = "docs/runbook.md"
# Three paragraphs of about 100 characters: three chunks at chunk_size_chars=100.
OLD = "\n\n".join(
    f"Old step {n}: restart the {word} service, then wait until its health check reports serving."
    for n, word in enumerate(("alpha", "bravo", "charlie"))
)
NEW = "\n\n".join(
    f"New step {n}: drain the {word} service, then wait for the grace period before stopping it."
    for n, word in enumerate(("delta", "echo", "foxtrot"))
)
SHORT = "New single step: the runbook now fits in one chunk."


@dataclass
class Fleet:
    gateway: Gateway
    core: Retriever


@pytest.fixture
async def fleet(fake_fleet: FakeFleet, tmp_path: Path) -> AsyncIterator[Fleet]:
    async for address, core in start_retriever(tmp_path / "index"):
        addresses = {**fake_fleet.addresses, "retriever": address}
        async for gateway in start_gateway(
            addresses, chunk_size_chars=100, chunk_overlap_chars=0, upsert_batch_size=1
        ):
            yield Fleet(gateway, core)


async def ingest(fleet: Fleet, text: str) -> gateway_pb2.IngestResponse:
    request = gateway_pb2.IngestRequest(documents=[gateway_pb2.Document(source=SOURCE, text=text)])
    return await fleet.gateway.stub.Ingest(request, timeout=30)


def stored(fleet: Fleet) -> set[str]:
    """The texts the retriever holds for the source."""
    chunks = fleet.core.backend.fetch(ids_of(fleet))
    return {chunk.text for chunk in chunks.values()}


def ids_of(fleet: Fleet) -> list[str]:
    backend = fleet.core.backend
    hits = backend.search_lexical("step", 100, Filter(source=SOURCE))
    return [hit.id for hit in hits]


async def searchable(fleet: Fleet, query: str) -> set[str]:
    """The texts the gateway's Retrieve returns for ``query`` (lexical, the source only)."""
    options = gateway_pb2.RetrievalOptions(top_k=20, mode=common_pb2.SEARCH_MODE_LEXICAL)
    reply = await fleet.gateway.stub.Retrieve(
        gateway_pb2.RetrieveRequest(query=query, retrieval=options), timeout=10
    )
    return {hit.chunk.text for hit in reply.hits if hit.chunk.source == SOURCE}


def paragraphs(text: str) -> set[str]:
    return set(text.split("\n\n"))


def failing(
    monkeypatch: pytest.MonkeyPatch, core: Retriever, method: str, after: int = 0
) -> list[int]:
    """Makes ``core.<method>`` raise ``Unavailable`` once it has succeeded ``after`` times;
    returns the list of calls seen."""
    real: Callable[..., Any] = getattr(core, method)
    calls: list[int] = []

    async def fail(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        if len(calls) > after:
            raise Unavailable(f"injected: {method} failed")
        return await real(*args, **kwargs)

    monkeypatch.setattr(core, method, fail)
    return calls


async def test_a_failed_prune_leaves_old_and_new_and_a_retry_converges(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await ingest(fleet, OLD)
    assert first.chunks == 3
    assert stored(fleet) == paragraphs(OLD)

    calls = failing(monkeypatch, fleet.core, "delete")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest(fleet, NEW)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert calls, "the prune was attempted"
    assert stored(fleet) == paragraphs(OLD) | paragraphs(NEW)
    assert await searchable(fleet, "restart health") == paragraphs(OLD)

    monkeypatch.undo()
    again = await ingest(fleet, NEW)
    assert (again.chunks, again.replaced) == (3, 1)
    assert stored(fleet) == paragraphs(NEW)
    assert await searchable(fleet, "restart health") == set()


async def test_a_failed_upsert_keeps_every_old_chunk(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ingest(fleet, OLD)
    failing(monkeypatch, fleet.core, "upsert", after=1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest(fleet, NEW)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # One batch of the new chunks got in; nothing old went.
    assert paragraphs(OLD) < stored(fleet) < paragraphs(OLD) | paragraphs(NEW)
    assert await searchable(fleet, "restart health") == paragraphs(OLD)

    monkeypatch.undo()
    await ingest(fleet, NEW)
    assert stored(fleet) == paragraphs(NEW)


async def test_a_re_ingest_with_fewer_chunks_leaves_exactly_the_new_ones(fleet: Fleet) -> None:
    await ingest(fleet, OLD)
    fewer = await ingest(fleet, SHORT)
    assert (fewer.chunks, fewer.replaced) == (1, 1)
    assert stored(fleet) == {SHORT}
    assert fleet.core.backend.stats().chunks == 1
    # The same document again rewrites and removes nothing.
    same = await ingest(fleet, SHORT)
    assert (same.chunks, same.replaced) == (1, 0)
    assert stored(fleet) == {SHORT}


async def test_an_invalid_request_writes_nothing(fleet: Fleet) -> None:
    await ingest(fleet, OLD)
    documents: Sequence[gateway_pb2.Document] = [
        gateway_pb2.Document(source=SOURCE, text=NEW),
        gateway_pb2.Document(source="docs/other.md", text="x", metadata={"a.b": "x"}),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await fleet.gateway.stub.Ingest(gateway_pb2.IngestRequest(documents=documents), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored(fleet) == paragraphs(OLD)
    assert fleet.core.backend.stats().chunks == 3
