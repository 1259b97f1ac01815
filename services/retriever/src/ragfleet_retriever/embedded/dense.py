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

usearch hands vectors back one array per key (10,000 of them: tens of ms), so an ``f32`` index
keeps a copy of every vector and its norm as rows of one matrix (``_Mirror``: the vectors'
memory twice over), and remembers, for the filters searched lately, which rows they select: a
search gathers those rows in one numpy step and scans them. An ``i8`` index, chosen to save
memory, keeps no copy: the vectors of its recent filters stay gathered instead, within a memory
budget. A write forgets only the filters it touches, unless it moves rows.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
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

SLICES_KEPT = 256
"""Filters whose selected rows are remembered (a few bytes per row each)."""
SLICE_CACHE_BYTES = 64 * 1024 * 1024
"""Memory the gathered vectors of recent filters may hold without a ``_Mirror`` (``i8``)."""


@dataclass(frozen=True, slots=True)
class VectorEntry:
    """A vector's id and the attributes filters look at."""

    id: str
    tenant: str
    source: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Slice:
    """What one filter selects: its keys and either their rows in the ``_Mirror`` or, without
    one, their vectors and norms gathered."""

    keys: np.ndarray
    rows: np.ndarray | None = None
    matrix: np.ndarray | None = None
    norms: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + sum(
            a.nbytes for a in (self.rows, self.matrix, self.norms) if a is not None
        )


class _Mirror:
    """Every vector of the index as a float32 row of one matrix, by key, so that any set of
    keys gathers in one numpy indexing step. A removed row is filled with the last one."""

    def __init__(self, dimension: int) -> None:
        self._matrix = np.empty((1024, dimension), dtype=np.float32)
        self._norms = np.empty(1024, dtype=np.float32)
        self._count = 0
        self._row_of: dict[int, int] = {}
        self._key_at: list[int] = []

    def add(self, keys: Sequence[int], vectors: np.ndarray) -> None:
        for key in keys:  # a key added again replaces its vector, as in usearch
            if key in self._row_of:
                self.remove([key])
        needed = self._count + len(keys)
        if needed > len(self._matrix):
            grown = np.empty(
                (max(needed, 2 * len(self._matrix)), self._matrix.shape[1]), np.float32
            )
            grown[: self._count] = self._matrix[: self._count]
            self._matrix = grown
            norms = np.empty(len(grown), np.float32)
            norms[: self._count] = self._norms[: self._count]
            self._norms = norms
        self._matrix[self._count : needed] = vectors
        self._norms[self._count : needed] = np.linalg.norm(vectors, axis=1)
        for offset, key in enumerate(keys):
            self._row_of[key] = self._count + offset
            self._key_at.append(key)
        self._count = needed

    def remove(self, keys: Iterable[int]) -> None:
        for key in keys:
            row = self._row_of.pop(key, None)
            if row is None:
                continue
            last = self._count - 1
            moved = self._key_at.pop()
            if row != last:
                self._matrix[row] = self._matrix[last]
                self._norms[row] = self._norms[last]
                self._key_at[row] = moved
                self._row_of[moved] = row
            self._count = last

    def rows(self, keys: Collection[int]) -> np.ndarray:
        """The rows of ``keys``, in their order; valid until the next removal."""
        row_of = self._row_of
        return np.fromiter([row_of[key] for key in keys], dtype=np.int64, count=len(keys))

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors and norms in ``rows``."""
        return self._matrix[rows], self._norms[rows]


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
        self._slice_bytes = 0
        self._mirror = self._new_mirror()

    def _new_index(self) -> Index:
        return Index(ndim=self.dimension, metric="cos", dtype=self._dtype)

    def _new_mirror(self) -> _Mirror | None:
        # An i8 index is chosen to save memory; a float copy of it would undo that.
        return _Mirror(self.dimension) if self._dtype == "f32" else None

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
        mirror = self._new_mirror()
        if mirror is not None and len(loaded):
            keys = np.asarray(loaded.keys, dtype=np.uint64)
            mirror.add([int(k) for k in keys], np.asarray(loaded.vectors, dtype=np.float32))
        with self._lock.write():
            self._index = loaded
            self._mirror = mirror
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
            replaced = [*removed, *(key for key, _, _ in added)]
            touched = [self._entries[key] for key in replaced if key in self._entries]
            if self._mirror is not None and touched:
                self._forget_slices()  # a removal moves rows of the mirror
            else:
                self._forget_slices([*touched, *(entry for _, _, entry in added)])
            if removed:
                self._index.remove(np.asarray(removed, dtype=np.uint64))
                if self._mirror is not None:
                    self._mirror.remove(removed)
                for key in removed:
                    self._forget(key)
            if vectors is not None:
                keys = [key for key, _, _ in added]
                self._index.add(np.asarray(keys, dtype=np.uint64), vectors)
                if self._mirror is not None:
                    self._mirror.add(keys, vectors)
                for key, _, entry in added:
                    self._remember(key, entry)

    def rebuild(self, batches: Iterable[Sequence[tuple[int, np.ndarray, VectorEntry]]]) -> None:
        """Replaces the index in memory with the vectors in ``batches`` (call ``save``)."""
        with self._lock.write():
            self._index = self._new_index()
            self._mirror = self._new_mirror()
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

    def _forget_slices(self, touched: Sequence[VectorEntry] | None = None) -> None:
        """Drops the cached filters that match any of the ``touched`` entries (every one when
        None): a write to one tenant leaves the others' gathered vectors valid."""
        with self._slices_lock:
            for wanted in list(self._slices):
                if touched is None or any(
                    set(wanted) <= set(self._attributes(entry)) for entry in touched
                ):
                    self._slice_bytes -= self._slices.pop(wanted).nbytes

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
        selected = self._gather(candidates)
        with self._slices_lock:
            if wanted not in self._slices:
                self._slices[wanted] = selected
                self._slice_bytes += selected.nbytes
            while len(self._slices) > 1 and (
                len(self._slices) > SLICES_KEPT
                or (self._mirror is None and self._slice_bytes > SLICE_CACHE_BYTES)
            ):
                self._slice_bytes -= self._slices.popitem(last=False)[1].nbytes
        return selected

    def _gather(self, candidates: set[int]) -> _Slice:
        keys = np.fromiter(candidates, dtype=np.uint64, count=len(candidates))
        if self._mirror is not None:
            return _Slice(keys, rows=self._mirror.rows(candidates))  # the set's order, as keys
        vectors = self._index.get(keys, dtype="f32")
        matrix = np.vstack(cast(Sequence[np.ndarray], vectors)).astype(np.float32, copy=False)
        return _Slice(keys, matrix=matrix, norms=np.linalg.norm(matrix, axis=1))

    def _exact(self, query: np.ndarray, k: int, selected: _Slice) -> list[tuple[str, float]]:
        if selected.rows is not None and self._mirror is not None:
            matrix, norms = self._mirror.gather(selected.rows)
        else:
            assert selected.matrix is not None and selected.norms is not None
            matrix, norms = selected.matrix, selected.norms
        norms = norms * np.linalg.norm(query)
        norms = np.where(norms == 0.0, 1.0, norms)
        # Not ``matrix @ query``: that is OpenBLAS's gemv, which splits even 2,400 rows over
        # threads; on a machine whose cores the other services also want, the threads wait on
        # each other and the scan took 2-7 ms instead of einsum's single-threaded 0.2 ms.
        similarities = np.einsum("ij,j->i", matrix, query) / norms
        count = min(k, len(selected.keys))
        best = np.argpartition(-similarities, count - 1)[:count]
        best = best[np.argsort(-similarities[best], kind="stable")]
        return [(self._entries[int(selected.keys[i])].id, float(similarities[i])) for i in best]
