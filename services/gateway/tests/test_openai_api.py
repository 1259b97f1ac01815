"""The OpenAI-compatible routes through the official ``openai`` client (sync, async, streaming)
against the real REST bridge (uvicorn on a free port) of the real gateway, in front of fake
upstreams served over real gRPC; conversations over gRPC and REST too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest

from ragfleet.common.v1 import common_pb2
from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.runtime.errors import Unavailable

from .conftest import FakeFleet, Gateway, start_gateway
from .test_integration import DOCUMENTS

pytestmark = pytest.mark.integration

ANSWER = "On SIGTERM it drains in-flight calls [1]."
QUESTION = {"role": "user", "content": "What happens on SIGTERM?"}


@pytest.fixture(scope="module")
async def gateway(fake_fleet: FakeFleet) -> AsyncIterator[Gateway]:
    """A gateway whose fallback chain has two models; the rule rewrites follow-ups (the fake
    generator answers every prompt alike)."""
    async for gw in start_gateway(
        fake_fleet.addresses, models=["small", "big"], rewrite_with_model=False
    ):
        await gw.stub.Ingest(gateway_pb2.IngestRequest(documents=DOCUMENTS), timeout=10)
        yield gw


def base_url(gateway: Gateway) -> str:
    return f"{str(gateway.rest.base_url).rstrip('/')}/v1"


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(gateway), api_key=gateway.key, max_retries=0)


@pytest.fixture(scope="module")
def async_client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(gateway), api_key=gateway.key, max_retries=0)


async def test_models_are_the_fallback_chain(async_client: openai.AsyncOpenAI) -> None:
    models = await async_client.models.list()
    assert [m.id for m in models.data] == ["small", "big"]
    assert all(m.owned_by == "ragfleet" and m.object == "model" for m in models.data)


async def test_sync_completion_with_citations_and_usage(
    client: openai.OpenAI, fake_fleet: FakeFleet
) -> None:
    # The sync client blocks: it runs in a thread while the server runs in this event loop.
    completion = await asyncio.to_thread(
        client.chat.completions.create,
        model="big",
        messages=[{"role": "system", "content": "Be brief."}, QUESTION],
        max_tokens=32,
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    assert completion.model == "big"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 2)
    assert completion.usage.total_tokens == 12
    extra: dict[str, Any] = completion.model_extra or {}
    assert extra["citations"][0]["source"] == "docs/operations.md"
    assert extra["sources"][0]["number"] == 1
    assert extra["rewrite"] is None and extra["history_trimmed"] == 0
    sent = fake_fleet.generator.requests[-1]
    assert sent.model == "big" and sent.max_tokens == 32
    # The client's system message is not used: the gateway's grounded prompt applies.
    assert "Be brief." not in str(sent.messages)


async def test_async_completion_of_a_follow_up_with_retrieval_options(
    async_client: openai.AsyncOpenAI, fake_fleet: FakeFleet
) -> None:
    completion = await async_client.chat.completions.create(
        model="small",
        messages=[
            QUESTION,
            {"role": "assistant", "content": ANSWER},
            {"role": "user", "content": "How long does it last?"},
        ],
        extra_body={"retrieval": {"top_k": 1, "mode": "lexical"}},
    )
    extra: dict[str, Any] = completion.model_extra or {}
    assert extra["rewrite"] == {
        "query": "What happens on SIGTERM? How long does it last?",
        "method": "rule",
        "reason": "model rewrite is switched off",
    }
    assert len(extra["sources"]) == 1
    assert extra["sources"][0]["hit"]["chunk"]["source"] == "docs/operations.md"
    sent = fake_fleet.generator.requests[-1]
    assert [m.role for m in sent.messages] == ["system", "user", "assistant", "user"]


async def test_a_tenant_with_nothing_indexed_declines(async_client: openai.AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(
        model="small",
        messages=[QUESTION],
        extra_body={"retrieval": {"tenant": "nobody"}},
    )
    assert completion.choices[0].message.content == "The documents do not say."
    assert (completion.model_extra or {})["citations"] == []


async def test_streaming_sends_chunks_then_usage(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model="small",
        messages=[QUESTION],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first, *middle, final, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert (first.model_extra or {})["sources"][0]["number"] == 1
    text = "".join(c.choices[0].delta.content or "" for c in [first, *middle, final])
    assert text == ANSWER
    assert final.choices[0].finish_reason == "stop"
    assert (final.model_extra or {})["citations"][0]["number"] == 1
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.total_tokens == 12


async def test_sync_streaming_ends_with_the_finish_reason(client: openai.OpenAI) -> None:
    def run() -> list[Any]:
        with client.chat.completions.create(
            model="small",
            messages=[QUESTION],
            stream=True,
        ) as stream:
            return list(stream)

    chunks = await asyncio.to_thread(run)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_an_unknown_model_is_404_listing_the_models(
    async_client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await async_client.chat.completions.create(model="gpt-4o", messages=[QUESTION])
    body: Any = info.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert body["type"] == "invalid_request_error"
    assert "small, big" in body["message"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [QUESTION, {"role": "assistant", "content": "x"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "a\x00"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, "messages[0].content"),
        ({"messages": [{"role": "bot", "content": "x"}, QUESTION]}, "messages[0].role"),
        (
            {"messages": [{"role": "tool", "content": "42", "tool_call_id": "1"}, QUESTION]},
            "messages[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"content": "x"}]}, "messages.0.role"),
        ({"messages": [QUESTION] * 70}, "messages"),
        ({"messages": [QUESTION], "n": 2}, "n"),
        (
            {
                "messages": [QUESTION],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tools",
        ),
        ({"messages": [QUESTION], "tool_choice": "auto"}, "tool_choice"),
        ({"messages": [QUESTION], "stop": ["\n"]}, "stop"),
        ({"messages": [QUESTION], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [QUESTION], "max_tokens": 0}, "max_tokens"),
        ({"messages": [QUESTION], "temperature": 3}, "temperature"),
        ({"messages": [QUESTION], "extra_body": {"retrieval": {"top_k": 99}}}, "retrieval.top_k"),
        ({"messages": [QUESTION], "extra_body": {"frobnicate": 1}}, "frobnicate"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    async_client: openai.AsyncOpenAI, kwargs: dict[str, Any], param: str
) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            await async_client.chat.completions.create(model="small", stream=stream, **kwargs)
        body: Any = info.value.body
        assert info.value.status_code == 400
        assert body["param"] == param, body
        assert body["type"] == "invalid_request_error"


async def test_stream_options_need_stream(async_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await async_client.chat.completions.create(
            model="small",
            messages=[QUESTION],
            stream_options={"include_usage": True},
        )
    assert (info.value.body or {})["param"] == "stream_options"


@pytest.mark.parametrize(
    "raw",
    [
        r'{"model": "small", "messages": [{"role": "user", "content": "drains \ud800"}]}',
        r'{"model": "small", "messages": [{"role": "user", "content": "\udfff"}, '
        r'{"role": "user", "content": "q"}]}',
        '{"model": "small", "messages": [',
        '{"model": "small", "messages": "hello"}',
    ],
)
async def test_text_no_service_can_carry_is_400(gateway: Gateway, raw: str) -> None:
    reply = await gateway.rest.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_body_that_is_not_utf8_is_400(gateway: Gateway) -> None:
    """FastAPI refuses a body it cannot decode with its own HTTPException, which these routes
    answered as 500 (found by tests/fuzz)."""
    reply = await gateway.rest.post(
        "/v1/chat/completions", content=b"\xff=D\xff3", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (
        "body",
        "invalid_argument",
        "invalid_request_error",
    )


async def test_the_default_chain_lists_one_model(fake_fleet: FakeFleet) -> None:
    async for gw in start_gateway(fake_fleet.addresses):
        client = openai.AsyncOpenAI(base_url=base_url(gw), api_key=gw.key, max_retries=0)
        assert [m.id for m in (await client.models.list()).data] == ["ragfleet"]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="small", messages=[QUESTION])


async def test_the_existing_rest_routes_keep_their_error_shape(gateway: Gateway) -> None:
    reply = await gateway.rest.post("/v1/ask", json={"question": ""})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert {"/v1/chat/completions", "/v1/models", "/v1/ask"} <= set(
        (await gateway.rest.get("/openapi.json")).json()["paths"]
    )


# --- conversations over gRPC and REST ------------------------------------------------------
async def test_grpc_ask_with_history_sends_the_rewrite_first(gateway: Gateway) -> None:
    request = gateway_pb2.AskRequest(
        question="How long does it last?",
        history=[
            common_pb2.ChatMessage(role="user", content="What happens on SIGTERM?"),
            common_pb2.ChatMessage(role="assistant", content=ANSWER),
        ],
    )
    events = [e async for e in gateway.stub.Ask(request, timeout=10)]
    assert [e.WhichOneof("event") for e in events][:2] == ["rewrite", "sources"]
    rewrite = events[0].rewrite
    assert rewrite.method == gateway_pb2.REWRITE_METHOD_RULE
    assert rewrite.query == "What happens on SIGTERM? How long does it last?"
    assert events[-1].answer.history_trimmed == 0


async def test_grpc_bad_history_is_invalid_argument(gateway: Gateway) -> None:
    request = gateway_pb2.AskRequest(
        question="And it?", history=[common_pb2.ChatMessage(role="system", content="x")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in gateway.stub.Ask(request, timeout=5):
            pass
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "history[0].role" in (info.value.details() or "")


async def test_rest_ask_with_history_over_budget_says_what_was_trimmed(
    fake_fleet: FakeFleet,
) -> None:
    async for gw in start_gateway(
        fake_fleet.addresses, history_budget_chars=50, rewrite_with_model=True
    ):
        history = [
            {"role": "user", "content": "What happens on SIGTERM?"},
            {"role": "assistant", "content": ANSWER},
        ]
        body = {"question": "How long does it last?", "history": history}
        reply = await gw.rest.post("/v1/ask", json=body)
        assert reply.status_code == 200, reply.text
        out = reply.json()
        # The fake generator answers the rewrite prompt with its one answer.
        assert out["rewrite"] == {"query": ANSWER, "method": "model", "reason": ""}
        assert out["answer"]["history_trimmed"] == 1
        names = []
        async with gw.rest.stream("POST", "/v1/ask", json={**body, "stream": True}) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    names.append(line.removeprefix("event: "))
        assert names[:2] == ["rewrite", "sources"] and names[-1] == "answer"


async def test_a_model_failing_mid_stream_sends_restart_chunks(fake_fleet: FakeFleet) -> None:
    core = fake_fleet.generator.core
    async for gw in start_gateway(fake_fleet.addresses, models=["small", "big"]):
        await gw.stub.Ingest(gateway_pb2.IngestRequest(documents=DOCUMENTS), timeout=10)
        client = openai.AsyncOpenAI(base_url=base_url(gw), api_key=gw.key, max_retries=0)
        core.error, core.fail_after = Unavailable("engine died"), 1
        try:
            stream = await client.chat.completions.create(
                model="small", messages=[QUESTION], stream=True
            )
            chunks = [chunk async for chunk in stream]
        finally:
            core.error, core.fail_after = None, 0
        restarts = [(c.model_extra or {}).get("restart") for c in chunks]
        assert [r["model"] for r in restarts if r] == ["small", "big"]
        # After the last restart, the content is the retrieval-only answer, sent whole.
        final = chunks[-1]
        assert final.choices[0].finish_reason == "stop"
        assert (final.choices[0].delta.content or "").startswith("No generated answer")
