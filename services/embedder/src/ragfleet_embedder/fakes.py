"""A deterministic stand-in for the embedding model, for tests that must not load one."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


class FakeEmbeddingModel:
    """Satisfies ``EmbeddingModel``: each text becomes a unit-length bag of hashed words, so
    texts sharing words score higher than texts that do not, and equal texts embed equally.

    Every ``encode`` call's texts are recorded in ``calls``. ``delay_s`` makes each call slow
    (to let concurrent requests pile up); ``error`` makes every call raise it.
    """

    def __init__(
        self,
        dimension: int = 32,
        name: str = "fake-embedder",
        delay_s: float = 0.0,
        error: Exception | None = None,
    ) -> None:
        self._dimension = dimension
        self._name = name
        self.delay_s = delay_s
        self.error = error
        self.calls: list[list[str]] = []
        self._active = 0
        self.max_concurrent_calls = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_sequence_length(self) -> int:
        return 128

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        with self._lock:
            self.calls.append(list(texts))
            self._active += 1
            self.max_concurrent_calls = max(self.max_concurrent_calls, self._active)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.error is not None:
                raise self.error
            return np.stack([self.vector(text) for text in texts])
        finally:
            with self._lock:
                self._active -= 1

    def vector(self, text: str) -> NDArray[np.float32]:
        """The embedding ``encode`` gives ``text``."""
        vector = np.zeros(self._dimension, dtype=np.float32)
        for word in text.lower().split():
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            vector[int.from_bytes(digest, "little") % self._dimension] += 1.0
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector
