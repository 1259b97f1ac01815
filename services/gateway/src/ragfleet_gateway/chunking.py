"""Splitting documents into chunks for indexing.

Markdown is split on its headings (LangChain ``MarkdownHeaderTextSplitter``); the heading path
(``"Operations > Shutdown"``) becomes ``Chunk.section`` and is prepended to the chunk's text so
that lexical and dense search both see it. Each section is then cut to ``chunk_size`` characters
with ``chunk_overlap`` (``RecursiveCharacterTextSplitter``: paragraphs, then lines, then words).
HTML headings are turned into Markdown headings and the other tags stripped, so HTML gets
sections too; plain text is only size-split.

Chunk ids are deterministic: the first 32 hex digits of sha256 over tenant, source, chunk index
and chunk text, so re-ingesting unchanged content yields the same ids.
"""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import PurePosixPath

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from ragfleet_gateway.domain import Chunk, Document

MARKDOWN = "text/markdown"
PLAIN = "text/plain"
HTML = "text/html"
SECTION_SEPARATOR = " > "
_HEADER_KEYS = [("#" * n, f"h{n}") for n in range(1, 7)]
_SUFFIXES = {".md": MARKDOWN, ".markdown": MARKDOWN, ".html": HTML, ".htm": HTML}


def chunk_id(tenant: str, source: str, index: int, text: str) -> str:
    digest = hashlib.sha256("\x1f".join((tenant, source, str(index), text)).encode("utf-8"))
    return digest.hexdigest()[:32]


def content_type_of(document: Document) -> str:
    """The document's declared content type, else a guess from the source's suffix."""
    if document.content_type:
        return document.content_type.lower()
    suffix = PurePosixPath(document.source.split("?", 1)[0]).suffix.lower()
    return _SUFFIXES.get(suffix, PLAIN)


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


class DocumentChunker:
    """Turns a ``Document`` into ``Chunk``s (without vectors)."""

    def __init__(self, chunk_size: int = 1000, chunk_overlap: int = 150) -> None:
        if chunk_size < 1 or not 0 <= chunk_overlap < chunk_size:
            raise ValueError("need chunk_size >= 1 and 0 <= chunk_overlap < chunk_size")
        self._headers = MarkdownHeaderTextSplitter(headers_to_split_on=_HEADER_KEYS)
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size, chunk_overlap=chunk_overlap
        )

    def sections(self, document: Document) -> list[tuple[str, str]]:
        """(section path, section text) pairs in document order."""
        kind = content_type_of(document)
        if kind == PLAIN:
            return [("", document.text)]
        markdown = html_to_markdown(document.text) if kind == HTML else document.text
        result = []
        for part in self._headers.split_text(markdown):
            path = SECTION_SEPARATOR.join(
                str(part.metadata[key]) for _, key in _HEADER_KEYS if key in part.metadata
            )
            result.append((path, part.page_content))
        return result

    def chunk(self, document: Document, tenant: str = "") -> list[Chunk]:
        chunks: list[Chunk] = []
        for section, body in self.sections(document):
            for piece in self._splitter.split_text(body):
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
