"""``PostgresStore``: the flywheel's store in PostgreSQL, shared by every gateway of a fleet.

psycopg 3 through a ``psycopg_pool.AsyncConnectionPool``, opened on the first call (so building
the store needs no running server) together with the tables, created if missing under an
advisory lock (two gateways starting at once would otherwise race on ``CREATE TABLE``).
Sessions run in UTC; history, sources, citations and timings are JSONB columns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ragfleet.flywheel.records import (
    AnswerRecord,
    Feedback,
    check_answer,
    check_feedback,
    check_time,
)
from ragfleet.flywheel.store import Export, redact_url, scrub
from ragfleet.runtime.errors import InvalidInput, NotFound, Unavailable
from ragfleet.runtime.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")
Connection = psycopg.AsyncConnection[DictRow]

# Any constant: the key of the advisory lock that serialises table creation.
_SCHEMA_LOCK = 0x5241_4746_4C59
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS flywheel_answers (
        answer_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        question TEXT NOT NULL,
        history JSONB NOT NULL,
        answer TEXT NOT NULL,
        answered BOOLEAN NOT NULL,
        model TEXT NOT NULL,
        route TEXT NOT NULL,
        sources JSONB NOT NULL,
        cited JSONB NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_usd DOUBLE PRECISION,
        timings_ms JSONB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS flywheel_answers_tenant ON flywheel_answers (tenant, created_at)",
    "CREATE INDEX IF NOT EXISTS flywheel_answers_created ON flywheel_answers (created_at)",
    """CREATE TABLE IF NOT EXISTS flywheel_feedback (
        feedback_id TEXT PRIMARY KEY,
        answer_id TEXT NOT NULL REFERENCES flywheel_answers (answer_id) ON DELETE CASCADE,
        tenant TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        rating SMALLINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
        comment TEXT NOT NULL,
        correction TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS flywheel_feedback_answer ON flywheel_feedback (answer_id)",
)
_JSON_COLUMNS = ("history", "sources", "cited", "timings_ms")
_EXPORTED = """
    EXISTS (SELECT 1 FROM flywheel_feedback f WHERE f.answer_id = a.answer_id)
    AND (%(tenant)s::text IS NULL OR a.tenant = %(tenant)s::text)
    AND (%(since)s::timestamptz IS NULL OR a.created_at >= %(since)s::timestamptz)
"""


def _not_found(answer_id: str) -> NotFound:
    # The same words whether the id is unknown or another tenant's: no tenant learns of another.
    return NotFound(f"answer_id {answer_id}: no such answer")


def _feedback_from_row(row: DictRow) -> Feedback:
    return Feedback(
        feedback_id=row["feedback_id"],
        answer_id=row["answer_id"],
        tenant=row["tenant"],
        created_at=row["created_at"],
        rating=row["rating"],
        comment=row["comment"],
        correction=row["correction"],
    )


class PostgresStore:
    """The ``FeedbackStore`` in the PostgreSQL database ``url`` names.

    ``timeout_s`` bounds the wait for a connection: past it, with the server down or
    unreachable, a call raises ``Unavailable`` instead of hanging the caller."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, max_connections: int = 4) -> None:
        self._url = url
        self.name = f"feedback store {redact_url(url)}"
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=timeout_s,
            # A connection that died with the server is noticed before it is handed out.
            check=AsyncConnectionPool.check_connection,
            kwargs={
                "connect_timeout": max(1, round(timeout_s)),
                "options": "-c TimeZone=UTC",
                "row_factory": dict_row,
            },
            name="ragfleet-flywheel",
        )
        self._ready = False
        self._ready_lock = asyncio.Lock()

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"{self.name}: {scrub(str(exc), self._url) or type(exc).__name__}")

    async def _prepare(self) -> None:
        """Opens the pool and creates the tables, once; a failure is retried on the next call."""
        async with self._ready_lock:
            if self._ready:
                return
            await self._pool.open(wait=False)
            async with self._pool.connection() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    await connection.execute(statement)
            self._ready = True
            log.info("feedback store ready", store=self.name)

    async def _transaction(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs ``work`` in one transaction. Domain errors pass through; data PostgreSQL
        rejects is ``InvalidInput``; any other database or connection failure is
        ``Unavailable``."""
        try:
            await self._prepare()
            async with self._pool.connection() as connection, connection.transaction():
                return await work(connection)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise InvalidInput(
                f"{self.name} refused the record: {scrub(str(exc), self._url)}"
            ) from None
        except (psycopg.Error, OSError) as exc:
            raise self._unavailable(exc) from None

    async def record(self, answer: AnswerRecord) -> None:
        check_answer(answer)
        row: dict[str, Any] = answer.to_json()
        row["created_at"] = answer.created_at
        for column in _JSON_COLUMNS:
            row[column] = Jsonb(row[column])
        columns = ", ".join(row)
        values = ", ".join(f"%({c})s" for c in row)
        sql = (
            f"INSERT INTO flywheel_answers ({columns}) VALUES ({values}) "
            "ON CONFLICT (answer_id) DO NOTHING"
        )

        async def insert(connection: Connection) -> None:
            await connection.execute(sql, row)

        await self._transaction(insert)

    async def add_feedback(self, feedback: Feedback) -> None:
        check_feedback(feedback)

        async def add(connection: Connection) -> None:
            # FOR SHARE: the answer cannot be deleted between this check and the insert.
            cursor = await connection.execute(
                "SELECT 1 FROM flywheel_answers WHERE answer_id = %s AND tenant = %s FOR SHARE",
                (feedback.answer_id, feedback.tenant),
            )
            if await cursor.fetchone() is None:
                raise _not_found(feedback.answer_id)
            await connection.execute(
                "INSERT INTO flywheel_feedback (feedback_id, answer_id, tenant, created_at, "
                "rating, comment, correction) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (feedback_id) DO NOTHING",
                (
                    feedback.feedback_id,
                    feedback.answer_id,
                    feedback.tenant,
                    feedback.created_at,
                    feedback.rating,
                    feedback.comment,
                    feedback.correction,
                ),
            )

        await self._transaction(add)

    async def get_answer(self, tenant: str, answer_id: str) -> AnswerRecord:
        async def read(connection: Connection) -> DictRow | None:
            cursor = await connection.execute(
                "SELECT * FROM flywheel_answers WHERE answer_id = %s AND tenant = %s",
                (answer_id, tenant),
            )
            return await cursor.fetchone()

        row = await self._transaction(read)
        if row is None:
            raise _not_found(answer_id)
        return AnswerRecord.from_json(row)

    async def export(self, tenant: str | None = None, since: datetime | None = None) -> Export:
        if since is not None:
            check_time(since, "since")
        params = {"tenant": tenant, "since": since}

        async def read(connection: Connection) -> Export:
            cursor = await connection.execute(
                f"SELECT a.* FROM flywheel_answers a WHERE {_EXPORTED} "
                "ORDER BY a.created_at, a.answer_id",
                params,
            )
            answers = await cursor.fetchall()
            cursor = await connection.execute(
                "SELECT f.* FROM flywheel_feedback f "
                "JOIN flywheel_answers a ON a.answer_id = f.answer_id "
                f"WHERE {_EXPORTED} ORDER BY f.created_at, f.feedback_id",
                params,
            )
            feedback: dict[str, list[Feedback]] = {}
            for row in await cursor.fetchall():
                feedback.setdefault(row["answer_id"], []).append(_feedback_from_row(row))
            return [(AnswerRecord.from_json(a), feedback[a["answer_id"]]) for a in answers]

        return await self._transaction(read)

    async def _delete(self, where: str, value: object) -> int:
        async def delete(connection: Connection) -> int:
            feedback = await connection.execute(
                "DELETE FROM flywheel_feedback WHERE answer_id IN "
                f"(SELECT answer_id FROM flywheel_answers WHERE {where})",
                (value,),
            )
            answers = await connection.execute(
                f"DELETE FROM flywheel_answers WHERE {where}", (value,)
            )
            return max(feedback.rowcount, 0) + max(answers.rowcount, 0)

        return await self._transaction(delete)

    async def delete_tenant(self, tenant: str) -> int:
        return await self._delete("tenant = %s", tenant)

    async def purge(self, older_than: datetime) -> int:
        check_time(older_than, "older_than")
        return await self._delete("created_at < %s", older_than)

    async def close(self) -> None:
        await self._pool.close()
