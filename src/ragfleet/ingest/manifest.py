"""The ingestion manifest: which documents are in the index, with which content and chunks.

A SQLite file (by default ``$RAGFLEET_HOME/ingest/manifest.sqlite``, beside the fleet's index).
Per (tenant, source): the collection it was ingested from, a hash of its parsed content and
the chunking settings, and the ids of its chunks. A row is written only after the retriever
confirmed the upsert of every chunk of that document, so after a crash anything not recorded is
simply done again (upserts are idempotent by id).

Chunk ids sent to the retriever but not yet recorded live in ``pending`` (written before each
upsert): if a document changes again between a crash and the rerun, those orphans are still
known and deleted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    collection TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    chunk_ids TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, source)
);
CREATE INDEX IF NOT EXISTS documents_collection ON documents (tenant, collection);
CREATE TABLE IF NOT EXISTS pending (
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    PRIMARY KEY (tenant, source, chunk_id)
);
"""


@dataclass(frozen=True)
class ManifestEntry:
    source: str
    collection: str
    content_hash: str
    chunk_ids: tuple[str, ...]


class Manifest:
    """One writer at a time (the pipeline's driver). Every method commits before returning."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self, tenant: str) -> dict[str, ManifestEntry]:
        """Every recorded document of ``tenant``, by source."""
        rows = self._db.execute(
            "SELECT source, collection, content_hash, chunk_ids FROM documents WHERE tenant = ?",
            (tenant,),
        )
        return {
            source: ManifestEntry(source, collection, digest, tuple(json.loads(ids)))
            for source, collection, digest, ids in rows
        }

    def pending(self, tenant: str, source: str) -> set[str]:
        rows = self._db.execute(
            "SELECT chunk_id FROM pending WHERE tenant = ? AND source = ?", (tenant, source)
        )
        return {row[0] for row in rows}

    def add_pending(self, tenant: str, chunks: Iterable[tuple[str, str]]) -> None:
        """Notes (source, chunk id) pairs about to be upserted."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO pending (tenant, source, chunk_id) VALUES (?, ?, ?)",
                [(tenant, source, chunk_id) for source, chunk_id in chunks],
            )

    def record(
        self, tenant: str, source: str, collection: str, content_hash: str, chunk_ids: list[str]
    ) -> None:
        """The document's chunks are all in the index: remember them, forget its pending ids."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                (tenant, source, collection, content_hash, json.dumps(chunk_ids), time.time()),
            )
            self._db.execute(
                "DELETE FROM pending WHERE tenant = ? AND source = ?", (tenant, source)
            )

    def forget(self, tenant: str, source: str) -> None:
        """The document's chunks were deleted from the index."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM documents WHERE tenant = ? AND source = ?", (tenant, source)
            )
            self._db.execute(
                "DELETE FROM pending WHERE tenant = ? AND source = ?", (tenant, source)
            )

    def clear(self, tenant: str) -> None:
        """Forgets every document of ``tenant`` (used when the index turned out empty)."""
        with self._transaction():
            self._db.execute("DELETE FROM documents WHERE tenant = ?", (tenant,))
            self._db.execute("DELETE FROM pending WHERE tenant = ?", (tenant,))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
