"""The embedded backend: SQLite (source of truth) + tantivy (BM25) + usearch (dense), on disk.

Files under ``data_dir``: ``catalog.sqlite3`` (every chunk, vector included), ``lexical/``
(tantivy) and ``vectors.usearch``. A write goes to SQLite first, in one transaction that bumps
the generation, then to tantivy (one commit) and usearch (saved by atomic rename); each derived
index then records the generation it holds. At start-up a derived index whose generation,
count, dimension or storage type disagrees with SQLite, or whose files are missing or corrupt,
is rebuilt from SQLite. If a derived index fails during a write, both are rebuilt from SQLite
before the error is reported, so retrying the write is safe.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragfleet.domain import MATCH_ALL, Chunk, Filter
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput
from ragfleet.runtime.logging import get_logger
from ragfleet_retriever.domain import IndexStats, ScoredId
from ragfleet_retriever.embedded.catalog import Catalog, StoredRef, digest
from ragfleet_retriever.embedded.dense import DenseIndex, VectorDtype, VectorEntry
from ragfleet_retriever.embedded.lexical import SCHEMA_VERSION, LexicalIndex

log = get_logger(__name__)


def _entry(chunk: Chunk) -> VectorEntry:
    return VectorEntry(chunk.id, chunk.tenant, chunk.source, dict(chunk.metadata))


class EmbeddedBackend:
    """``IndexBackend`` on local files. Thread-safe: writes are serialised by a lock, searches
    run concurrently. Open with ``EmbeddedBackend.open``."""

    name = "embedded"

    def __init__(self, catalog: Catalog, lexical: LexicalIndex, dense: DenseIndex) -> None:
        self._catalog = catalog
        self._lexical = lexical
        self._dense = dense
        # One writer at a time: the three stores must apply writes in the same order.
        self._write_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        dimension: int = 384,
        vector_dtype: VectorDtype = "f32",
        exact_search_max_candidates: int = 4096,
    ) -> EmbeddedBackend:
        """Opens (or creates) the index in ``data_dir``, repairing derived indexes as needed.

        A new index takes ``dimension``; an existing one keeps the dimension it was created
        with and raises ``FailedPrecondition`` if ``dimension`` differs.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(data_dir / "catalog.sqlite3")
        try:
            stored = catalog.get_meta("dimension")
            if stored is None:
                catalog.set_meta("dimension", str(dimension))
            elif int(stored) != dimension:
                raise FailedPrecondition(
                    f"the index in {data_dir} holds {stored}-dimensional vectors but the "
                    f"configured dimension is {dimension}: set RAGFLEET_RETRIEVER_DIMENSION="
                    f"{stored} or use another RAGFLEET_RETRIEVER_DATA_DIR"
                )
            lexical = cls._open_lexical(catalog, data_dir / "lexical")
            dense = DenseIndex(
                data_dir / "vectors.usearch", dimension, vector_dtype, exact_search_max_candidates
            )
        except BaseException:
            catalog.close()
            raise
        backend = cls(catalog, lexical, dense)
        backend._open_dense()
        return backend

    @staticmethod
    def _open_lexical(catalog: Catalog, path: Path) -> LexicalIndex:
        generation = str(catalog.generation)
        fresh = (
            catalog.get_meta("lexical_generation") == generation
            and catalog.get_meta("lexical_schema") == SCHEMA_VERSION
        )
        lexical: LexicalIndex | None = None
        if fresh:
            try:
                lexical = LexicalIndex(path)
            except (OSError, ValueError) as error:
                log.warning("lexical_index_unreadable", path=str(path), error=str(error))
            else:
                chunks, _, _ = catalog.counts()
                if lexical.count() == chunks:
                    return lexical
                lexical.close()
        log.info("lexical_index_rebuilding", path=str(path))
        lexical = LexicalIndex.create_empty(path)
        lexical.replace_all(
            [stored.chunk for stored in batch] for batch in catalog.scan(with_vectors=False)
        )
        catalog.set_meta("lexical_generation", generation)
        catalog.set_meta("lexical_schema", SCHEMA_VERSION)
        return lexical

    def _open_dense(self) -> None:
        catalog = self._catalog
        generation = str(catalog.generation)
        _, _, vectors = catalog.counts()
        if catalog.get_meta("dense_generation") == generation and self._dense.load(
            (
                (stored.key, _entry(stored.chunk))
                for batch in catalog.scan(with_vectors=False)
                for stored in batch
            ),
            expected=vectors,
        ):
            return
        log.info("dense_index_rebuilding", path=str(self._dense.path), vectors=vectors)
        self._rebuild_dense()
        catalog.set_meta("dense_generation", generation)

    def _rebuild_dense(self) -> None:
        self._dense.rebuild(
            [
                (stored.key, stored.vector, _entry(stored.chunk))
                for stored in batch
                if stored.vector is not None
            ]
            for batch in self._catalog.scan(with_vectors=True)
        )
        self._dense.save()

    @property
    def dimension(self) -> int:
        return self._dense.dimension

    def upsert(self, chunks: Sequence[Chunk]) -> int:
        """Inserts or replaces ``chunks`` by id (a later duplicate id in ``chunks`` wins); durable
        on return. Chunks stored unchanged are not rewritten. Returns how many distinct ids were
        upserted. Vectors must have ``dimension`` values or none."""
        latest = {chunk.id: chunk for chunk in chunks}
        with self._write_lock:
            stored = self._catalog.digests(list(latest))
            changed = [
                chunk
                for chunk_id, chunk in latest.items()
                if chunk_id not in stored or stored[chunk_id][1] != digest(chunk)
            ]
            if changed:
                replaced = [stored[c.id][0] for c in changed if c.id in stored]
                self._write(replaced, changed, [])
        return len(latest)

    def delete(
        self,
        *,
        ids: Sequence[str] | None = None,
        filter: Filter = MATCH_ALL,
        keep_ids: Sequence[str] = (),
    ) -> int:
        """Deletes the chunks matching ``filter`` (restricted to ``ids`` when given) except
        those in ``keep_ids``, in one SQLite transaction followed by the index updates. Refuses
        to delete everything: give ids or a non-empty filter. Returns how many were deleted."""
        if ids is None and filter.is_empty:
            raise InvalidInput(
                "delete: give ids or a non-empty filter (tenant, source or metadata)"
            )
        kept = frozenset(keep_ids)
        with self._write_lock:
            doomed = [ref for ref in self._catalog.find(ids, filter) if ref.id not in kept]
            if doomed:
                self._write([], [], doomed)
        return len(doomed)

    def _write(
        self, replaced: Sequence[StoredRef], added: Sequence[Chunk], removed: Sequence[StoredRef]
    ) -> None:
        generation, keys = self._catalog.write(replaced, added, removed)
        gone = [*replaced, *removed]
        try:
            self._lexical.apply([ref.id for ref in gone], added)
            self._catalog.set_meta("lexical_generation", str(generation))
            self._dense.apply(
                [ref.key for ref in gone if ref.has_vector],
                [
                    (key, np.asarray(chunk.vector, dtype=np.float32), _entry(chunk))
                    for key, chunk in zip(keys, added, strict=True)
                    if chunk.vector
                ],
            )
            self._dense.save()
            self._catalog.set_meta("dense_generation", str(generation))
        except Exception:
            log.exception("derived_index_write_failed", generation=generation)
            self._lexical.replace_all(
                [stored.chunk for stored in batch]
                for batch in self._catalog.scan(with_vectors=False)
            )
            self._catalog.set_meta("lexical_generation", str(generation))
            self._rebuild_dense()
            self._catalog.set_meta("dense_generation", str(generation))
            raise

    def search_lexical(self, query: str, k: int, filter: Filter = MATCH_ALL) -> list[ScoredId]:
        return [ScoredId(*hit) for hit in self._lexical.search(query, k, filter)]

    def search_dense(
        self, vector: Sequence[float], k: int, filter: Filter = MATCH_ALL
    ) -> list[ScoredId]:
        query = np.asarray(vector, dtype=np.float32)
        return [ScoredId(*hit) for hit in self._dense.search(query, k, filter)]

    def fetch(self, ids: Sequence[str]) -> dict[str, Chunk]:
        return self._catalog.fetch(ids)

    def stats(self) -> IndexStats:
        chunks, sources, _ = self._catalog.counts()
        return IndexStats(chunks, sources, self.dimension, self.name)

    def close(self) -> None:
        with self._write_lock:
            self._lexical.close()
            self._catalog.close()
