"""The embedder's domain core: validation, query/passage prefixes, batching, reranking. No gRPC
here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ragfleet.domain import InputType
from ragfleet.rerank import Reranker
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput, Unavailable
from ragfleet.runtime.logging import get_logger
from ragfleet_embedder.batching import DynamicBatcher, model_thread, run_in
from ragfleet_embedder.model import EmbeddingModel
from ragfleet_embedder.settings import EmbedderSettings

log = get_logger(__name__)


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
    reranker: str
    """The reranker's name; empty when none is configured."""


@dataclass(frozen=True)
class RerankScores:
    """One score per passage, in request order; higher is more relevant."""

    scores: list[float]
    model: str


NO_RERANKER = (
    "no reranker is configured: train one with 'ragfleet train reranker --dataset DIR --out "
    "PATH' and set RAGFLEET_EMBEDDER_RERANKER_PATH=PATH"
)


class Embedder:
    """Embeds texts with a model loaded by ``load``, batching concurrent calls together.

    ``model_loader`` and ``reranker_loader`` (optional: without it ``rerank`` raises
    ``FailedPrecondition``) block (they run in a worker thread) and raise ``ModelLoadError``
    when their model cannot be loaded. Until ``load`` has finished, ``embed``, ``rerank`` and
    ``model_info`` raise ``Unavailable``.
    """

    def __init__(
        self,
        settings: EmbedderSettings,
        model_loader: Callable[[], EmbeddingModel],
        reranker_loader: Callable[[], Reranker] | None = None,
        reranker_name: str = "",
    ) -> None:
        self._settings = settings
        self._model_loader = model_loader
        self._reranker_loader = reranker_loader
        self._reranker_name = reranker_name if reranker_loader is not None else ""
        self._reranker: Reranker | None = None
        # Loading, embedding and reranking all run in this one thread: one call at a time (the
        # cross-encoder is not thread-safe), off the loop, on one team of torch threads.
        self._model_thread = model_thread()
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
        model = await run_in(self._model_thread, self._model_loader)
        if self._reranker_loader is not None:
            self._reranker = await run_in(self._model_thread, self._reranker_loader)
            log.info("reranker_loaded", reranker=self._reranker_name)
        batcher = DynamicBatcher(
            model.encode,
            max_batch_size=self._settings.batch_size,
            max_wait_s=self._settings.max_batch_wait_ms / 1000,
            executor=self._model_thread,
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
        self._model_thread.shutdown(wait=False, cancel_futures=True)

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
            reranker=self._reranker_name,
        )

    async def rerank(self, query: str, passages: Sequence[str]) -> RerankScores:
        """Scores each passage's relevance to ``query`` with the configured cross-encoder, in
        batches of ``reranker_batch_size`` pairs.

        Raises ``InvalidInput`` when ``query`` is empty or longer than ``max_text_chars``, when
        ``passages`` is empty or holds more than ``max_rerank_passages``, or when a passage is
        empty or longer than ``max_text_chars``; ``FailedPrecondition`` when no reranker is
        configured.
        """
        self._require_loaded()
        max_chars = self._settings.max_text_chars
        if not query.strip():
            raise InvalidInput("query: must not be empty or whitespace only")
        if len(query) > max_chars:
            raise InvalidInput(
                f"query: has {len(query)} characters; the limit is {max_chars} (max_text_chars)"
            )
        limit = self._settings.max_rerank_passages
        if not passages:
            raise InvalidInput("passages: must hold at least one passage")
        if len(passages) > limit:
            raise InvalidInput(
                f"passages: holds {len(passages)} passages; the limit is {limit} "
                "(max_rerank_passages)"
            )
        for index, passage in enumerate(passages):
            if not passage.strip():
                raise InvalidInput(f"passages[{index}]: is empty or whitespace only")
            if len(passage) > max_chars:
                raise InvalidInput(
                    f"passages[{index}]: has {len(passage)} characters; the limit is "
                    f"{max_chars} (max_text_chars)"
                )
        reranker = self._reranker
        if reranker is None:
            raise FailedPrecondition(NO_RERANKER)
        scores = await run_in(self._model_thread, reranker.score, query, list(passages))
        if len(scores) != len(passages):
            raise RuntimeError(f"the reranker gave {len(scores)} scores for {len(passages)}")
        return RerankScores(scores=scores, model=self._reranker_name)

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
