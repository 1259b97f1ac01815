"""The ``FeedbackStore`` contract, shared by every backend's tests: a test module subclasses
``StoreContract`` and provides a ``store`` fixture yielding a fresh, empty store.

Also the record builders the flywheel's tests use.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ragfleet.flywheel.records import AnswerRecord, Feedback, SourceRecord
from ragfleet.flywheel.store import FeedbackStore
from ragfleet.runtime.errors import InvalidInput, NotFound

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_answer(
    tenant: str = "acme",
    *,
    created_at: datetime = T0,
    question: str = "How long is the warranty?",
    answer: str = "Two years [1].",
    answered: bool = True,
    model: str = "qwen-small",
    route: str = "",
    cited: tuple[int, ...] = (1,),
    chunks: tuple[str, ...] = ("warranty#0", "returns#2"),
) -> AnswerRecord:
    return AnswerRecord(
        answer_id=uuid.uuid4().hex,
        tenant=tenant,
        created_at=created_at,
        question=question,
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}],
        answer=answer,
        answered=answered,
        model=model,
        route=route,
        sources=[
            SourceRecord(
                number=number,
                chunk_id=chunk,
                source=f"{chunk.split('#')[0]}.md",
                title=chunk.split("#")[0].title(),
                text=f"Text of {chunk}: the warranty lasts two years. Über-naïve ✓",
                score=1.0 / number,
            )
            for number, chunk in enumerate(chunks, start=1)
        ],
        cited=list(cited),
        prompt_tokens=321,
        completion_tokens=12,
        cost_usd=0.00042,
        timings_ms={"retrieve": 12.5, "generate": 800.0},
    )


def make_feedback(
    answer: AnswerRecord,
    rating: int = 5,
    *,
    tenant: str | None = None,
    comment: str = "",
    correction: str = "",
    created_at: datetime | None = None,
) -> Feedback:
    return Feedback(
        feedback_id=uuid.uuid4().hex,
        answer_id=answer.answer_id,
        tenant=answer.tenant if tenant is None else tenant,
        created_at=created_at or answer.created_at + timedelta(minutes=5),
        rating=rating,
        comment=comment,
        correction=correction,
    )


class StoreContract:
    """What every ``FeedbackStore`` must do; the subclass's ``store`` fixture picks the backend."""

    async def test_an_answer_reads_back_as_it_was_recorded(self, store: FeedbackStore) -> None:
        recorded = make_answer(question="Wie lange gilt die Garantie? 保証", route="cascade: ok")
        await store.record(recorded)
        assert await store.get_answer("acme", recorded.answer_id) == recorded

    async def test_timestamps_keep_their_instant_in_any_offset(self, store: FeedbackStore) -> None:
        local = T0.astimezone(timezone(timedelta(hours=-5)))
        recorded = make_answer(created_at=local)
        await store.record(recorded)
        read = await store.get_answer("acme", recorded.answer_id)
        assert read.created_at == T0
        assert read.created_at.utcoffset() == timedelta(0)

    async def test_a_cost_may_be_unknown(self, store: FeedbackStore) -> None:
        recorded = make_answer()
        recorded = AnswerRecord(**{**_fields(recorded), "cost_usd": None, "sources": []})
        await store.record(recorded)
        assert await store.get_answer("acme", recorded.answer_id) == recorded

    async def test_recording_twice_keeps_the_first(self, store: FeedbackStore) -> None:
        first = make_answer()
        await store.record(first)
        await store.record(AnswerRecord(**{**_fields(first), "answer": "changed"}))
        assert (await store.get_answer("acme", first.answer_id)).answer == first.answer

    async def test_an_invalid_record_is_refused(self, store: FeedbackStore) -> None:
        with pytest.raises(InvalidInput, match="question"):
            await store.record(make_answer(question="nul \x00 inside"))

    async def test_another_tenants_answer_looks_unknown(self, store: FeedbackStore) -> None:
        theirs = make_answer(tenant="globex")
        await store.record(theirs)
        unknown = uuid.uuid4().hex
        with pytest.raises(NotFound) as foreign:
            await store.get_answer("acme", theirs.answer_id)
        with pytest.raises(NotFound) as missing:
            await store.get_answer("acme", unknown)
        assert _masked(foreign.value, theirs.answer_id) == _masked(missing.value, unknown)

    async def test_feedback_on_another_tenants_answer_looks_unknown(
        self, store: FeedbackStore
    ) -> None:
        theirs = make_answer(tenant="globex")
        await store.record(theirs)
        with pytest.raises(NotFound) as foreign:
            await store.add_feedback(make_feedback(theirs, tenant="acme"))
        ghost = make_answer()
        with pytest.raises(NotFound) as missing:
            await store.add_feedback(make_feedback(ghost))
        assert _masked(foreign.value, theirs.answer_id) == _masked(missing.value, ghost.answer_id)
        assert await store.export() == []

    async def test_invalid_feedback_is_refused_and_changes_nothing(
        self, store: FeedbackStore
    ) -> None:
        answer = make_answer()
        await store.record(answer)
        with pytest.raises(InvalidInput, match="rating"):
            await store.add_feedback(make_feedback(answer, rating=9))
        assert await store.export() == []

    async def test_export_has_the_answers_with_feedback_oldest_first(
        self, store: FeedbackStore
    ) -> None:
        later = make_answer(created_at=T0 + timedelta(hours=1))
        earlier = make_answer(created_at=T0)
        unrated = make_answer(created_at=T0 + timedelta(hours=2))
        for answer in (later, earlier, unrated):
            await store.record(answer)
        second = make_feedback(earlier, 2, created_at=T0 + timedelta(minutes=9), comment="no")
        first = make_feedback(earlier, 5, created_at=T0 + timedelta(minutes=1), correction="3 y")
        for feedback in (second, first, make_feedback(later, 4)):
            await store.add_feedback(feedback)
        exported = await store.export()
        assert [a.answer_id for a, _ in exported] == [earlier.answer_id, later.answer_id]
        assert exported[0] == (earlier, [first, second])

    async def test_export_filters_by_tenant_and_time(self, store: FeedbackStore) -> None:
        old = make_answer(created_at=T0 - timedelta(days=3))
        new = make_answer(created_at=T0)
        other = make_answer(tenant="globex", created_at=T0)
        for answer in (old, new, other):
            await store.record(answer)
            await store.add_feedback(make_feedback(answer))

        async def ids(tenant: str | None, since: datetime | None) -> set[str]:
            return {a.answer_id for a, _ in await store.export(tenant, since)}

        assert await ids(None, None) == {old.answer_id, new.answer_id, other.answer_id}
        assert await ids("acme", None) == {old.answer_id, new.answer_id}
        assert await ids("acme", T0) == {new.answer_id}
        assert await ids(None, T0 - timedelta(days=1)) == {new.answer_id, other.answer_id}
        assert await ids("initech", None) == set()

    async def test_delete_tenant_removes_its_answers_and_feedback(
        self, store: FeedbackStore
    ) -> None:
        mine = [make_answer(), make_answer()]
        theirs = make_answer(tenant="globex")
        for answer in (*mine, theirs):
            await store.record(answer)
        await store.add_feedback(make_feedback(mine[0], 1))
        await store.add_feedback(make_feedback(mine[0], 2))
        await store.add_feedback(make_feedback(theirs, 3))
        assert await store.delete_tenant("acme") == 4  # two answers, two feedback
        with pytest.raises(NotFound):
            await store.get_answer("acme", mine[0].answer_id)
        assert [a.answer_id for a, _ in await store.export()] == [theirs.answer_id]
        assert await store.delete_tenant("acme") == 0

    async def test_purge_removes_old_answers_with_their_feedback(
        self, store: FeedbackStore
    ) -> None:
        old = make_answer(created_at=T0 - timedelta(days=100))
        new = make_answer(created_at=T0)
        for answer in (old, new):
            await store.record(answer)
            await store.add_feedback(make_feedback(answer))
        assert await store.purge(T0 - timedelta(days=90)) == 2
        assert [a.answer_id for a, _ in await store.export()] == [new.answer_id]
        assert await store.get_answer("acme", new.answer_id) == new
        with pytest.raises(InvalidInput, match="older_than"):
            await store.purge(datetime(2026, 1, 1))  # naive on purpose


def _masked(error: NotFound, answer_id: str) -> str:
    return error.message.replace(answer_id, "ID")


def _fields(record: AnswerRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in AnswerRecord.__dataclass_fields__}
