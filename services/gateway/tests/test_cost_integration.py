"""What an answer cost, through the gateway's real gRPC and REST front ends, with a fallback:
the first model dies mid-answer on its own generator server, the second answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc

from .conftest import FakeFleet, Gateway, start_gateway

pytestmark = pytest.mark.integration

# small: an API model; big: self-hosted at 3.6 USD an hour (0.001 USD a second), so a prompt
# token costs 1e-5 USD and a completion token 1e-4 USD.
PRICES = {
    "small": {"input_usd_per_million": 1.0, "output_usd_per_million": 4.0},
    "big": {"hourly_usd": 3.6, "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0},
}
SMALL_COST = 2 * 4.0 / 1e6  # two tokens streamed before it died; its prompt is not reported
BIG_COST = 10 * 1e-5 + 2 * 1e-4  # the fake generator's usage: 10 prompt, 2 completion tokens


class DyingGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """Streams two tokens, then fails as a generator whose replica died."""

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        for text in ("It ", "is "):
            yield generator_pb2.GenerateResponse(token=generator_pb2.TokenDelta(text=text))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "replica died")


@pytest.fixture(scope="module")
async def priced(fake_fleet: FakeFleet) -> AsyncIterator[Gateway]:
    server = grpc.aio.server()
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(DyingGenerator(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    models = [{"name": "small", "address": f"127.0.0.1:{port}"}, "big"]
    async for gw in start_gateway(
        fake_fleet.addresses, models=models, prices=PRICES, rewrite_with_model=False
    ):
        await gw.stub.Ingest(
            gateway_pb2.IngestRequest(
                documents=[
                    gateway_pb2.Document(
                        source="ops.md", text="On SIGTERM the service drains in-flight calls."
                    )
                ]
            ),
            timeout=10,
        )
        yield gw
    await server.stop(0)


async def test_grpc_answer_carries_each_attempts_cost(priced: Gateway) -> None:
    before = REGISTRY.get_sample_value("ragfleet_gateway_cost_usd_total", {"model": "small"}) or 0
    events = [
        e async for e in priced.stub.Ask(gateway_pb2.AskRequest(question="SIGTERM?"), timeout=10)
    ]
    assert "restart" in [e.WhichOneof("event") for e in events]
    answer = events[-1].answer
    assert answer.model == "big"
    small, big = answer.attempts
    assert (small.model, small.outcome) == ("small", gateway_pb2.ATTEMPT_OUTCOME_FAILED)
    assert (small.prompt_tokens, small.completion_tokens) == (0, 2)
    assert small.cost_usd == pytest.approx(SMALL_COST)
    assert (big.prompt_tokens, big.completion_tokens) == (10, 2)
    assert big.cost_usd == pytest.approx(BIG_COST)
    assert answer.HasField("cost_usd") and answer.cost_usd == pytest.approx(SMALL_COST + BIG_COST)
    after = REGISTRY.get_sample_value("ragfleet_gateway_cost_usd_total", {"model": "small"})
    assert after == pytest.approx(before + SMALL_COST)


async def test_rest_and_openai_answers_carry_the_cost(priced: Gateway) -> None:
    response = await priced.rest.post("/v1/ask", json={"question": "SIGTERM?"})
    assert response.status_code == 200, response.text
    answer = response.json()["answer"]
    assert answer["cost_usd"] == pytest.approx(SMALL_COST + BIG_COST)
    assert [a["cost_usd"] for a in answer["attempts"]] == pytest.approx([SMALL_COST, BIG_COST])
    assert [a["completion_tokens"] for a in answer["attempts"]] == [2, 2]

    response = await priced.rest.post(
        "/v1/chat/completions",
        json={"model": "small", "messages": [{"role": "user", "content": "SIGTERM?"}]},
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["cost_usd"] == pytest.approx(SMALL_COST + BIG_COST)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (10, 2)


async def test_without_a_price_table_the_cost_is_absent(gateway: Gateway) -> None:
    await gateway.stub.Ingest(
        gateway_pb2.IngestRequest(
            documents=[gateway_pb2.Document(source="ops.md", text="SIGTERM drains calls.")]
        ),
        timeout=10,
    )
    events = [
        e async for e in gateway.stub.Ask(gateway_pb2.AskRequest(question="SIGTERM?"), timeout=10)
    ]
    answer = events[-1].answer
    assert not answer.HasField("cost_usd")
    assert not answer.attempts[0].HasField("cost_usd") and answer.attempts[0].prompt_tokens == 10
    body = json.loads((await gateway.rest.post("/v1/ask", json={"question": "SIGTERM?"})).text)
    assert body["answer"]["cost_usd"] is None
