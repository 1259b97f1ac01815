"""``SqliteStore``: the flywheel's store in one SQLite file, for a gateway on one machine.

The standard library's ``sqlite3`` runs in a worker thread (``asyncio.to_thread``) so the event
loop never waits on the disk. One connection, serialised by a lock: SQLite has one writer at a
time anyway, and WAL lets ``ragfleet flywheel export`` read while the gateway writes.
Timestamps are kept as fixed-width UTC ISO 8601 text, so text order is time order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ragfleet.flywheel.records import (
    AnswerRecord,
    Feedback,
    check_answer,
    check_feedback,
    check_time,
    parse_time,
)
from ragfleet.flywheel.store import Export
from ragfleet.runtime.errors import NotFound, Unavailable

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flywheel_answers (
    answer_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at TEXT NOT NULL,
    question TEXT NOT NULL,
    history TEXT NOT NULL,
    answer TEXT NOT NULL,
    answered INTEGER NOT NULL,
    model TEXT NOT NULL,
    route TEXT NOT NULL,
    sources TEXT NOT NULL,
    cited TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL,
    timings_ms TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flywheel_answers_tenant ON flywheel_answers (tenant, created_at);
CREATE INDEX IF NOT EXISTS flywheel_answers_created ON flywheel_answers (created_at);
CREATE TABLE IF NOT EXISTS flywheel_feedback (
    feedback_id TEXT PRIMARY KEY,
    answer_id TEXT NOT NULL REFERENCES flywheel_answers (answer_id) ON DELETE CASCADE,
    tenant TEXT NOT NULL,
    created_at TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment TEXT NOT NULL,
    correction TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flywheel_feedback_answer ON flywheel_feedback (answer_id);
"""
_JSON_COLUMNS = ("history", "sources", "cited", "timings_ms")
# Answers with feedback, filtered by :tenant and :since when they are not NULL.
_EXPORTED = """
    EXISTS (SELECT 1 FROM flywheel_feedback f WHERE f.answer_id = a.answer_id)
    AND (:tenant IS NULL OR a.tenant = :tenant)
    AND (:since IS NULL OR a.created_at >= :since)
"""


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _answer_from_row(row: sqlite3.Row) -> AnswerRecord:
    data: dict[str, Any] = dict(row)
    for column in _JSON_COLUMNS:
        data[column] = json.loads(data[column])
    return AnswerRecord.from_json(data)


def _feedback_from_row(row: sqlite3.Row) -> Feedback:
    return Feedback(
        feedback_id=row["feedback_id"],
        answer_id=row["answer_id"],
        tenant=row["tenant"],
        created_at=parse_time(row["created_at"]),
        rating=row["rating"],
        comment=row["comment"],
        correction=row["correction"],
    )


def _not_found(answer_id: str) -> NotFound:
    # The same words whether the id is unknown or another tenant's: no tenant learns of another.
    return NotFound(f"answer_id {answer_id}: no such answer")


class SqliteStore:
    """The ``FeedbackStore`` in the SQLite file ``path`` (its folder is created)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"feedback store sqlite:///{path}"
        self._connection: sqlite3.Connection | None = None
        # sqlite3 connections must not be used by two threads at once.
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            try:
                connection.row_factory = sqlite3.Row
                connection.execute("PRAGMA journal_mode=WAL")
                # FULL: a record the recorder removed from its spool survives a power cut too.
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.executescript(_SCHEMA)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    async def _transaction(
        self, work: Callable[[sqlite3.Connection], T], *, write: bool = True
    ) -> T:
        """Runs ``work`` in one transaction in a worker thread: a write transaction takes the
        database's write lock at once, a read one never does (WAL readers do not wait for the
        writer). Domain errors pass through; any SQLite or file-system failure is
        ``Unavailable``."""

        def run() -> T:
            with self._lock:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
                try:
                    result = work(connection)
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
                return result

        try:
            return await asyncio.to_thread(run)
        except (sqlite3.Error, OSError) as exc:
            raise Unavailable(f"{self.name}: {exc}") from exc

    async def record(self, answer: AnswerRecord) -> None:
        check_answer(answer)
        row = answer.to_json()
        row["created_at"] = _ts(answer.created_at)
        row["answered"] = int(answer.answered)
        for column in _JSON_COLUMNS:
            row[column] = json.dumps(row[column], ensure_ascii=False)
        columns = ", ".join(row)
        values = ", ".join(f":{c}" for c in row)
        sql = (
            f"INSERT INTO flywheel_answers ({columns}) VALUES ({values}) "
            "ON CONFLICT (answer_id) DO NOTHING"
        )
        await self._transaction(lambda c: c.execute(sql, row))

    async def add_feedback(self, feedback: Feedback) -> None:
        check_feedback(feedback)

        def add(connection: sqlite3.Connection) -> None:
            known = connection.execute(
                "SELECT 1 FROM flywheel_answers WHERE answer_id = ? AND tenant = ?",
                (feedback.answer_id, feedback.tenant),
            ).fetchone()
            if known is None:
                raise _not_found(feedback.answer_id)
            connection.execute(
                "INSERT INTO flywheel_feedback (feedback_id, answer_id, tenant, created_at, "
                "rating, comment, correction) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (feedback_id) DO NOTHING",
                (
                    feedback.feedback_id,
                    feedback.answer_id,
                    feedback.tenant,
                    _ts(feedback.created_at),
                    feedback.rating,
                    feedback.comment,
                    feedback.correction,
                ),
            )

        await self._transaction(add)

    async def get_answer(self, tenant: str, answer_id: str) -> AnswerRecord:
        row = await self._transaction(
            lambda c: c.execute(
                "SELECT * FROM flywheel_answers WHERE answer_id = ? AND tenant = ?",
                (answer_id, tenant),
            ).fetchone(),
            write=False,
        )
        if row is None:
            raise _not_found(answer_id)
        return _answer_from_row(row)

    async def export(self, tenant: str | None = None, since: datetime | None = None) -> Export:
        if since is not None:
            check_time(since, "since")
        params = {"tenant": tenant, "since": None if since is None else _ts(since)}

        def read(connection: sqlite3.Connection) -> Export:
            answers = connection.execute(
                f"SELECT a.* FROM flywheel_answers a WHERE {_EXPORTED} "
                "ORDER BY a.created_at, a.answer_id",
                params,
            ).fetchall()
            feedback: dict[str, list[Feedback]] = {}
            for row in connection.execute(
                "SELECT f.* FROM flywheel_feedback f "
                "JOIN flywheel_answers a ON a.answer_id = f.answer_id "
                f"WHERE {_EXPORTED} ORDER BY f.created_at, f.feedback_id",
                params,
            ):
                feedback.setdefault(row["answer_id"], []).append(_feedback_from_row(row))
            return [(_answer_from_row(a), feedback[a["answer_id"]]) for a in answers]

        return await self._transaction(read, write=False)

    async def delete_tenant(self, tenant: str) -> int:
        def delete(connection: sqlite3.Connection) -> int:
            feedback = connection.execute(
                "DELETE FROM flywheel_feedback WHERE answer_id IN "
                "(SELECT answer_id FROM flywheel_answers WHERE tenant = ?) OR tenant = ?",
                (tenant, tenant),
            ).rowcount
            answers = connection.execute(
                "DELETE FROM flywheel_answers WHERE tenant = ?", (tenant,)
            ).rowcount
            return feedback + answers

        return await self._transaction(delete)

    async def purge(self, older_than: datetime) -> int:
        check_time(older_than, "older_than")
        cutoff = _ts(older_than)

        def delete(connection: sqlite3.Connection) -> int:
            feedback = connection.execute(
                "DELETE FROM flywheel_feedback WHERE answer_id IN "
                "(SELECT answer_id FROM flywheel_answers WHERE created_at < ?)",
                (cutoff,),
            ).rowcount
            answers = connection.execute(
                "DELETE FROM flywheel_answers WHERE created_at < ?", (cutoff,)
            ).rowcount
            return feedback + answers

        return await self._transaction(delete)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        await asyncio.to_thread(close)
