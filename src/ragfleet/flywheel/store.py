"""Where answer records and their feedback are kept, behind one async interface.

``open_store(url)`` picks the backend from the URL's scheme:

- ``sqlite:///PATH`` (``sqlite:///var/a.sqlite3`` relative, ``sqlite:////srv/a.sqlite3``
  absolute): ``SqliteStore``, one file, for one gateway on one machine;
- ``postgresql://USER:PASSWORD@HOST:PORT/DB``: ``PostgresStore``, for gateways that share a
  store (needs the ``ragfleet[flywheel]`` extra).

Every store keeps tenants apart: an answer of another tenant looks exactly like one that does
not exist. Every connection or database failure is raised as ``Unavailable`` naming the store
with its password masked.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from ragfleet.flywheel.records import AnswerRecord, Feedback
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput

SCHEMES = ("sqlite", "postgresql", "postgres")

Export = list[tuple[AnswerRecord, list[Feedback]]]
"""Answers, oldest first, each with its feedback, oldest first."""


class FeedbackStore(Protocol):
    name: str
    """The store as people should read it in messages: its kind and its URL, password masked."""

    async def record(self, answer: AnswerRecord) -> None:
        """Keeps ``answer``; a second record of the same ``answer_id`` changes nothing. Raises
        ``InvalidInput`` for a record no store can keep (``records.check_answer``)."""
        ...

    async def add_feedback(self, feedback: Feedback) -> None:
        """Keeps ``feedback``. Raises ``NotFound`` when ``feedback.tenant`` has no answer
        ``feedback.answer_id`` (another tenant's answer included)."""
        ...

    async def get_answer(self, tenant: str, answer_id: str) -> AnswerRecord:
        """The answer ``answer_id`` of ``tenant``; ``NotFound`` otherwise."""
        ...

    async def export(self, tenant: str | None = None, since: datetime | None = None) -> Export:
        """The answers that have feedback, of ``tenant`` (every tenant when None) given at or
        after ``since`` (all when None), oldest first, each with its feedback."""
        ...

    async def delete_tenant(self, tenant: str) -> int:
        """Removes every answer and feedback of ``tenant``; returns how many rows (answers plus
        feedback) were removed."""
        ...

    async def purge(self, older_than: datetime) -> int:
        """Removes the answers given before ``older_than`` with their feedback (retention);
        returns how many rows (answers plus feedback) were removed."""
        ...

    async def close(self) -> None: ...


def open_store(url: str) -> FeedbackStore:
    """The store ``url`` names; connects lazily, on the first call. Raises ``InvalidInput`` for
    a URL of another scheme or without a path or database, ``FailedPrecondition`` when the
    PostgreSQL driver is not installed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise InvalidInput(
                f"feedback store: sqlite URLs have no host, got {redact_url(url)!r}; "
                "write sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path or path.endswith("/"):
            raise InvalidInput(
                f"feedback store: {redact_url(url)!r} names no file; "
                "write sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3"
            )
        from ragfleet.flywheel.sqlite_store import SqliteStore

        return SqliteStore(Path(path))
    if scheme in ("postgresql", "postgres"):
        if not parts.hostname and "host=" not in parts.query:
            raise InvalidInput(
                f"feedback store: {redact_url(url)!r} names no host; "
                "write postgresql://USER:PASSWORD@HOST:PORT/DB"
            )
        try:
            from ragfleet.flywheel.postgres_store import PostgresStore
        except ImportError as exc:
            raise FailedPrecondition(
                f"feedback store {redact_url(url)}: PostgreSQL needs psycopg and psycopg-pool "
                "(pip install 'ragfleet[flywheel]')"
            ) from exc
        return PostgresStore(url)
    raise InvalidInput(
        f"feedback store: unsupported URL {redact_url(url)!r}; accepted: "
        "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
    )


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def scrub(message: str, url: str) -> str:
    """``message`` with ``url``'s password (as written, and percent-decoded) masked wherever a
    driver may have echoed it."""
    password = urlsplit(url).password
    for secret in {password, unquote(password)} if password else ():
        message = message.replace(secret, "***")
    return message
