"""Answer and feedback records (``ragfleet.flywheel.records``): the checks feedback must pass and
the JSON form the spool keeps."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from tests.flywheel_contract import make_answer, make_feedback

from ragfleet.flywheel.records import (
    MAX_FEEDBACK_TEXT,
    AnswerRecord,
    check_answer,
    check_feedback,
)
from ragfleet.runtime.errors import InvalidInput

pytestmark = pytest.mark.unit


def test_good_feedback_passes() -> None:
    check_feedback(make_feedback(make_answer(), 3, comment="ok", correction="x" * 4000))


@pytest.mark.parametrize(
    ("change", "field", "hint"),
    [
        ({"rating": 0}, "rating", "from 1 to 5"),
        ({"rating": 6}, "rating", "from 1 to 5"),
        ({"rating": True}, "rating", "whole number"),
        ({"rating": 4.5}, "rating", "whole number"),
        ({"comment": "x" * (MAX_FEEDBACK_TEXT + 1)}, "comment", "at most 4000 characters"),
        ({"correction": "y" * (MAX_FEEDBACK_TEXT + 1)}, "correction", "at most 4000"),
        ({"comment": "a\x00b"}, "comment", "NUL"),
        ({"correction": "bad \ud800 half"}, "correction", "lone surrogate"),
        ({"answer_id": "not-an-id"}, "answer_id", "32 lowercase hex digits"),
        ({"answer_id": uuid.uuid4().hex.upper()}, "answer_id", "32 lowercase hex digits"),
        ({"answer_id": str(uuid.uuid4())}, "answer_id", "32 lowercase hex digits"),
    ],
)
def test_bad_feedback_names_the_field_and_the_fix(
    change: dict[str, object], field: str, hint: str
) -> None:
    feedback = dataclasses.replace(make_feedback(make_answer()), **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as caught:
        check_feedback(feedback)
    assert caught.value.message.startswith(f"{field}:")
    assert hint in caught.value.message


def test_naive_feedback_time_is_refused() -> None:
    feedback = make_feedback(make_answer())
    naive = dataclasses.replace(feedback, created_at=feedback.created_at.replace(tzinfo=None))
    with pytest.raises(InvalidInput, match="created_at: must be a timezone-aware"):
        check_feedback(naive)


def test_an_answer_round_trips_through_json() -> None:
    record = make_answer(question="¿Garantía? 🛠", route="cascade: escalated: declined")
    line = json.dumps(record.to_json(), ensure_ascii=True)
    assert AnswerRecord.from_json(json.loads(line)) == record


def test_a_lone_surrogate_survives_json_but_is_refused_when_read() -> None:
    line = json.dumps(make_answer(question="half \ud83d").to_json(), ensure_ascii=True)
    with pytest.raises(InvalidInput, match="question: not valid Unicode text"):
        AnswerRecord.from_json(json.loads(line))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("question"),
        lambda d: d.update(created_at="2026-03-01T12:00:00"),
        lambda d: d.update(sources=[{"number": 1}]),
        lambda d: d.update(answer_id="short"),
    ],
)
def test_a_malformed_json_record_is_invalid_input(damage: object) -> None:
    data = make_answer().to_json()
    damage(data)  # type: ignore[operator]
    with pytest.raises(InvalidInput):
        AnswerRecord.from_json(data)


def test_check_answer_refuses_what_no_store_can_keep() -> None:
    record = make_answer()
    with pytest.raises(InvalidInput, match=r"sources\[0\].score: must be finite"):
        bad_source = dataclasses.replace(record.sources[0], score=float("nan"))
        check_answer(dataclasses.replace(record, sources=[bad_source]))
    with pytest.raises(InvalidInput, match=r"history\[0\].content"):
        check_answer(dataclasses.replace(record, history=[{"role": "user", "content": "\x00"}]))
    with pytest.raises(InvalidInput, match="timings_ms"):
        check_answer(dataclasses.replace(record, timings_ms={"generate": float("inf")}))
