"""The grounded prompt, citation parsing, and the retrieval-only answer."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ragfleet.domain import ChatMessage, Hit
from ragfleet_gateway.domain import Citation, Source

# "[2]", "[1, 3]" and "[1][2]" all cite; a number outside 1..n is the model's mistake, not a source.
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def format_source(source: Source, max_chars: int) -> str:
    """``[n] title — section`` and the passage; the section is left out when the chunker
    already wrote it at the top of the text."""
    chunk = source.hit.chunk
    section = "" if chunk.text.startswith(chunk.section) else chunk.section
    heading = " — ".join(p for p in (chunk.title or chunk.source, section) if p)
    return f"[{source.number}] {heading}\n{_truncate(chunk.text, max_chars)}"


# A passage cut shorter than this tells the model little; the budget's rest is left unused.
_MIN_SHOWN_CHARS = 200


class PromptBuilder:
    """Fills the user template's ``{sources}`` and ``{question}`` placeholders.

    The passages shown are bounded twice: each by ``source_max_chars``, all together by
    ``context_budget_chars`` (in rank order; the last one shortened). On a CPU the model reads
    the prompt at tens of tokens per second, so this budget sets the time to the first token.
    """

    def __init__(
        self,
        template: str,
        system_prompt: str,
        source_max_chars: int,
        context_budget_chars: int | None = None,
    ) -> None:
        self._template = template
        self._system = system_prompt
        self._max_chars = source_max_chars
        self._budget = context_budget_chars or source_max_chars

    def _shown_lengths(self, hits: Sequence[Hit]) -> list[int]:
        """How many characters of each hit's text the prompt shows, for the hits it shows."""
        lengths: list[int] = []
        left = self._budget
        for hit in hits:
            shown = min(len(hit.chunk.text), self._max_chars, left)
            # The best passage is always shown, however small the budget.
            if lengths and (left <= 0 or shown < min(_MIN_SHOWN_CHARS, len(hit.chunk.text))):
                break
            lengths.append(shown)
            left -= shown
        return lengths

    def fit(self, hits: Sequence[Hit]) -> list[Source]:
        """The hits that fit the context budget, numbered [1]..[n] in rank order."""
        count = len(self._shown_lengths(hits))
        return [Source(number, hit) for number, hit in enumerate(hits[:count], start=1)]

    def messages(
        self, question: str, sources: Sequence[Source], history: Sequence[ChatMessage] = ()
    ) -> list[ChatMessage]:
        """The system prompt, the earlier messages (``history``, already fitted to its budget:
        ``fit_history``), then the sources and the question."""
        lengths = self._shown_lengths([s.hit for s in sources])
        context = "\n\n".join(
            format_source(s, limit) for s, limit in zip(sources, lengths, strict=False)
        )
        user = self._template.format(sources=context, question=question)
        system = [ChatMessage("system", self._system)] if self._system else []
        return [*system, *history, ChatMessage("user", user)]


def fit_history(history: Sequence[ChatMessage], budget_chars: int) -> tuple[list[ChatMessage], int]:
    """The newest messages of ``history`` whose contents fit ``budget_chars`` together (oldest
    first, as given), and how many older ones were left out. A message is kept whole or not at
    all: a cut message would put words in a speaker's mouth."""
    used = 0
    kept = 0
    for message in reversed(history):
        used += len(message.content)
        if used > budget_chars:
            break
        kept += 1
    return list(history[len(history) - kept :]), len(history) - kept


def cited_numbers(text: str, count: int) -> list[int]:
    """Source numbers cited in ``text`` that exist (1..count), in order of first citation."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(text):
        for number in (int(n) for n in match.group(1).split(",")):
            if 1 <= number <= count:
                seen.setdefault(number, None)
    return list(seen)


def _citation(source: Source) -> Citation:
    chunk = source.hit.chunk
    return Citation(
        number=source.number,
        chunk_id=chunk.id,
        source=chunk.source,
        title=chunk.title,
        section=chunk.section,
    )


def resolve_citations(text: str, sources: Sequence[Source]) -> list[Citation]:
    """The sources the answer cites with [n] markers; nothing when it cites nothing."""
    by_number = {s.number: s for s in sources}
    return [_citation(by_number[n]) for n in cited_numbers(text, len(sources)) if n in by_number]


_WORD = re.compile(r"\w+")
# Words too common to say which passage a sentence came from.
_STOPWORDS = frozenset(
    _WORD.findall(
        "the and for are was were that this with from into onto its their there then than what "
        "which when where who whom whose why how does did doing done has have had can could may "
        "might must shall should will would not nor but also each every some any all one two "
        "both only own same other such very just more most much many few they them these those "
        "you your our his her about above after again against before below between during "
        "over under until while use uses used using based provided",
    )
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# A sentence is attributed to a source holding at least this share of its distinctive words
# (a third: answers paraphrase, and the crude stems miss some of what they share).
_SUPPORT = 1 / 3


def _terms(text: str) -> set[str]:
    """Content words, crudely stemmed (the first five letters) so "listens" meets "listen";
    numbers are kept whole."""
    terms = set()
    for word in (w.lower() for w in _WORD.findall(text)):
        if word.isdigit():
            terms.add(word)
        elif len(word) > 2 and word not in _STOPWORDS:
            terms.add(word[:5])
    return terms


def _support(sentence: set[str], passage: set[str]) -> float:
    return len(sentence & passage) / len(sentence) if sentence else 0.0


def attribute_citations(text: str, question: str, sources: Sequence[Source]) -> list[Citation]:
    """The sources that support the answer, sentence by sentence.

    Small models often leave out the [n] markers or put a wrong one, so a marker is kept only
    when its passage holds at least a third of the sentence's distinctive words (those not already
    in the question: the answer's facts, not the question's topic); a sentence with no such
    marker is attributed to the best-supporting passage when one clears the same bar. A
    sentence no passage supports cites nothing.
    """
    asked = _terms(question)
    passages = {s.number: _terms(s.hit.chunk.text) | _terms(s.hit.chunk.section) for s in sources}
    by_number = {s.number: s for s in sources}
    cited: dict[int, None] = {}
    for sentence in _SENTENCE_END.split(text):
        words = _terms(_CITATION.sub(" ", sentence))
        distinctive = (words - asked) or words
        if not distinctive:
            continue
        marked = [
            n
            for n in cited_numbers(sentence, len(sources))
            if n in passages and _support(distinctive, passages[n]) >= _SUPPORT
        ]
        if not marked:
            best = max(passages, key=lambda n: (_support(distinctive, passages[n]), -n), default=0)
            if best and _support(distinctive, passages[best]) >= _SUPPORT:
                marked = [best]
        for n in marked:
            cited.setdefault(n, None)
    return [_citation(by_number[n]) for n in cited]


def _normalized(text: str) -> str:
    return " ".join(_CITATION.sub(" ", text).lower().replace(".", " ").split())


def is_refusal(answer: str, refusal: str) -> bool:
    """Whether ``answer`` declines with the ``refusal`` text, ignoring case, full stops,
    spacing and citation markers the model may have added."""
    expected = _normalized(refusal)
    return bool(expected) and _normalized(answer).startswith(expected)


def retrieval_only_text(sources: Sequence[Source], reason: str, max_chars: int) -> str:
    """An answer made of the top passages, for when no model could answer."""
    passages = "\n\n".join(format_source(s, max_chars) for s in sources)
    return f"No generated answer ({reason}). The most relevant passages:\n\n{passages}"
