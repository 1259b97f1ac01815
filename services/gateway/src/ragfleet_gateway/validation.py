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
- ``history``: at most ``max_history_messages`` (64), each with role user or assistant and a
  non-empty ``content`` of at most ``max_history_message_chars`` (8000).
- ``documents``: 1..``max_ingest_documents`` (256), each with a non-empty ``source`` (unique in
  the request) and ``text``, at most ``max_ingest_bytes`` (20 MiB) of UTF-8 text in all, and a
  ``content_type`` of text/markdown, text/plain, text/html or empty.
- Every text field: valid Unicode without NUL (a lone UTF-16 surrogate cannot be stored or
  encoded); short fields (question, source, title, tenant, metadata, filters) also without other
  control characters than tab and line breaks. Messages quote at most ``QUOTE_CHARS`` of a value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from ragfleet.domain import ChatMessage, SearchMode, check_metadata
from ragfleet.fusion import FusionMethod, check_options
from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.domain import AskRequest, Document, RetrievalOptions, RetrievalRequest
from ragfleet_gateway.settings import GatewaySettings

CONTENT_TYPES = ("text/markdown", "text/plain", "text/html")
HISTORY_ROLES = ("user", "assistant")
MAX_TEMPERATURE = 2.0
QUOTE_CHARS = 60

# Never valid: NUL, and lone surrogates (JSON can carry "\ud800"; UTF-8 cannot encode it).
_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")
# Also refused in short fields: the other C0 controls and DEL (tab and line breaks are text).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def quote(value: str) -> str:
    """``value`` for an error message: at most ``QUOTE_CHARS`` characters of it."""
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return f"{value[:QUOTE_CHARS]!r}… ({len(value)} characters)"


def check_text(value: str, field: str, *, short: bool = True) -> None:
    """``InvalidInput`` naming ``field`` and the position when ``value`` holds a character no
    text field may hold (see the module)."""
    match = (_CONTROL if short else _UNENCODABLE).search(value)
    if match is not None:
        char = match.group()
        raise InvalidInput(
            f"{field} holds the character U+{ord(char):04X} at position {match.start()}, which "
            f"is not allowed{' in text' if not short else ''}: send valid Unicode text without "
            "NUL or control characters"
        )


def check_labels(values: Mapping[str, str], field: str) -> None:
    """Metadata (of a document or a filter): text any service can carry, keys and values the
    index can hold (``ragfleet.domain.check_metadata``), checked before anything changes."""
    for key, value in values.items():
        check_text(key, f"{field} key {quote(key)}")
        check_text(value, f"{field}[{quote(key)}]")
    check_metadata(field, values)


def check_question(text: str, settings: GatewaySettings, field: str = "question") -> str:
    check_text(text, field)
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
    check_text(request.tenant, "retrieval.tenant")
    check_labels(request.equals, "retrieval.filter")
    top_k = settings.default_top_k if request.top_k is None else request.top_k
    if not 1 <= top_k <= settings.max_top_k:
        raise InvalidInput(
            f"retrieval.top_k must be between 1 and {settings.max_top_k}; got {request.top_k}"
        )
    mode = _choice(request.mode, SearchMode, settings.default_mode, "retrieval.mode")
    fusion = (
        _choice(request.fusion, FusionMethod, request.fusion, "retrieval.fusion")
        if request.fusion
        else None
    )
    try:
        check_options(request.rrf_k or None, request.dense_weight)
    except InvalidInput as exc:
        raise InvalidInput(f"retrieval.fusion.{exc.message}") from None
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
        rrf_k=request.rrf_k or None,
        dense_weight=request.dense_weight,
        tenant=request.tenant,
        equals=dict(request.equals),
        rerank_depth=depth,
    )


def check_message(role: str, content: str, settings: GatewaySettings, field: str) -> None:
    """One earlier message of a conversation: a user or assistant role, text any service can
    carry, not empty, at most ``max_history_message_chars``."""
    if role not in HISTORY_ROLES:
        raise InvalidInput(
            f"{field}.role must be one of {', '.join(HISTORY_ROLES)}; got {quote(role)}"
        )
    check_text(content, f"{field}.content", short=False)
    if not content.strip():
        raise InvalidInput(f"{field}.content must not be empty")
    if len(content) > settings.max_history_message_chars:
        raise InvalidInput(
            f"{field}.content has {len(content)} characters; the limit is "
            f"{settings.max_history_message_chars}"
        )


def check_history(history: Sequence[ChatMessage], settings: GatewaySettings) -> None:
    if len(history) > settings.max_history_messages:
        raise InvalidInput(
            f"history has {len(history)} messages; the limit is {settings.max_history_messages}"
        )
    for i, message in enumerate(history):
        check_message(message.role, message.content, settings, f"history[{i}]")


def invalid_body(errors: Sequence[Mapping[str, Any]]) -> InvalidInput:
    """A request body that does not match its schema (pydantic's errors), as one message that
    names each field, e.g. ``retrieval.top_k: Input should be a valid integer``."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors
    )
    return InvalidInput(problems)


def check_ask(request: AskRequest, settings: GatewaySettings) -> RetrievalOptions:
    """Validates an ask request; returns its resolved retrieval options."""
    check_question(request.question, settings)
    check_history(request.history, settings)
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
        check_text(doc.source, f"documents[{i}].source")
        check_text(doc.title, f"documents[{i}].title")
        check_text(doc.text, f"documents[{i}].text", short=False)
        check_labels(doc.metadata, f"documents[{i}].metadata")
        if not doc.source.strip():
            raise InvalidInput(f"documents[{i}].source must not be empty")
        if doc.source in seen:
            raise InvalidInput(
                f"documents[{i}].source repeats documents[{seen[doc.source]}].source "
                f"{quote(doc.source)}; each source may appear once per request"
            )
        seen[doc.source] = i
        if not doc.text.strip():
            raise InvalidInput(f"documents[{i}].text must not be empty")
        if doc.content_type and doc.content_type.lower() not in CONTENT_TYPES:
            raise InvalidInput(
                f"documents[{i}].content_type must be one of {', '.join(CONTENT_TYPES)} or "
                f"empty; got {quote(doc.content_type)}"
            )
        total += len(doc.text.encode("utf-8"))
    if total > settings.max_ingest_bytes:
        raise InvalidInput(
            f"documents hold {total} bytes of text; the limit is {settings.max_ingest_bytes} "
            f"per request"
        )
