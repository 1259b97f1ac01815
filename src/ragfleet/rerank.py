"""Rerankers: score (query, passage) pairs so that the first-stage candidates can be reordered.

``Reranker.score(query, passages)`` returns one float per passage, in passage order, higher meaning
more relevant; scores are comparable within one call only. Callers reorder with a *stable* sort on
the score, so passages that tie (the LLM scorer gives only 1.0 or 0.0) keep their first-stage order.

``load_reranker(spec)`` builds one from a spec string:

- ``cross-encoder:<folder>``: a sentence-transformers ``CrossEncoder`` saved in a local folder
  (``ragfleet train reranker`` makes one; nothing is fetched from a hub);
- ``llm:<address>[/<model>]``: asks the generator at ``address`` (the Ray Serve gRPC proxy,
  application ``generator``) whether each passage answers the query, at temperature 0;
- ``overlap:``: the share of the query's words found in the passage; deterministic, no model, a
  floor that any learned reranker must beat and the fake used by unit tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ragfleet.runtime.errors import InvalidInput, ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

_WORD = re.compile(r"\w+")


class Reranker(Protocol):
    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage, in order; higher is more relevant. Blocks."""
        ...


class RerankerKind(StrEnum):
    CROSS_ENCODER = "cross-encoder"
    LLM = "llm"
    OVERLAP = "overlap"


class OverlapReranker:
    """Scores a passage by the share of the query's distinct lower-cased words it contains."""

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        terms = set(_WORD.findall(query.lower()))
        if not terms:
            return [0.0] * len(passages)
        return [len(terms & set(_WORD.findall(p.lower()))) / len(terms) for p in passages]


class CrossEncoderReranker:
    """A cross-encoder read from a local folder; each ``score`` call runs the model over all
    passages in batches of ``batch_size`` pairs, truncating each pair to ``max_length`` tokens.
    Not thread-safe: call ``score`` from one thread at a time."""

    def __init__(self, model: CrossEncoder, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise InvalidInput(f"batch_size: must be at least 1, got {batch_size}")
        self._model = model
        self._batch_size = batch_size

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int | None = None,
        allow_download: bool = False,
    ) -> CrossEncoderReranker:
        """Loads the cross-encoder in the folder ``path``, offline. With ``allow_download``, a
        ``path`` that does not exist is read as a Hugging Face Hub id (``org/name``) and fetched
        into the Hugging Face cache. Blocks for seconds (minutes when downloading). Raises
        ``ModelLoadError`` naming how to produce one when the model is missing or unreadable."""
        from_hub = allow_download and not path.exists()
        if not from_hub and not (path / "config.json").is_file():
            raise ModelLoadError(
                f"no cross-encoder in {path} (config.json missing); train one with "
                f"'ragfleet train reranker --dataset DIR --out {path}'"
            )
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise ModelLoadError(
                "the cross-encoder reranker needs sentence-transformers "
                "(pip install -e services/embedder)"
            ) from exc
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            model = CrossEncoder(
                str(path), device=device, local_files_only=not from_hub, max_length=max_length
            )
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the cross-encoder in {path} ({type(exc).__name__}: {exc})"
            ) from exc
        return cls(model, batch_size)

    @property
    def max_length(self) -> int:
        return int(self._model.max_length or 0)

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        scores = self._model.predict(
            [(query, passage) for passage in passages],
            batch_size=self._batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(s) for s in scores]


LLM_SYSTEM_PROMPT = (
    "You judge search results. Given a query and a passage, answer 'yes' if the passage "
    "contains information that answers, supports or refutes the query, otherwise 'no'. "
    "Reply with one word: yes or no."
)

Judge = Callable[[str, str], str]
"""Sends (system prompt, user prompt) to a language model and returns its reply text."""


class LlmRelevanceReranker:
    """Asks a language model, one passage at a time, whether the passage is relevant.

    A reply starting with "yes" scores 1.0, anything else 0.0: the generator API returns text,
    not token probabilities, so a graded score is not available. Ties keep the first-stage
    order (callers sort stably). Slow on CPU: a prefill of the whole passage per call.
    """

    def __init__(self, judge: Judge, max_passage_chars: int = 1200) -> None:
        if max_passage_chars < 1:
            raise InvalidInput(f"max_passage_chars: must be at least 1, got {max_passage_chars}")
        self._judge = judge
        self._max_passage_chars = max_passage_chars

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        scores = []
        for passage in passages:
            prompt = (
                f"Query: {query}\n\nPassage: {passage[: self._max_passage_chars]}\n\n"
                "Is the passage relevant to the query? Answer yes or no."
            )
            reply = self._judge(LLM_SYSTEM_PROMPT, prompt)
            scores.append(1.0 if reply.strip().lower().startswith("yes") else 0.0)
        return scores


def generator_judge(
    address: str, model: str = "", application: str = "generator", timeout_s: float = 60.0
) -> Judge:
    """A ``Judge`` that calls ``GeneratorService.Generate`` at ``address`` through the Ray Serve
    gRPC proxy (routed by the ``application`` metadata key), temperature 0, at most 3 tokens."""
    from ragfleet.clients import Blocking, GeneratorClient
    from ragfleet.domain import ChatMessage, GenerationParams
    from ragfleet.runtime.channels import Deadline

    runner = Blocking()
    client = runner.connect(lambda: GeneratorClient.connect(address, application=application))

    def judge(system: str, user: str) -> str:
        params = GenerationParams(
            model=model,
            messages=[ChatMessage("system", system), ChatMessage("user", user)],
            max_tokens=3,
            temperature=0.0,
        )
        return runner.run(client.complete(params, Deadline.after(timeout_s)))

    return judge


def _cross_encoder(argument: str) -> Reranker:
    if not argument:
        raise InvalidInput(
            "reranker: 'cross-encoder:' needs a folder, e.g. cross-encoder:/models/ce"
        )
    return CrossEncoderReranker.load(Path(argument))


def _llm(argument: str) -> Reranker:
    address, _, model = argument.partition("/")
    if not address:
        raise InvalidInput(
            "reranker: 'llm:' needs the generator's address, e.g. llm:localhost:9000"
        )
    return LlmRelevanceReranker(generator_judge(address, model))


def _overlap(argument: str) -> Reranker:
    if argument:
        raise InvalidInput(f"reranker: 'overlap:' takes no argument, got {argument!r}")
    return OverlapReranker()


_LOADERS: dict[RerankerKind, Callable[[str], Reranker]] = {
    RerankerKind.CROSS_ENCODER: _cross_encoder,
    RerankerKind.LLM: _llm,
    RerankerKind.OVERLAP: _overlap,
}


def load_reranker(spec: str) -> Reranker:
    """Builds the reranker ``spec`` names (``<kind>:<argument>``, see the module docstring).

    Raises ``InvalidInput`` naming ``reranker`` for a malformed spec or unknown kind, and
    ``ModelLoadError`` when a cross-encoder folder cannot be loaded.
    """
    kind, colon, argument = spec.partition(":")
    known = ", ".join(f"{k.value}:" for k in RerankerKind)
    if not colon:
        raise InvalidInput(f"reranker: {spec!r} is not '<kind>:<argument>'; kinds: {known}")
    try:
        chosen = RerankerKind(kind.strip().lower())
    except ValueError:
        raise InvalidInput(f"reranker: unknown kind {kind!r}; expected one of {known}") from None
    return _LOADERS[chosen](argument.strip())


__all__ = [
    "CrossEncoderReranker",
    "LlmRelevanceReranker",
    "OverlapReranker",
    "Reranker",
    "RerankerKind",
    "generator_judge",
    "load_reranker",
]
