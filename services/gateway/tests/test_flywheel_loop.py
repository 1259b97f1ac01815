"""The data flywheel end to end: a gateway routes with a trained classifier and records its
answers; users rate the cheap model's answers to one kind of question poorly; `ragfleet
flywheel export` turns the ratings into router labels; `ragfleet train router` retrains on
them; the gateway restarted on the new model sends those questions to the strong model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragfleet.gateway.v1 import gateway_pb2

from .conftest import FakeFleet, Gateway, start_gateway

pytestmark = pytest.mark.integration

RAGFLEET = str(Path(sys.executable).parent / "ragfleet")

# Questions of two kinds the first router learns from: lookups the cheap model answers well,
# and design questions that need the strong one.
BASE = [
    {"question": f"What is the default {what} of the {service}?", "target": 1}
    for what in ("port", "timeout", "log level", "batch size", "replica count", "address")
    for service in ("embedder", "retriever", "generator", "gateway", "ingest job")
] + [
    {"question": f"Explain the trade-offs of {topic} compared with {other}", "target": 0}
    for topic in ("reciprocal rank fusion", "weighted fusion", "a cross-encoder")
    for other in ("BM25 alone", "dense search alone", "no reranking")
]
# What users ask and find the cheap model's answers wanting: they rate them 1.
DRAIN = [
    f"On SIGTERM, how are in-flight {what} drained during a rolling update?"
    for what in ("calls", "streams", "requests", "answers", "ingest jobs", "RPCs", "searches")
]
HELD_OUT = "During a rolling update, what happens to in-flight streams on SIGTERM?"


def ragfleet(*args: str) -> str:
    done = subprocess.run(
        [RAGFLEET, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


async def routes(gateway: Gateway, questions: list[str]) -> list[tuple[str, str]]:
    """(model chosen, answer id) per question, asked over gRPC."""
    chosen = []
    for question in questions:
        events = [e async for e in gateway.stub.Ask(gateway_pb2.AskRequest(question=question))]
        answer = events[-1].answer
        assert answer.route.policy == "classifier", answer
        chosen.append((answer.route.model, answer.answer_id))
    return chosen


async def test_ratings_retrain_the_router_and_change_its_choice(
    fake_fleet: FakeFleet, tmp_path: Path
) -> None:
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps(row) + "\n" for row in BASE))
    ragfleet("train", "router", "--data", str(base), "--out", str(tmp_path / "router-0.json"))
    store = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    settings = {
        "models": ["cheap", "strong"],
        "routing": "classifier",
        "routing_cheap_model": "cheap",
        "routing_strong_model": "strong",
        "feedback_store": store,
        "feedback_spool_dir": tmp_path / "spool",
    }

    async for gateway in start_gateway(
        fake_fleet.addresses, router_model_file=tmp_path / "router-0.json", **settings
    ):
        await gateway.rest.post(
            "/v1/ingest",
            json={"documents": [{"source": "ops.md", "text": "On SIGTERM the service drains."}]},
        )
        before = await routes(gateway, DRAIN)
        for model, answer_id in before:
            if model == "cheap":
                reply = await gateway.rest.post(
                    "/v1/feedback",
                    json={"answer_id": answer_id, "rating": 1, "comment": "did not say how"},
                )
                assert reply.status_code == 200, reply.text
        held_out_before = (await routes(gateway, [HELD_OUT]))[0][0]
    assert [m for m, _ in before].count("cheap") >= 5, before

    export = tmp_path / "export"
    ragfleet("flywheel", "export", "--store", store, "--out", str(export), "--cheap-model", "cheap")
    labels = [json.loads(line) for line in (export / "router.jsonl").read_text().splitlines()]
    assert len(labels) == [m for m, _ in before].count("cheap")
    assert {row["target"] for row in labels} == {0}
    ragfleet(
        "train", "router", "--data", str(base), "--data", str(export / "router.jsonl"),
        "--out", str(tmp_path / "router-1.json"),
    )  # fmt: skip

    async for gateway in start_gateway(
        fake_fleet.addresses, router_model_file=tmp_path / "router-1.json", **settings
    ):
        after = await routes(gateway, DRAIN)
        held_out_after = (await routes(gateway, [HELD_OUT]))[0][0]
    assert [m for m, _ in after].count("strong") >= 6, after
    assert (held_out_before, held_out_after) == ("cheap", "strong")
