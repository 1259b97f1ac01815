"""The embedder's domain core: validation, query/passage prefixes, batching. No gRPC here."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ragfleet.runtime.errors import InvalidInput, Unavailable
from ragfleet.runtime.logging import get_logger
from ragfleet_embedder.batching import DynamicBatcher
from ragfleet_embedder.model import EmbeddingModel
from ragfleet_embedder.settings import EmbedderSettings

log = get_logger(__name__)


class InputType(enum.Enum):
    """What a text is; models such as e5 embed queries and passages with different prefixes."""

    QUERY = "query"
    PASSAGE = "passage"


@dataclass(frozen=True)
class Embeddings:
    """One unit-length (when normalising) float32 row per input text, in input order."""

    vectors: NDArray[np.float32]
    model: str
    dimension: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dimension: int
    max_sequence_length: int
    max_batch_texts: int
    max_text_chars: int


class Embedder:
    """Embeds texts with a model loaded by ``load``, batching concurrent calls together.

    ``model_loader`` blocks (it is run in a worker thread) and raises ``ModelLoadError`` when the
    model cannot be loaded. Until ``load`` has finished, ``embed`` and ``model_info`` raise
    ``Unavailable``.
    """

    def __init__(
        self, settings: EmbedderSettings, model_loader: Callable[[], EmbeddingModel]
    ) -> None:
        self._settings = settings
        self._model_loader = model_loader
        self._model: EmbeddingModel | None = None
        self._batcher: DynamicBatcher | None = None
        self._prefixes = {
            InputType.QUERY: settings.query_prefix,
            InputType.PASSAGE: settings.passage_prefix,
        }

    async def load(self) -> None:
        """Loads the model off the event loop and starts batching."""
        if self._model is not None:
            raise RuntimeError("the embedder is already loaded")
        model = await asyncio.to_thread(self._model_loader)
        batcher = DynamicBatcher(
            model.encode,
            max_batch_size=self._settings.batch_size,
            max_wait_s=self._settings.max_batch_wait_ms / 1000,
        )
        batcher.start()
        self._model, self._batcher = model, batcher
        log.info(
            "model_loaded",
            model=model.name,
            dimension=model.dimension,
            max_sequence_length=model.max_sequence_length,
        )

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    async def embed(self, texts: Sequence[str], input_type: InputType) -> Embeddings:
        """Embeds ``texts`` as queries or passages.

        Raises ``InvalidInput`` when ``texts`` is empty or holds more than ``max_batch_texts``
        texts, or when a text is empty, whitespace only, or longer than ``max_text_chars``.
        """
        self._validate(texts)
        model, batcher = self._require_loaded()
        prefix = self._prefixes[input_type]
        vectors = await batcher.submit([prefix + text for text in texts] if prefix else texts)
        return Embeddings(vectors=vectors, model=model.name, dimension=model.dimension)

    def model_info(self) -> ModelInfo:
        model, _ = self._require_loaded()
        return ModelInfo(
            name=model.name,
            dimension=model.dimension,
            max_sequence_length=model.max_sequence_length,
            max_batch_texts=self._settings.max_batch_texts,
            max_text_chars=self._settings.max_text_chars,
        )

    def _validate(self, texts: Sequence[str]) -> None:
        limit = self._settings.max_batch_texts
        if not texts:
            raise InvalidInput("texts must hold at least one text")
        if len(texts) > limit:
            raise InvalidInput(
                f"texts holds {len(texts)} texts; the limit is {limit} (max_batch_texts)"
            )
        max_chars = self._settings.max_text_chars
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"texts[{index}] is empty or whitespace only")
            if len(text) > max_chars:
                raise InvalidInput(
                    f"texts[{index}] has {len(text)} characters; the limit is {max_chars} "
                    "(max_text_chars)"
                )

    def _require_loaded(self) -> tuple[EmbeddingModel, DynamicBatcher]:
        if self._model is None or self._batcher is None:
            raise Unavailable("the embedding model is still loading")
        return self._model, self._batcher
