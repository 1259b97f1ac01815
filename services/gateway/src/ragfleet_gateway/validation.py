"""Request validation shared by every front end (gRPC, REST).

Each check raises ``InvalidInput`` whose message names the field and the documented limit:
- ``question`` / ``query``: not empty or whitespace, at most ``max_question_chars`` (2000).
- ``retrieval.top_k``: 1..``max_top_k`` (50); unset means ``default_top_k``.
- ``retrieval.mode``: lexical, dense or hybrid; ``retrieval.fusion``: rrf or weighted.
- ``retrieval.fusion.dense_weight``: in [0, 1]; ``retrieval.fusion.rrf_k``: >= 1 (0 = default).
- ``retrieval.rerank_depth``: 1..``max_rerank_depth`` (100), raised to ``top_k``; unset means
  ``rerank_depth`` (20). ``retrieval.rerank`` unset means the ``rerank`` setting (off).
- ``max_tokens``: 1..``max_tokens_limit`` (2048); unset means the default.
- ``temperature``: in [0, 2].
- ``documents``: 1..``max_ingest_documents`` (256), each with a non-empty ``source`` (unique in
  the request) and ``text``, at most ``max_ingest_bytes`` (20 MiB) of UTF-8 text in all, and a
  ``content_type`` of text/markdown, text/plain, text/html or empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from ragfleet.fusion import FusionMethod
from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.domain import (
    AskRequest,
    Document,
    RetrievalOptions,
    RetrievalRequest,
    SearchMode,
)
from ragfleet_gateway.settings import GatewaySettings

CONTENT_TYPES = ("text/markdown", "text/plain", "text/html")
MAX_TEMPERATURE = 2.0


def check_question(text: str, settings: GatewaySettings, field: str = "question") -> str:
    if not text.strip():
        raise InvalidInput(f"{field} must not be empty")
    if len(text) > settings.max_question_chars:
        raise InvalidInput(
            f"{field} has {len(text)} characters; the limit is {settings.max_question_chars}"
        )
    return text.strip()


_E = TypeVar("_E", SearchMode, FusionMethod)


def _choice(value: str | None, enum: type[_E], default: str, field: str) -> _E:
    raw = default if value is None or value == "" else value
    try:
        return enum(raw.lower())
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidInput(f"{field} must be one of {allowed}; got {raw!r}") from None


def resolve_retrieval(request: RetrievalRequest, settings: GatewaySettings) -> RetrievalOptions:
    """Validates ``request`` and fills in the defaults."""
    top_k = settings.default_top_k if request.top_k is None else request.top_k
    if not 1 <= top_k <= settings.max_top_k:
        raise InvalidInput(
            f"retrieval.top_k must be between 1 and {settings.max_top_k}; got {request.top_k}"
        )
    mode = _choice(request.mode, SearchMode, settings.default_mode, "retrieval.mode")
    fusion = _choice(request.fusion, FusionMethod, settings.default_fusion, "retrieval.fusion")
    weight = settings.default_dense_weight if request.dense_weight is None else request.dense_weight
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise InvalidInput(f"retrieval.fusion.dense_weight must be in [0, 1]; got {weight}")
    rrf_k = settings.default_rrf_k if not request.rrf_k else request.rrf_k
    if rrf_k < 1:
        raise InvalidInput(f"retrieval.fusion.rrf_k must be at least 1; got {request.rrf_k}")
    depth = settings.rerank_depth if request.rerank_depth is None else request.rerank_depth
    if not 1 <= depth <= settings.max_rerank_depth:
        raise InvalidInput(
            f"retrieval.rerank_depth must be between 1 and {settings.max_rerank_depth}; got {depth}"
        )
    rerank = settings.rerank if request.rerank is None else request.rerank
    depth = max(depth, top_k) if rerank else 0
    return RetrievalOptions(
        top_k=top_k,
        mode=mode,
        fusion=fusion,
        rrf_k=rrf_k,
        dense_weight=weight,
        candidate_k=max(settings.candidate_k, top_k, depth),
        tenant=request.tenant,
        equals=dict(request.equals),
        rerank_depth=depth,
    )


def check_ask(request: AskRequest, settings: GatewaySettings) -> RetrievalOptions:
    """Validates an ask request; returns its resolved retrieval options."""
    check_question(request.question, settings)
    if request.max_tokens is not None and not 1 <= request.max_tokens <= settings.max_tokens_limit:
        raise InvalidInput(
            f"max_tokens must be between 1 and {settings.max_tokens_limit} (unset means the "
            f"default); got {request.max_tokens}"
        )
    t = request.temperature
    if t is not None and not (math.isfinite(t) and 0.0 <= t <= MAX_TEMPERATURE):
        raise InvalidInput(f"temperature must be in [0, {MAX_TEMPERATURE}]; got {t}")
    return resolve_retrieval(request.retrieval, settings)


def check_documents(documents: Sequence[Document], settings: GatewaySettings) -> None:
    if not documents:
        raise InvalidInput("documents must not be empty")
    if len(documents) > settings.max_ingest_documents:
        raise InvalidInput(
            f"documents has {len(documents)} entries; the limit is "
            f"{settings.max_ingest_documents} per request"
        )
    total = 0
    seen: dict[str, int] = {}
    for i, doc in enumerate(documents):
        if not doc.source.strip():
            raise InvalidInput(f"documents[{i}].source must not be empty")
        if doc.source in seen:
            raise InvalidInput(
                f"documents[{i}].source repeats documents[{seen[doc.source]}].source "
                f"{doc.source!r}; each source may appear once per request"
            )
        seen[doc.source] = i
        if not doc.text.strip():
            raise InvalidInput(f"documents[{i}].text must not be empty")
        if doc.content_type and doc.content_type.lower() not in CONTENT_TYPES:
            raise InvalidInput(
                f"documents[{i}].content_type must be one of {', '.join(CONTENT_TYPES)} or "
                f"empty; got {doc.content_type!r}"
            )
        total += len(doc.text.encode("utf-8"))
    if total > settings.max_ingest_bytes:
        raise InvalidInput(
            f"documents hold {total} bytes of text; the limit is {settings.max_ingest_bytes} "
            f"per request"
        )
