"""Answer records and feedback through the gateway: ids in answers, the Feedback RPC and
POST /v1/feedback, tenants kept apart, bad input refused, and a store outage that loses
nothing."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from ragfleet.flywheel.recorder import SpooledRecorder
from ragfleet.flywheel.sqlite_store import SqliteStore
from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import NotFound, Unavailable
from ragfleet_gateway.auth import Role, add_key, new_key
from ragfleet_gateway.domain import AnswerEvent, AskRequest, Document, FeedbackRequest
from ragfleet_gateway.fakes import FakeEmbedder, FakeGenerator, FakeRetriever
from ragfleet_gateway.feedback import FeedbackDesk
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.settings import GatewaySettings

from .conftest import FakeFleet, Gateway, start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def recording(fake_fleet: FakeFleet) -> AsyncIterator[tuple[Gateway, Path]]:
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "feedback.sqlite3"
        async for gateway in start_gateway(
            fake_fleet.addresses,
            feedback_store=f"sqlite:///{store}",
            feedback_spool_dir=Path(folder) / "spool",
        ):
            reply = await gateway.rest.post(
                "/v1/ingest",
                json={
                    "documents": [
                        {"source": "ops.md", "text": "On SIGTERM the service drains calls."}
                    ]
                },
            )
            assert reply.status_code == 200, reply.text
            yield gateway, store


async def rest_answer(client: httpx.AsyncClient) -> dict[str, object]:
    reply = await client.post("/v1/ask", json={"question": "What happens on SIGTERM?"})
    assert reply.status_code == 200, reply.text
    answer: dict[str, object] = reply.json()["answer"]
    return answer


async def test_an_answer_rated_over_rest_is_kept_with_its_rating(
    recording: tuple[Gateway, Path],
) -> None:
    gateway, path = recording
    answer = await rest_answer(gateway.rest)
    answer_id = answer["answer_id"]
    assert isinstance(answer_id, str) and len(answer_id) == 32
    assert answer["route"] == {
        "policy": "none",
        "model": "",
        "reason": "",
        "score": None,
        "escalated": False,
    }
    reply = await gateway.rest.post(
        "/v1/feedback",
        json={"answer_id": answer_id, "rating": 2, "correction": "It drains for 10 s."},
    )
    assert reply.status_code == 200, reply.text
    store = SqliteStore(path)
    try:
        [(record, [feedback])] = [
            (r, f) for r, f in await store.export("default") if r.answer_id == answer_id
        ]
    finally:
        await store.close()
    assert record.question == "What happens on SIGTERM?" and record.tenant == "default"
    assert record.answer == answer["text"] and record.sources and record.cited == [1]
    assert (feedback.rating, feedback.correction) == (2, "It drains for 10 s.")
    assert feedback.feedback_id == reply.json()["feedback_id"]


async def test_an_answer_rated_over_grpc(recording: tuple[Gateway, Path]) -> None:
    gateway, _ = recording
    events = [e async for e in gateway.stub.Ask(gateway_pb2.AskRequest(question="SIGTERM?"))]
    answer = events[-1].answer
    assert len(answer.answer_id) == 32 and answer.route.policy == "none"
    reply = await gateway.stub.Feedback(
        gateway_pb2.FeedbackRequest(answer_id=answer.answer_id, rating=5, comment="right")
    )
    assert len(reply.feedback_id) == 32


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"answer_id": "0" * 32, "rating": 3}, 404, "answer_id"),
        ({"answer_id": "nope", "rating": 3}, 400, "answer_id"),
        ({"rating": 0}, 400, "rating"),
        ({"rating": 6}, 400, "rating"),
        ({"rating": 3, "comment": "x" * 4001}, 400, "comment"),
        ({"rating": 3, "comment": "a\x00b"}, 400, "comment"),
        ({"rating": 3, "correction": "\ud800"}, 400, "correction"),
        ({"rating": 3, "extra": 1}, 400, "extra"),
    ],
)
async def test_bad_feedback_is_refused_naming_the_field(
    recording: tuple[Gateway, Path], body: dict[str, object], status: int, message: str
) -> None:
    gateway, _ = recording
    answer = await rest_answer(gateway.rest)
    payload = {"answer_id": answer["answer_id"], **body}
    # json.dumps escapes a lone surrogate (\ud800) as JSON allows; the body is valid JSON.
    reply = await gateway.rest.post(
        "/v1/feedback", content=json.dumps(payload), headers={"content-type": "application/json"}
    )
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]["message"]


async def test_another_tenants_answer_is_not_found(recording: tuple[Gateway, Path]) -> None:
    gateway, _ = recording
    answer = await rest_answer(gateway.rest)
    other, entry = new_key("other", frozenset({Role.QUERY}))
    assert gateway.settings.api_keys_file is not None
    add_key(gateway.settings.api_keys_file, entry)
    reply = await gateway.rest.post(
        "/v1/feedback",
        json={"answer_id": answer["answer_id"], "rating": 1},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert reply.status_code == 404, reply.text
    # The same words as for an id nobody was given: nothing tells the tenants' answers apart.
    unknown = await gateway.rest.post("/v1/feedback", json={"answer_id": "f" * 32, "rating": 1})
    assert (
        reply.json()["error"]["message"].replace(str(answer["answer_id"]), "f" * 32)
        == (unknown.json()["error"]["message"])
    )


async def test_a_gateway_that_records_nothing_refuses_feedback(gateway: Gateway) -> None:
    answer = await rest_answer(gateway.rest)
    assert answer["answer_id"] == ""
    reply = await gateway.rest.post("/v1/feedback", json={"answer_id": "0" * 32, "rating": 3})
    assert reply.status_code == 409 and "FEEDBACK_STORE" in reply.json()["error"]["message"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Feedback(gateway_pb2.FeedbackRequest(answer_id="0" * 32, rating=3))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


class FlakyStore(SqliteStore):
    """A SQLite store that can be switched off: every call then fails as a dead server's."""

    down = False

    async def record(self, answer: object) -> None:  # type: ignore[override]
        if self.down:
            raise Unavailable(f"{self.name}: connection refused")
        await super().record(answer)  # type: ignore[arg-type]

    async def add_feedback(self, feedback: object) -> None:  # type: ignore[override]
        if self.down:
            raise Unavailable(f"{self.name}: connection refused")
        await super().add_feedback(feedback)  # type: ignore[arg-type]


async def test_with_the_store_down_answers_flow_feedback_fails_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    store = FlakyStore(tmp_path / "feedback.sqlite3")
    recorder = SpooledRecorder(store, tmp_path / "spool", retry_initial_s=0.01, retry_max_s=0.05)
    desk = FeedbackDesk(store, recorder)
    pipeline = RagPipeline(
        GatewaySettings(),
        FakeEmbedder(),
        FakeRetriever(),
        FakeGenerator(),
        feedback=desk,
    )
    await pipeline.ingest(
        [Document(source="ops.md", text="On SIGTERM the service drains in-flight calls.")],
        "",
        Deadline.after(10),
    )
    await desk.start()
    store.down = True
    ids = []
    for _ in range(3):
        events = [e async for e in pipeline.ask(AskRequest("SIGTERM?"), Deadline.after(10))]
        assert isinstance(events[-1], AnswerEvent) and events[-1].answer.answered
        ids.append(events[-1].answer.answer_id)
    with pytest.raises(Unavailable, match="connection refused"):
        await pipeline.feedback("", FeedbackRequest(ids[0], 4))
    assert recorder.spooled() == 3
    store.down = False
    feedback_id = await pipeline.feedback("", FeedbackRequest(ids[0], 4))
    assert len(feedback_id) == 32 and recorder.spooled() == 0
    for answer_id in ids:
        assert (await store.get_answer("", answer_id)).answer_id == answer_id
    with pytest.raises(NotFound):
        await pipeline.feedback("", FeedbackRequest("a" * 32, 4))
    await desk.close()
