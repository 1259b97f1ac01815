"""The real gateway (gRPC and REST on port 0) against fake upstreams served over real gRPC."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from ragfleet.common.v1 import common_pb2
from ragfleet.gateway.v1 import gateway_pb2

from .conftest import FakeFleet, Gateway, start_gateway

pytestmark = pytest.mark.integration

DOCUMENTS = [
    gateway_pb2.Document(
        source="docs/operations.md",
        title="Operations",
        text="# Operations\n\n## Shutdown\n\nOn SIGTERM the service flips health to NOT_SERVING "
        "and drains in-flight calls for the grace period.\n\n## Logs\n\nLogs are JSON lines.",
    ),
    gateway_pb2.Document(
        source="docs/intro.html",
        title="Intro",
        text="<h1>Intro</h1><p>ragfleet answers questions with citations.</p>",
    ),
]


@pytest.fixture(scope="module", autouse=True)
async def ingested(gateway: Gateway) -> gateway_pb2.IngestResponse:
    reply = await gateway.stub.Ingest(gateway_pb2.IngestRequest(documents=DOCUMENTS), timeout=10)
    assert (reply.documents, reply.chunks) == (2, 3)
    return reply


async def test_ingesting_the_same_documents_again_keeps_their_chunks(
    gateway: Gateway, fake_fleet: FakeFleet
) -> None:
    reply = await gateway.stub.Ingest(gateway_pb2.IngestRequest(documents=DOCUMENTS), timeout=10)
    # Same content, same chunk ids: upserted again, none pruned, so no source counts as replaced.
    assert (reply.documents, reply.chunks, reply.replaced) == (2, 3, 0)
    assert len(fake_fleet.retriever.core.chunks) == 3


async def test_ask_streams_sources_tokens_and_a_cited_answer(
    gateway: Gateway, fake_fleet: FakeFleet
) -> None:
    request = gateway_pb2.AskRequest(question="What happens on SIGTERM?", max_tokens=64)
    events = [e async for e in gateway.stub.Ask(request, timeout=10)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["sources", "token", "token", "answer"]
    sources = events[0].sources.sources
    assert sources[0].number == 1
    assert sources[0].hit.chunk.section == "Operations > Shutdown"
    assert sources[0].hit.lexical_rank >= 1 and sources[0].hit.dense_rank >= 1
    answer = events[-1].answer
    assert answer.text == "On SIGTERM it drains in-flight calls [1]."
    assert [(c.number, c.chunk_id, c.source) for c in answer.citations] == [
        (1, sources[0].hit.chunk.id, "docs/operations.md")
    ]
    assert answer.model == "fake-model" and answer.usage.completion_tokens == 2
    assert not answer.degraded
    assert {t.stage for t in answer.timings} >= {"embed", "search", "generate", "total"}
    sent = fake_fleet.generator.requests[-1]
    assert sent.max_tokens == 64 and "[1] Operations" in sent.messages[-1].content


async def test_retrieve_lexical_mode(gateway: Gateway) -> None:
    reply = await gateway.stub.Retrieve(
        gateway_pb2.RetrieveRequest(
            query="citations",
            retrieval=gateway_pb2.RetrievalOptions(top_k=1, mode=common_pb2.SEARCH_MODE_LEXICAL),
        ),
        timeout=10,
    )
    assert [h.chunk.source for h in reply.hits] == ["docs/intro.html"]
    assert reply.hits[0].dense_rank == 0 and not reply.degraded


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (gateway_pb2.AskRequest(question=" "), "question"),
        (gateway_pb2.AskRequest(question="x" * 2001), "question"),
        (
            gateway_pb2.AskRequest(question="q", retrieval=gateway_pb2.RetrievalOptions(top_k=99)),
            "retrieval.top_k",
        ),
        (
            gateway_pb2.AskRequest(question="q", retrieval=gateway_pb2.RetrievalOptions(mode=7)),
            "retrieval.mode",
        ),
        (
            gateway_pb2.AskRequest(
                question="q",
                retrieval=gateway_pb2.RetrievalOptions(
                    fusion=common_pb2.Fusion(
                        method=common_pb2.FUSION_METHOD_WEIGHTED, dense_weight=2
                    )
                ),
            ),
            "dense_weight",
        ),
        (gateway_pb2.AskRequest(question="q", max_tokens=0), "max_tokens"),
    ],
)
async def test_ask_rejects_bad_input(
    gateway: Gateway, request_: gateway_pb2.AskRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in gateway.stub.Ask(request_, timeout=5):
            pass
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


@pytest.mark.parametrize(
    ("documents", "field"),
    [
        ([], "documents"),
        ([gateway_pb2.Document(text="x")], "documents[0].source"),
        ([gateway_pb2.Document(source="a.md")], "documents[0].text"),
    ],
)
async def test_ingest_rejects_bad_documents(
    gateway: Gateway, documents: list[gateway_pb2.Document], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.stub.Ingest(gateway_pb2.IngestRequest(documents=documents), timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


async def test_embedder_down_degrades_retrieval(gateway: Gateway, fake_fleet: FakeFleet) -> None:
    fake_fleet.embedder.fail = True
    try:
        reply = await gateway.stub.Retrieve(
            gateway_pb2.RetrieveRequest(query="SIGTERM"), timeout=10
        )
    finally:
        fake_fleet.embedder.fail = False
    assert reply.hits and reply.degraded
    assert "embedder at 127.0.0.1:" in reply.degraded_reasons[0]


# --- REST ------------------------------------------------------------------------------
async def test_rest_ask_returns_the_answer_as_json(gateway: Gateway) -> None:
    response = await gateway.rest.post(
        "/v1/ask", json={"question": "What happens on SIGTERM?", "retrieval": {"fusion": "rrf"}}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["answer"]["text"] == "On SIGTERM it drains in-flight calls [1]."
    assert body["answer"]["citations"][0]["number"] == 1
    assert body["sources"][0]["hit"]["chunk"]["section"] == "Operations > Shutdown"


async def test_rest_ask_streams_server_sent_events(gateway: Gateway) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    async with gateway.rest.stream(
        "POST", "/v1/ask", json={"question": "What happens on SIGTERM?", "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert [n for n, _ in events] == ["sources", "token", "token", "answer"]
    assert events[1][1] == {"text": "On SIGTERM it drains "}
    assert events[-1][1]["citations"][0]["number"] == 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "q", "retrieval": {"top_k": 0.5}}, "retrieval.top_k"),
        ({"question": "q", "retrieval": {"top_k": 500}}, "retrieval.top_k"),
        ({"question": "q", "retrieval": {"mode": "fuzzy"}}, "retrieval.mode"),
        ({"question": "q", "retrieval": {"dense_weight": 7}}, "dense_weight"),
        ({"question": "q", "max_token": 5}, "max_token"),
        ({}, "question"),
    ],
)
async def test_rest_bad_input_is_a_400_json_error(
    gateway: Gateway, body: dict[str, object], field: str
) -> None:
    for stream in (False, True):
        response = await gateway.rest.post("/v1/ask", json={**body, "stream": stream})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and field in error["message"]


async def test_rest_retrieve_and_ingest(gateway: Gateway) -> None:
    response = await gateway.rest.post(
        "/v1/ingest",
        json={
            "documents": [{"source": "faq.txt", "text": "Ports: gateway 50050."}],
            "tenant": "t9",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"documents": 1, "chunks": 1, "replaced": 0, "removed_chunks": 0}
    response = await gateway.rest.post(
        "/v1/retrieve", json={"query": "ports", "retrieval": {"tenant": "t9", "mode": "lexical"}}
    )
    assert response.status_code == 200
    body = response.json()
    assert [h["chunk"]["source"] for h in body["hits"]] == ["faq.txt"]
    assert body["degraded"] is False and body["timings"][-1]["stage"] == "total"
    response = await gateway.rest.post("/v1/ingest", json={"documents": []})
    assert response.status_code == 400 and "documents" in response.json()["error"]["message"]


async def test_openapi_lists_the_routes(gateway: Gateway) -> None:
    response = await gateway.rest.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/v1/ask", "/v1/retrieve", "/v1/ingest", "/healthz"} <= set(paths)
    assert (await gateway.rest.get("/docs")).status_code == 200


async def test_healthz_reports_each_upstream(gateway: Gateway, fake_fleet: FakeFleet) -> None:
    response = await gateway.rest.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "SERVING",
        "upstreams": {"embedder": "SERVING", "retriever": "SERVING", "generator": "SERVING"},
    }
    service = "ragfleet.retriever.v1.RetrieverService"
    await fake_fleet.health.set(service, 2)  # NOT_SERVING
    try:
        response = await gateway.rest.get("/healthz")
    finally:
        await fake_fleet.health.set(service, 1)
    assert response.status_code == 503
    assert "NOT_SERVING" in response.json()["upstreams"]["retriever"]
    assert response.json()["upstreams"]["embedder"] == "SERVING"


# --- upstream not listening --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def gateway_without_retriever(fake_fleet: FakeFleet) -> AsyncIterator[Gateway]:
    addresses = {**fake_fleet.addresses, "retriever": f"127.0.0.1:{_free_port()}"}
    async for gw in start_gateway(addresses):
        yield gw


async def test_unreachable_upstream_is_unavailable_within_the_deadline(
    gateway_without_retriever: Gateway,
) -> None:
    gw = gateway_without_retriever
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in gw.stub.Ask(gateway_pb2.AskRequest(question="SIGTERM?"), timeout=3):
            pass
    assert time.perf_counter() - start < 3
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"retriever at {gw.settings.retriever_address}" in (info.value.details() or "")
    response = await gw.rest.post("/v1/retrieve", json={"query": "SIGTERM"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UNAVAILABLE"
    assert (await gw.rest.get("/healthz")).status_code == 503


async def test_unreachable_generator_gives_a_retrieval_only_answer(fake_fleet: FakeFleet) -> None:
    addresses = {**fake_fleet.addresses, "generator": f"127.0.0.1:{_free_port()}"}
    async for gw in start_gateway(addresses):
        events = [
            e async for e in gw.stub.Ask(gateway_pb2.AskRequest(question="SIGTERM?"), timeout=5)
        ]
        assert [e.WhichOneof("event") for e in events] == ["sources", "answer"]
        answer = events[-1].answer
        assert answer.degraded and "generator at 127.0.0.1:" in answer.degraded_reasons[0]
        assert "SIGTERM" in answer.text and answer.citations


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/retrieve", r'{"query": "drains \ud800"}', "query"),
        ("/v1/ask", r'{"question": "drains\u0000"}', "question"),
        ("/v1/retrieve", r'{"query": "x", "retrieval": {"tenant": "a\u0007"}}', "retrieval.tenant"),
        ("/v1/retrieve", r'{"query": "x", "retrieval": {"filter": {"k": "\udfff"}}}', "filter"),
        ("/v1/ingest", r'{"documents": [{"source": "s\u0000", "text": "t"}]}', "source"),
        ("/v1/ingest", r'{"documents": [{"source": "s", "text": "t \udfff"}]}', "text"),
        (
            "/v1/ingest",
            r'{"documents": [{"source": "s", "text": "t"}], "tenant": "\u0000"}',
            "tenant",
        ),
        ("/v1/ingest/jobs", r'{"source": "/data/\u0000x"}', "source"),
    ],
)
async def test_text_a_service_cannot_store_is_refused_at_the_edge(
    gateway: Gateway, path: str, body: str, field: str
) -> None:
    headers = {"content-type": "application/json"}
    reply = await gateway.rest.post(path, content=body, headers=headers)
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert field in message and "not allowed" in message, message
    # The same keep-alive connection still answers.
    assert (await gateway.rest.get("/healthz")).status_code == 200


async def test_error_messages_quote_a_bounded_prefix(gateway: Gateway) -> None:
    source = "x" * 50_000
    body = {"documents": [{"source": source, "text": "a"}, {"source": source, "text": "b"}]}
    reply = await gateway.rest.post("/v1/ingest", json=body)
    assert reply.status_code == 400
    assert len(reply.json()["error"]["message"]) < 300
