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

The vectors of the last few filters scanned exactly stay gathered in one matrix until the next
write: copying them out of usearch key by key costs far more than the scan itself (2,400 vectors:
about 3 ms against 0.2 ms), and the gateway sends the same tenant filter with every query.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
from usearch.index import Index

from ragfleet.domain import Filter

VectorDtype = Literal["f32", "i8"]

Attribute = tuple[str, str, str]
"""(kind, name, value): ``("tenant", t, "")``, ``("source", s, "")``, ``("meta", name, value)``."""

EXACT_SLICES_KEPT = 8
"""Filters whose gathered vectors are kept for exact scans (each at most ``exact_max`` rows)."""


@dataclass(frozen=True, slots=True)
class VectorEntry:
    """A vector's id and the attributes filters look at."""

    id: str
    tenant: str
    source: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Slice:
    """The vectors one filter selects, gathered for exact scans."""

    keys: np.ndarray
    matrix: np.ndarray
    norms: np.ndarray
    """Each row's Euclidean norm."""


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
        self._by_attribute: dict[Attribute, set[int]] = {}
        self._lock = ReadWriteLock()
        # Searches run in several threads at once; this guards the cache, not the index.
        self._slices_lock = threading.Lock()
        self._slices: OrderedDict[tuple[Attribute, ...], _Slice] = OrderedDict()

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
            self._forget_slices()
            self._entries.clear()
            self._by_attribute.clear()
            for key, entry in entries:
                self._remember(key, entry)
        return True

    def _attributes(self, entry: VectorEntry) -> Iterator[Attribute]:
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
            self._forget_slices()
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
            self._forget_slices()
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

    def _forget_slices(self) -> None:
        with self._slices_lock:
            self._slices.clear()

    @staticmethod
    def _wanted(filter: Filter) -> tuple[Attribute, ...]:
        """The attributes a vector needs to match ``filter``, in a canonical order."""
        wanted = [("tenant", filter.tenant, ""), ("source", filter.source, "")]
        wanted = [attribute for attribute in wanted if attribute[1]]
        wanted += sorted(("meta", name, value) for name, value in filter.equals.items())
        return tuple(wanted)

    def _candidates(self, wanted: tuple[Attribute, ...]) -> set[int] | None:
        """Keys having every attribute in ``wanted``; None when it is empty (matches all)."""
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
            wanted = self._wanted(filter)
            candidates = self._candidates(wanted)
            if candidates is None:
                return self._approximate(query, min(k, total), None)
            if not candidates:
                return []
            if len(candidates) <= self._exact_max:
                return self._exact(query, k, self._slice(wanted, candidates))
            fetch = min(total, max(2 * k, math.ceil(2 * k * total / len(candidates))))
            hits = self._approximate(query, fetch, candidates)
            if len(hits) >= k or fetch >= total:
                return hits[:k]
            return self._exact(query, k, self._gather(candidates))

    def _approximate(
        self, query: np.ndarray, count: int, candidates: set[int] | None
    ) -> list[tuple[str, float]]:
        matches = self._index.search(query, count)
        return [
            (self._entries[int(key)].id, 1.0 - float(distance))
            for key, distance in zip(matches.keys, matches.distances, strict=True)
            if candidates is None or int(key) in candidates
        ]

    def _slice(self, wanted: tuple[Attribute, ...], candidates: set[int]) -> _Slice:
        """``_gather(candidates)``, kept for the next search with the same filter. Call with
        the read lock held: writes (which forget every slice) then wait for this search."""
        with self._slices_lock:
            cached = self._slices.get(wanted)
            if cached is not None:
                self._slices.move_to_end(wanted)
                return cached
        gathered = self._gather(candidates)
        with self._slices_lock:
            self._slices[wanted] = gathered
            while len(self._slices) > EXACT_SLICES_KEPT:
                self._slices.popitem(last=False)
        return gathered

    def _gather(self, candidates: set[int]) -> _Slice:
        keys = np.fromiter(candidates, dtype=np.uint64, count=len(candidates))
        vectors = self._index.get(keys, dtype="f32")
        matrix = np.vstack(cast(Sequence[np.ndarray], vectors)).astype(np.float32, copy=False)
        return _Slice(keys, matrix, np.linalg.norm(matrix, axis=1))

    def _exact(self, query: np.ndarray, k: int, rows: _Slice) -> list[tuple[str, float]]:
        norms = rows.norms * np.linalg.norm(query)
        norms = np.where(norms == 0.0, 1.0, norms)
        # Not ``matrix @ query``: that is OpenBLAS's gemv, which splits even 2,400 rows over
        # threads; on a machine whose cores the other services also want, the threads wait on
        # each other and the scan took 2-7 ms instead of einsum's single-threaded 0.2 ms.
        similarities = np.einsum("ij,j->i", rows.matrix, query) / norms
        count = min(k, len(rows.keys))
        best = np.argpartition(-similarities, count - 1)[:count]
        best = best[np.argsort(-similarities[best], kind="stable")]
        return [(self._entries[int(rows.keys[i])].id, float(similarities[i])) for i in best]
