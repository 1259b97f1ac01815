"""The grounded prompt, citation parsing, and the retrieval-only answer."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ragfleet_gateway.domain import ChatMessage, Citation, Source

# "[2]", "[1, 3]" and "[1][2]" all cite; a number outside 1..n is the model's mistake, not a source.
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def format_source(source: Source, max_chars: int) -> str:
    chunk = source.hit.chunk
    heading = " — ".join(p for p in (chunk.title or chunk.source, chunk.section) if p)
    return f"[{source.number}] {heading}\n{_truncate(chunk.text, max_chars)}"


class PromptBuilder:
    """Fills the user template's ``{sources}`` and ``{question}`` placeholders."""

    def __init__(self, template: str, system_prompt: str, source_max_chars: int) -> None:
        self._template = template
        self._system = system_prompt
        self._max_chars = source_max_chars

    def messages(self, question: str, sources: Sequence[Source]) -> list[ChatMessage]:
        context = "\n\n".join(format_source(s, self._max_chars) for s in sources)
        user = self._template.format(sources=context, question=question)
        system = [ChatMessage("system", self._system)] if self._system else []
        return [*system, ChatMessage("user", user)]


def cited_numbers(text: str, count: int) -> list[int]:
    """Source numbers cited in ``text`` that exist (1..count), in order of first citation."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(text):
        for number in (int(n) for n in match.group(1).split(",")):
            if 1 <= number <= count:
                seen.setdefault(number, None)
    return list(seen)


def resolve_citations(text: str, sources: Sequence[Source]) -> list[Citation]:
    """The sources the answer cites; nothing when it cites nothing."""
    by_number = {s.number: s for s in sources}
    return [
        Citation(
            number=n,
            chunk_id=by_number[n].hit.chunk.id,
            source=by_number[n].hit.chunk.source,
            title=by_number[n].hit.chunk.title,
            section=by_number[n].hit.chunk.section,
        )
        for n in cited_numbers(text, len(sources))
        if n in by_number
    ]


def _normalized(text: str) -> str:
    return " ".join(_CITATION.sub(" ", text).lower().replace(".", " ").split())


def is_refusal(answer: str, refusal: str) -> bool:
    """Whether ``answer`` declines with the ``refusal`` text the prompt tells the model to use
    (ignoring case, full stops, spacing and citation markers it may have added)."""
    expected = _normalized(refusal)
    return bool(expected) and _normalized(answer).startswith(expected)


def retrieval_only_text(sources: Sequence[Source], reason: str, max_chars: int) -> str:
    """An answer made of the top passages, for when no model could answer."""
    passages = "\n\n".join(format_source(s, max_chars) for s in sources)
    return f"No generated answer ({reason}). The most relevant passages:\n\n{passages}"
