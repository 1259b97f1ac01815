"""Cosine k-NN on usearch (HNSW), with tenant, source and metadata filters.

usearch's Python search takes no filter, so filtered search works on an in-memory inverted map
of each vector's filter attributes:

- When the filter matches at most ``exact_max`` vectors, those vectors are scanned exactly. A
  selective filter is where post-filtering an ANN result fails: to keep ``k`` survivors it must
  over-fetch about ``k / selectivity`` results, and an exact scan of a few thousand vectors costs
  about as much as that (a few ms) while returning the true nearest neighbours.
- Otherwise the ANN index is over-fetched by twice the inverse selectivity and the results are
  post-filtered. If fewer than ``k`` survive (an unlucky graph neighbourhood), the filtered
  vectors are scanned exactly, so a filtered search never returns fewer hits than exist.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
from usearch.index import Index

from ragfleet.domain import Filter

VectorDtype = Literal["f32", "i8"]


@dataclass(frozen=True, slots=True)
class VectorEntry:
    """A vector's id and the attributes filters look at."""

    id: str
    tenant: str
    source: str
    metadata: Mapping[str, str]


class ReadWriteLock:
    """Many readers or one writer. usearch tolerates concurrent searches but not a search
    running during a removal, so mutations take the write side, briefly."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing)
            self._writing = True
            self._condition.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


class DenseIndex:
    """A usearch index persisted to ``path`` plus the filter attributes of its vectors.

    Mutations must be serialised by the caller; searches run concurrently with each other and
    wait only while a mutation is applied in memory (not while it is saved).
    """

    def __init__(self, path: Path, dimension: int, dtype: VectorDtype, exact_max: int) -> None:
        self.path = path
        self.dimension = dimension
        self._dtype = dtype
        self._exact_max = exact_max
        self._index = self._new_index()
        self._entries: dict[int, VectorEntry] = {}
        self._by_attribute: dict[tuple[str, str, str], set[int]] = {}
        self._lock = ReadWriteLock()

    def _new_index(self) -> Index:
        return Index(ndim=self.dimension, metric="cos", dtype=self._dtype)

    def __len__(self) -> int:
        return len(self._index)

    def load(self, entries: Iterable[tuple[int, VectorEntry]], expected: int) -> bool:
        """Loads the saved index and sets the attributes of its vectors. Returns False, leaving
        the index empty, when the file is missing, unreadable, of another dimension or storage
        type, or does not hold exactly ``expected`` vectors; the caller then rebuilds."""
        try:
            loaded = Index.restore(str(self.path))
        except (ValueError, RuntimeError, OSError):
            loaded = None
        if (
            loaded is None
            or loaded.ndim != self.dimension
            or str(loaded.dtype).lower() != f"scalarkind.{self._dtype}"
            or len(loaded) != expected
        ):
            return False
        with self._lock.write():
            self._index = loaded
            self._entries.clear()
            self._by_attribute.clear()
            for key, entry in entries:
                self._remember(key, entry)
        return True

    def _attributes(self, entry: VectorEntry) -> Iterator[tuple[str, str, str]]:
        yield ("tenant", entry.tenant, "")
        yield ("source", entry.source, "")
        for name, value in entry.metadata.items():
            yield ("meta", name, value)

    def _remember(self, key: int, entry: VectorEntry) -> None:
        self._entries[key] = entry
        for attribute in self._attributes(entry):
            self._by_attribute.setdefault(attribute, set()).add(key)

    def _forget(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for attribute in self._attributes(entry):
            keys = self._by_attribute.get(attribute)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_attribute[attribute]

    def apply(
        self,
        removed: Sequence[int],
        added: Sequence[tuple[int, np.ndarray, VectorEntry]],
    ) -> None:
        """Removes the ``removed`` keys and adds ``added`` vectors in memory (call ``save``)."""
        vectors = (
            np.stack([vector for _, vector, _ in added]).astype(np.float32, copy=False)
            if added
            else None
        )
        with self._lock.write():
            if removed:
                self._index.remove(np.asarray(removed, dtype=np.uint64))
                for key in removed:
                    self._forget(key)
            if vectors is not None:
                self._index.add(np.asarray([key for key, _, _ in added], dtype=np.uint64), vectors)
                for key, _, entry in added:
                    self._remember(key, entry)

    def rebuild(self, batches: Iterable[Sequence[tuple[int, np.ndarray, VectorEntry]]]) -> None:
        """Replaces the index in memory with the vectors in ``batches`` (call ``save``)."""
        with self._lock.write():
            self._index = self._new_index()
            self._entries.clear()
            self._by_attribute.clear()
        for batch in batches:
            self.apply((), batch)

    def save(self) -> None:
        """Writes the whole index to a temporary file and renames it over ``path``, so the file
        on disk is always a complete index."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        with self._lock.read():
            self._index.save(str(temporary))
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def _candidates(self, filter: Filter) -> set[int] | None:
        """Keys matching ``filter``; None when it matches everything."""
        wanted = [("tenant", filter.tenant, ""), ("source", filter.source, "")]
        wanted = [attribute for attribute in wanted if attribute[1]]
        wanted += [("meta", name, value) for name, value in filter.equals.items()]
        if not wanted:
            return None
        sets = sorted((self._by_attribute.get(a, set()) for a in wanted), key=len)
        return sets[0].intersection(*sets[1:])

    def search(self, vector: np.ndarray, k: int, filter: Filter) -> list[tuple[str, float]]:
        """The ``k`` most similar vectors matching ``filter``, as (id, cosine similarity)."""
        query = np.asarray(vector, dtype=np.float32)
        with self._lock.read():
            total = len(self._index)
            if total == 0:
                return []
            candidates = self._candidates(filter)
            if candidates is None:
                return self._approximate(query, min(k, total), None)
            if not candidates:
                return []
            if len(candidates) <= self._exact_max:
                return self._exact(query, k, candidates)
            fetch = min(total, max(2 * k, math.ceil(2 * k * total / len(candidates))))
            hits = self._approximate(query, fetch, candidates)
            if len(hits) >= k or fetch >= total:
                return hits[:k]
            return self._exact(query, k, candidates)

    def _approximate(
        self, query: np.ndarray, count: int, candidates: set[int] | None
    ) -> list[tuple[str, float]]:
        matches = self._index.search(query, count)
        return [
            (self._entries[int(key)].id, 1.0 - float(distance))
            for key, distance in zip(matches.keys, matches.distances, strict=True)
            if candidates is None or int(key) in candidates
        ]

    def _exact(self, query: np.ndarray, k: int, candidates: set[int]) -> list[tuple[str, float]]:
        keys = np.fromiter(candidates, dtype=np.uint64, count=len(candidates))
        vectors = self._index.get(keys, dtype="f32")
        matrix = np.vstack(cast(Sequence[np.ndarray], vectors)).astype(np.float32, copy=False)
        norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
        similarities = (matrix @ query) / np.where(norms == 0.0, 1.0, norms)
        count = min(k, len(keys))
        best = np.argpartition(-similarities, count - 1)[:count]
        best = best[np.argsort(-similarities[best], kind="stable")]
        return [(self._entries[int(keys[i])].id, float(similarities[i])) for i in best]
