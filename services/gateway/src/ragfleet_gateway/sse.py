"""Server-Sent Events as the REST bridge writes them, for ``POST /v1/ask`` and the
OpenAI-compatible ``POST /v1/chat/completions``: ``EventStream`` sends them, ``message`` frames
one event, ``reported`` turns a failure after streaming began into the error the stream ends
with."""

from __future__ import annotations

import json
from typing import Any

from fastapi.sse import EventSourceResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from ragfleet.runtime.errors import RagfleetError
from ragfleet.runtime.logging import get_logger

log = get_logger(__name__)


class EventStream(EventSourceResponse):
    """A ``text/event-stream`` response that closes its body generator as soon as the response
    ends, a client's disconnect included, so the upstream calls behind it (the generation) are
    cancelled at once. Starlette answers a disconnect by cancelling the task that streams; when
    that task was sending rather than reading the body, the body generator stays suspended at
    its ``yield``, its upstream calls still running, until it is garbage-collected."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def message(data: BaseModel | dict[str, Any] | str, event: str = "") -> bytes:
    """One event: ``data`` as JSON (a string as it is, e.g. ``[DONE]``), named ``event`` unless
    that is empty (OpenAI's streams name none)."""
    if isinstance(data, BaseModel):
        text = data.model_dump_json(exclude_none=True)
    else:
        text = data if isinstance(data, str) else json.dumps(data)
    name = f"event: {event}\n" if event else ""
    return f"{name}data: {text}\n\n".encode()


def reported(exc: Exception) -> RagfleetError:
    """A domain error as it is; anything else is a bug, logged, and reported as INTERNAL."""
    if isinstance(exc, RagfleetError):
        return exc
    log.exception("stream_crashed", error=type(exc).__name__)
    return RagfleetError(f"internal error: {type(exc).__name__}")
