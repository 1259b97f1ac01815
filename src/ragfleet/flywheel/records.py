"""What the flywheel keeps: one ``AnswerRecord`` per answer given, any number of ``Feedback`` rows
per answer. Records are plain frozen dataclasses; ``to_json``/``from_json`` give the JSON form
the spool and the stores' JSON columns use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ragfleet.runtime.errors import InvalidInput

MAX_FEEDBACK_TEXT = 4000
"""Characters of a feedback comment or correction: room for a full corrected answer."""
MIN_RATING, MAX_RATING = 1, 5
_ANSWER_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A passage the model was shown, numbered as the answer cites it."""

    number: int
    chunk_id: str
    source: str
    title: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """One answer as the user saw it, with what it was made from."""

    answer_id: str
    tenant: str
    created_at: datetime
    """UTC, timezone-aware."""
    question: str
    history: list[dict[str, str]]
    """Earlier turns of the conversation: ``{"role", "content"}`` each."""
    answer: str
    answered: bool
    """False when nothing relevant was retrieved or the model declined."""
    model: str
    route: str
    """``"policy: reason"`` (e.g. ``"cascade: escalated: declined"``); "" without a router."""
    sources: list[SourceRecord]
    cited: list[int]
    """The numbers of the sources the answer cites."""
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    """None when the gateway has no price table."""
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "answer_id": self.answer_id,
            "tenant": self.tenant,
            "created_at": self.created_at.isoformat(),
            "question": self.question,
            "history": [dict(turn) for turn in self.history],
            "answer": self.answer,
            "answered": self.answered,
            "model": self.model,
            "route": self.route,
            "sources": [source_to_json(s) for s in self.sources],
            "cited": list(self.cited),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "timings_ms": dict(self.timings_ms),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnswerRecord:
        """The inverse of ``to_json``. Raises ``InvalidInput`` naming what is missing or of the
        wrong type (a spool line written by another version, say)."""
        try:
            cost = data["cost_usd"]
            record = cls(
                answer_id=str(data["answer_id"]),
                tenant=str(data["tenant"]),
                created_at=parse_time(data["created_at"]),
                question=str(data["question"]),
                history=[
                    {"role": str(t["role"]), "content": str(t["content"])} for t in data["history"]
                ],
                answer=str(data["answer"]),
                answered=bool(data["answered"]),
                model=str(data["model"]),
                route=str(data["route"]),
                sources=[source_from_json(s) for s in data["sources"]],
                cited=[int(n) for n in data["cited"]],
                prompt_tokens=int(data["prompt_tokens"]),
                completion_tokens=int(data["completion_tokens"]),
                cost_usd=None if cost is None else float(cost),
                timings_ms={str(k): float(v) for k, v in dict(data["timings_ms"]).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"answer record: malformed ({type(exc).__name__}: {exc})") from None
        check_answer(record)
        return record


@dataclass(frozen=True, slots=True)
class Feedback:
    """A user's rating of one answer, with an optional comment and corrected answer."""

    feedback_id: str
    answer_id: str
    tenant: str
    created_at: datetime
    rating: int
    """1 (wrong or useless) to 5 (right and complete)."""
    comment: str = ""
    correction: str = ""
    """The answer the user says is right; the no-answer text when the documents do not say."""


def source_to_json(source: SourceRecord) -> dict[str, Any]:
    return {
        "number": source.number,
        "chunk_id": source.chunk_id,
        "source": source.source,
        "title": source.title,
        "text": source.text,
        "score": source.score,
    }


def source_from_json(data: Mapping[str, Any]) -> SourceRecord:
    return SourceRecord(
        number=int(data["number"]),
        chunk_id=str(data["chunk_id"]),
        source=str(data["source"]),
        title=str(data["title"]),
        text=str(data["text"]),
        score=float(data["score"]),
    )


def parse_time(value: object) -> datetime:
    """An ISO 8601 timestamp with its offset (or a ``datetime``), as an aware datetime."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no UTC offset")
    return parsed


def check_answer_id(answer_id: str, name: str = "answer_id") -> None:
    """Raises ``InvalidInput`` unless ``answer_id`` is 32 lowercase hex digits (a UUID4's hex)."""
    if not isinstance(answer_id, str) or not _ANSWER_ID.fullmatch(answer_id):
        raise InvalidInput(
            f"{name}: must be the 32 lowercase hex digits of an answer's answer_id, "
            f"got {answer_id!r:.60}"
        )


def check_time(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{name}: must be a timezone-aware datetime (UTC), got {value!r}")


def check_text(value: str, name: str, limit: int | None = None) -> None:
    """Raises ``InvalidInput`` when ``value`` is not a string, is longer than ``limit``
    characters, holds a NUL (PostgreSQL text cannot) or does not encode to UTF-8 (a lone
    surrogate from a broken client)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: must be text, got {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise InvalidInput(
            f"{name}: at most {limit} characters, got {len(value)}; shorten it or split it"
        )
    if "\x00" in value:
        raise InvalidInput(f"{name}: must not contain NUL characters (\\x00)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{name}: not valid Unicode text (a lone surrogate at character {exc.start}); "
            "send UTF-8"
        ) from None


def check_feedback(feedback: Feedback) -> None:
    """Raises ``InvalidInput`` naming the first field at fault and what would be accepted:
    rating 1..5, comment and correction at most ``MAX_FEEDBACK_TEXT`` characters of valid text
    without NUL, answer_id a 32-hex-digit id."""
    check_answer_id(feedback.answer_id)
    rating = feedback.rating
    if isinstance(rating, bool) or not isinstance(rating, int):
        raise InvalidInput(f"rating: must be a whole number from 1 to 5, got {rating!r}")
    if not MIN_RATING <= rating <= MAX_RATING:
        raise InvalidInput(f"rating: must be from {MIN_RATING} to {MAX_RATING}, got {rating}")
    check_text(feedback.comment, "comment", MAX_FEEDBACK_TEXT)
    check_text(feedback.correction, "correction", MAX_FEEDBACK_TEXT)
    check_text(feedback.feedback_id, "feedback_id")
    if not feedback.feedback_id:
        raise InvalidInput("feedback_id: must not be empty")
    check_text(feedback.tenant, "tenant")
    check_time(feedback.created_at, "created_at")


def check_answer(record: AnswerRecord) -> None:
    """Raises ``InvalidInput`` for a record no store could keep: a malformed id, a naive
    timestamp, text with NUL or lone surrogates, a non-finite score or cost."""
    check_answer_id(record.answer_id)
    check_time(record.created_at, "created_at")
    texts = {"tenant": record.tenant, "question": record.question, "answer": record.answer}
    texts |= {"model": record.model, "route": record.route}
    for position, turn in enumerate(record.history):
        texts |= {f"history[{position}].{k}": v for k, v in turn.items()}
    for position, source in enumerate(record.sources):
        texts |= {
            f"sources[{position}].{k}": getattr(source, k)
            for k in ("chunk_id", "source", "title", "text")
        }
        if not math.isfinite(source.score):
            raise InvalidInput(f"sources[{position}].score: must be finite, got {source.score}")
    for name, value in texts.items():
        check_text(value, name)
    for stage, ms in record.timings_ms.items():
        if not math.isfinite(ms):
            raise InvalidInput(f"timings_ms[{stage!r}]: must be finite, got {ms}")
    if record.cost_usd is not None and not math.isfinite(record.cost_usd):
        raise InvalidInput(f"cost_usd: must be finite or None, got {record.cost_usd}")
