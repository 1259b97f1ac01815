"""The embedded backend's source of truth: one SQLite table of chunks, vectors included.

The lexical (tantivy) and dense (usearch) indexes are derived from this table and can always be
rebuilt from it. Every write bumps a ``generation`` counter in the same transaction; each derived
index records the generation it reflects once it is durable, so a crash between the two leaves a
mismatch that the next start-up repairs by rebuilding.
"""

from __future__ import annotations

import hashlib
import json
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragfleet.domain import Chunk, Filter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    -- AUTOINCREMENT: a key is never reused, so a stale vector-index entry can never alias a
    -- newer chunk.
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    digest BLOB NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    title TEXT NOT NULL,
    section TEXT NOT NULL,
    tenant TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks (source);
CREATE INDEX IF NOT EXISTS chunks_tenant ON chunks (tenant);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# SQLite's default limit on bound parameters is 32766; stay well below it.
_BATCH = 500


@dataclass(frozen=True, slots=True)
class StoredRef:
    """Where a stored chunk lives in the derived indexes."""

    id: str
    key: int
    has_vector: bool


@dataclass(frozen=True, slots=True)
class StoredChunk:
    key: int
    chunk: Chunk
    vector: np.ndarray | None


def digest(chunk: Chunk) -> bytes:
    """A fingerprint of everything stored for a chunk: equal digests mean nothing to rewrite."""
    hasher = hashlib.blake2b(digest_size=16)
    fields = [chunk.text, chunk.source, chunk.title, chunk.section, chunk.tenant]
    hasher.update(json.dumps([fields, sorted(chunk.metadata.items())]).encode())
    hasher.update(np.asarray(chunk.vector, dtype=np.float32).tobytes())
    return hasher.digest()


def _filter_sql(filter: Filter) -> tuple[str, list[str]]:
    clauses: list[str] = []
    params: list[str] = []
    if filter.tenant or filter.exact_tenant:
        clauses.append("tenant = ?")
        params.append(filter.tenant)
    if filter.source:
        clauses.append("source = ?")
        params.append(filter.source)
    for name, value in filter.equals.items():
        clauses.append(
            "EXISTS (SELECT 1 FROM json_each(chunks.metadata) AS m "
            "WHERE m.key = ? AND m.value = ? AND m.type = 'text')"
        )
        params.extend((name, value))
    return " AND ".join(clauses) or "1", params


class Catalog:
    """SQLite in WAL mode: one writer connection (callers serialise writes) and a pool of reader
    connections, so reads run concurrently with each other and with a write."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: an Upsert is durable when it returns, as the API promises.
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = self._readers.get_nowait()
        except queue.Empty:
            connection = self._connect()
            with self._readers_lock:
                self._all_readers.append(connection)
        try:
            yield connection
        finally:
            self._readers.put(connection)

    def close(self) -> None:
        with self._readers_lock:
            for connection in self._all_readers:
                connection.close()
            self._all_readers.clear()
        self._writer.close()

    def get_meta(self, name: str) -> str | None:
        row = self._writer.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self._writer.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    def digests(self, ids: Sequence[str]) -> dict[str, tuple[StoredRef, bytes]]:
        """The stored refs and digests of those of ``ids`` that exist."""
        found: dict[str, tuple[StoredRef, bytes]] = {}
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            rows = self._writer.execute(
                f"SELECT id, key, vector IS NOT NULL, digest FROM chunks WHERE id IN ({marks})",
                batch,
            )
            for chunk_id, key, has_vector, chunk_digest in rows:
                found[chunk_id] = (StoredRef(chunk_id, key, bool(has_vector)), chunk_digest)
        return found

    def find(self, ids: Sequence[str] | None, filter: Filter) -> list[StoredRef]:
        """Stored chunks matching ``filter``, restricted to ``ids`` when given."""
        where, params = _filter_sql(filter)
        query = f"SELECT id, key, vector IS NOT NULL FROM chunks WHERE {where}"
        if ids is None:
            rows = self._writer.execute(query, params).fetchall()
        else:
            rows = []
            for start in range(0, len(ids), _BATCH):
                batch = list(ids[start : start + _BATCH])
                marks = ",".join("?" * len(batch))
                rows += self._writer.execute(
                    f"{query} AND id IN ({marks})", [*params, *batch]
                ).fetchall()
        return [StoredRef(chunk_id, key, bool(has_vector)) for chunk_id, key, has_vector in rows]

    def write(
        self, replaced: Sequence[StoredRef], added: Sequence[Chunk], removed: Sequence[StoredRef]
    ) -> tuple[int, list[int]]:
        """In one transaction: deletes ``replaced`` and ``removed`` rows, inserts ``added`` (new
        keys, in order) and bumps the generation. Returns (generation, keys of ``added``)."""
        connection = self._writer
        connection.execute("BEGIN IMMEDIATE")
        try:
            doomed = [(ref.key,) for ref in (*replaced, *removed)]
            connection.executemany("DELETE FROM chunks WHERE key = ?", doomed)
            keys: list[int] = []
            for chunk in added:
                vector = (
                    np.asarray(chunk.vector, dtype=np.float32).tobytes() if chunk.vector else None
                )
                cursor = connection.execute(
                    "INSERT INTO chunks (id, digest, text, source, title, section, tenant, "
                    "metadata, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        chunk.id,
                        digest(chunk),
                        chunk.text,
                        chunk.source,
                        chunk.title,
                        chunk.section,
                        chunk.tenant,
                        json.dumps(dict(chunk.metadata), sort_keys=True),
                        vector,
                    ),
                )
                keys.append(int(cursor.lastrowid or 0))
            generation = self.generation + 1
            self.set_meta("generation", str(generation))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return generation, keys

    def fetch(self, ids: Sequence[str]) -> dict[str, Chunk]:
        """Chunks by id, without their vectors; ids not stored are left out."""
        found: dict[str, Chunk] = {}
        with self._reader() as connection:
            for start in range(0, len(ids), _BATCH):
                batch = list(ids[start : start + _BATCH])
                marks = ",".join("?" * len(batch))
                rows = connection.execute(
                    "SELECT id, text, source, title, section, tenant, metadata FROM chunks "
                    f"WHERE id IN ({marks})",
                    batch,
                )
                for row in rows:
                    found[row[0]] = _chunk(row)
        return found

    def scan(self, *, with_vectors: bool, batch_size: int = 2048) -> Iterator[list[StoredChunk]]:
        """Every stored chunk in key order, in batches; only those with vectors when
        ``with_vectors`` (and then with the vector)."""
        columns = "key, id, text, source, title, section, tenant, metadata"
        where = "vector IS NOT NULL" if with_vectors else "1"
        if with_vectors:
            columns += ", vector"
        last = -1
        while True:
            rows = self._writer.execute(
                f"SELECT {columns} FROM chunks WHERE {where} AND key > ? ORDER BY key LIMIT ?",
                (last, batch_size),
            ).fetchall()
            if not rows:
                return
            yield [
                StoredChunk(
                    key=row[0],
                    chunk=_chunk(row[1:8]),
                    vector=np.frombuffer(row[8], dtype=np.float32) if with_vectors else None,
                )
                for row in rows
            ]
            last = rows[-1][0]

    def counts(self) -> tuple[int, int, int]:
        """(chunks, distinct non-empty sources, chunks with vectors)."""
        with self._reader() as connection:
            chunks, vectors = connection.execute(
                "SELECT count(*), count(vector) FROM chunks"
            ).fetchone()
            (sources,) = connection.execute(
                "SELECT count(DISTINCT source) FROM chunks WHERE source != ''"
            ).fetchone()
        return int(chunks), int(sources), int(vectors)


def _chunk(row: Sequence[str]) -> Chunk:
    chunk_id, text, source, title, section, tenant, metadata = row
    return Chunk(
        id=chunk_id,
        text=text,
        source=source,
        title=title,
        section=section,
        tenant=tenant,
        metadata=json.loads(metadata),
    )
