"""Sources: turning what the user names (a directory, a file, a JSONL or BEIR corpus, a list of
URLs, a sitemap) into ``SourceItem``s, and reading one item into text.

Discovery runs once, on the driver; reading (``load_text``) runs inside the pipeline's workers,
one item at a time, and reports every problem as ``ItemError`` so one bad item never sinks a run.
"""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlparse

import httpx

from ragfleet.ingest.domain import ItemKind, SourceItem
from ragfleet.ingest.urls import UrlPolicy, UrlRefused, fetch_stream
from ragfleet.runtime.errors import InvalidInput

MARKDOWN = "text/markdown"
PLAIN = "text/plain"
HTML = "text/html"
PDF = "application/pdf"

FILE_TYPES = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": PLAIN,
    ".text": PLAIN,
    ".rst": PLAIN,
    ".html": HTML,
    ".htm": HTML,
    ".pdf": PDF,
}
# The largest document read, in bytes, before parsing. Bigger ones are reported and skipped so
# one runaway file cannot exhaust a worker's memory; raise it with --max-document-mb.
DEFAULT_MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
DEFAULT_HTTP_TIMEOUT_S = 10.0
_SITEMAP_DEPTH = 3


class ItemError(Exception):
    """Why one item could not be read or parsed; the run reports it and goes on."""


class SourceKind(StrEnum):
    AUTO = "auto"
    DIRECTORY = "directory"
    FILE = "file"
    JSONL = "jsonl"
    URLS = "urls"
    SITEMAP = "sitemap"


@dataclass(frozen=True)
class ReadLimits:
    """``http_timeout_s`` bounds a whole fetch (redirects and body included); ``url_policy``,
    when set, says which URLs may be fetched (``ragfleet.ingest.urls``)."""

    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S
    url_policy: UrlPolicy | None = None

    def __post_init__(self) -> None:
        if self.max_document_bytes < 1:
            raise ValueError("max_document_bytes must be positive")
        if self.http_timeout_s <= 0:
            raise ValueError("http_timeout_s must be positive")


@dataclass(frozen=True)
class Discovery:
    """The items of a source. ``collection`` names the source in the manifest (``--sync``
    deletes documents of the same collection that are no longer listed); ``errors`` are
    items that could not even be listed (a malformed JSONL line)."""

    collection: str
    items: list[SourceItem]
    errors: list[tuple[str, str]]


def is_url(spec: str) -> bool:
    return urlparse(spec).scheme in ("http", "https")


def resolve_kind(spec: str, kind: SourceKind = SourceKind.AUTO) -> SourceKind:
    """``AUTO``: an http(s) URL is a sitemap when its path ends in ``.xml``, else one page;
    a directory is walked; ``*.jsonl`` is a JSONL/BEIR corpus; ``*.urls`` a list of URLs; any
    other file is one document."""
    if kind is not SourceKind.AUTO:
        return kind
    if is_url(spec):
        return SourceKind.SITEMAP if urlparse(spec).path.endswith(".xml") else SourceKind.URLS
    path = Path(spec)
    if path.is_dir():
        return SourceKind.DIRECTORY
    if not path.exists():
        raise InvalidInput(f"source: {spec} is neither an http(s) URL nor an existing path")
    if path.suffix.lower() == ".jsonl":
        return SourceKind.JSONL
    if path.suffix.lower() == ".urls":
        return SourceKind.URLS
    return SourceKind.FILE


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _title_of(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").capitalize()


def _file_item(path: Path, name: str) -> SourceItem:
    return SourceItem(
        source=name,
        kind=ItemKind.FILE,
        locator=str(path),
        content_type=FILE_TYPES.get(path.suffix.lower(), PLAIN),
        title=_title_of(path),
    )


def _discover_directory(spec: str, limits: ReadLimits) -> Discovery:
    root = Path(spec).resolve()
    if not root.is_dir():
        raise InvalidInput(f"source: {spec} is not a directory")
    # Sources are named relative to the working directory when the root lies under it, so
    # `ragfleet ingest docs` cites "docs/operations.md" as the old CLI did.
    base = Path.cwd() if root.is_relative_to(Path.cwd()) else root
    items = [
        _file_item(path, _relative_name(path, base))
        for path in sorted(root.rglob("*"))
        if path.suffix.lower() in FILE_TYPES and not path.is_dir()
    ]
    return Discovery(root.as_posix(), items, [])


def _discover_file(spec: str, limits: ReadLimits) -> Discovery:
    path = Path(spec).resolve()
    if not path.is_file():
        raise InvalidInput(f"source: {spec} is not a file")
    base = Path.cwd() if path.is_relative_to(Path.cwd()) else path.parent
    return Discovery(path.as_posix(), [_file_item(path, _relative_name(path, base))], [])


def _jsonl_item(line: str, number: int) -> SourceItem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ItemError(f"invalid JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise ItemError("not a JSON object")
    doc_id = record.get("_id", record.get("id", record.get("source")))
    if doc_id is None or str(doc_id) == "":
        raise ItemError("no _id, id or source field")
    text = record.get("text", "")
    if not isinstance(text, str):
        raise ItemError("text is not a string")
    raw_meta = record.get("metadata") or {}
    metadata = (
        {str(k): str(v) for k, v in raw_meta.items() if isinstance(v, str | int | float | bool)}
        if isinstance(raw_meta, dict)
        else {}
    )
    return SourceItem(
        source=str(doc_id),
        kind=ItemKind.INLINE,
        content_type=str(record.get("content_type") or PLAIN),
        title=str(record.get("title") or ""),
        text=text,
        metadata={**metadata, "doc_id": str(doc_id)},
    )


def _discover_jsonl(spec: str, limits: ReadLimits) -> Discovery:
    """One document per line: BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``) or any
    JSONL with ``id``/``source``, ``text`` and optional ``title``, ``content_type``,
    ``metadata``. The record id is the document's source name."""
    path = Path(spec).resolve()
    items: list[SourceItem] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path.name}:{number}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                item = _jsonl_item(line, number)
            except UnicodeDecodeError as exc:
                errors.append((where, f"not UTF-8: {exc.reason} at byte {exc.start}"))
                continue
            except ItemError as exc:
                errors.append((where, str(exc)))
                continue
            if len(item.text.encode("utf-8")) > limits.max_document_bytes:
                errors.append((item.source, _too_big(len(item.text.encode()), limits)))
                continue
            if item.source in seen:
                errors.append((where, f"duplicate id {item.source!r}"))
                continue
            seen.add(item.source)
            items.append(item)
    return Discovery(path.as_posix(), items, errors)


def _url_item(url: str) -> SourceItem:
    return SourceItem(source=url, kind=ItemKind.URL, locator=url)


def _discover_urls(spec: str, limits: ReadLimits) -> Discovery:
    """One http(s) URL, or a local file listing one URL per line (``#`` starts a comment)."""
    if is_url(spec):
        return Discovery(spec, [_url_item(spec)], [])
    path = Path(spec).resolve()
    items: list[SourceItem] = []
    errors: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        url = line.split("#", 1)[0].strip()
        if not url:
            continue
        if is_url(url):
            items.append(_url_item(url))
        else:
            errors.append((f"{path.name}:{number}", f"not an http(s) URL: {url!r}"))
    unique = list({item.source: item for item in items}.values())
    return Discovery(path.as_posix(), unique, errors)


def _sitemap_locations(body: bytes) -> tuple[list[str], list[str]]:
    """(page URLs, nested sitemap URLs) of a sitemap or sitemap index."""
    root = ET.fromstring(body)
    pages: list[str] = []
    nested: list[str] = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "loc" or not element.text:
            continue
        target = nested if root.tag.rsplit("}", 1)[-1] == "sitemapindex" else pages
        target.append(element.text.strip())
    return pages, nested


def _discover_sitemap(spec: str, limits: ReadLimits) -> Discovery:
    """The pages of a sitemap (a URL or a local file), following sitemap indexes a few levels."""
    pages: list[str] = []
    errors: list[tuple[str, str]] = []
    pending = [(spec, 0)]
    with httpx.Client(timeout=limits.http_timeout_s) as client:
        while pending:
            where, depth = pending.pop(0)
            try:
                body = (
                    _fetch(client, where, limits)[0] if is_url(where) else Path(where).read_bytes()
                )
                found, nested = _sitemap_locations(body)
            except (ItemError, OSError, ET.ParseError) as exc:
                if where == spec:
                    raise InvalidInput(f"source: cannot read the sitemap {spec}: {exc}") from exc
                errors.append((where, f"sitemap: {exc}"))
                continue
            pages += found
            pending += [(url, depth + 1) for url in nested if depth + 1 <= _SITEMAP_DEPTH]
    unique = list(dict.fromkeys(p for p in pages if is_url(p)))
    return Discovery(spec, [_url_item(u) for u in unique], errors)


_DISCOVERERS: dict[SourceKind, Callable[[str, ReadLimits], Discovery]] = {
    SourceKind.DIRECTORY: _discover_directory,
    SourceKind.FILE: _discover_file,
    SourceKind.JSONL: _discover_jsonl,
    SourceKind.URLS: _discover_urls,
    SourceKind.SITEMAP: _discover_sitemap,
}


def discover(
    spec: str, kind: SourceKind = SourceKind.AUTO, limits: ReadLimits | None = None
) -> Discovery:
    """Lists the items of ``spec``. Raises ``InvalidInput`` when the source itself is unusable
    (missing, unreadable sitemap); problems with single items end up in ``errors``."""
    resolved = resolve_kind(spec, kind)
    return _DISCOVERERS[resolved](spec, limits or ReadLimits())


# --- reading one item --------------------------------------------------------------------
def _too_big(size: int, limits: ReadLimits) -> str:
    return (
        f"document of {size} bytes exceeds the limit of {limits.max_document_bytes} bytes "
        "(max_document_bytes)"
    )


def _fetch(client: httpx.Client, url: str, limits: ReadLimits) -> tuple[bytes, str, str]:
    """(body, content type, charset) of ``url``; ``ItemError`` on timeouts, HTTP errors and
    bodies over the size limit."""
    deadline = time.monotonic() + limits.http_timeout_s
    try:
        with fetch_stream(client, url, limits.url_policy, deadline) as response:
            if response.status_code >= 400:
                raise ItemError(f"HTTP {response.status_code} {response.reason_phrase}")
            body = bytearray()
            for part in response.iter_bytes():
                body += part
                if len(body) > limits.max_document_bytes:
                    raise ItemError(_too_big(len(body), limits))
                if time.monotonic() > deadline:
                    raise TimeoutError
            header = response.headers.get("content-type", "")
    except UrlRefused as exc:
        raise ItemError(str(exc)) from None
    except (httpx.TimeoutException, TimeoutError):
        raise ItemError(f"timed out after {limits.http_timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise ItemError(f"{type(exc).__name__}: {exc}") from None
    media, _, params = header.partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset":
            charset = value.strip().strip('"')
    return bytes(body), media.strip().lower(), charset


def _decode(body: bytes, charset: str = "") -> str:
    if b"\x00" in body[:8192]:
        raise ItemError("binary content (NUL bytes), not text")
    try:
        return body.decode(charset or "utf-8")
    except LookupError:
        raise ItemError(f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise ItemError(
            f"not valid {charset or 'UTF-8'} text: {exc.reason} at byte {exc.start}"
        ) from None


def _pdf_text(body: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(body))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise ItemError(f"unreadable PDF: {type(exc).__name__}: {exc}") from None


def _text_of(body: bytes, content_type: str, charset: str = "") -> str:
    if content_type == PDF or body.startswith(b"%PDF-"):
        return _pdf_text(body)
    return _decode(body, charset)


def _read_file(item: SourceItem, limits: ReadLimits) -> tuple[str, str]:
    path = Path(item.locator)
    try:
        size = path.stat().st_size
        if size > limits.max_document_bytes:
            raise ItemError(_too_big(size, limits))
        body = path.read_bytes()
    except FileNotFoundError:
        raise ItemError("vanished while ingesting") from None
    except OSError as exc:
        raise ItemError(f"unreadable: {exc.strerror or type(exc).__name__}") from None
    return _text_of(body, item.content_type), item.content_type


def _content_type_of_url(url: str, media: str) -> str:
    if media in (HTML, "application/xhtml+xml"):
        return HTML
    if media == PDF:
        return PDF
    if media == MARKDOWN or urlparse(url).path.lower().endswith((".md", ".markdown")):
        return MARKDOWN
    if media.startswith("text/") or not media:
        return PLAIN
    raise ItemError(f"unsupported content type {media!r}")


def _read_url(item: SourceItem, limits: ReadLimits) -> tuple[str, str]:
    with httpx.Client(timeout=limits.http_timeout_s) as client:
        body, media, charset = _fetch(client, item.locator, limits)
    content_type = _content_type_of_url(item.locator, media)
    return _text_of(body, content_type, charset), content_type


def _read_inline(item: SourceItem, limits: ReadLimits) -> tuple[str, str]:
    if "\x00" in item.text:
        raise ItemError("binary content (NUL characters), not text")
    size = len(item.text.encode("utf-8"))
    if size > limits.max_document_bytes:
        raise ItemError(_too_big(size, limits))
    return item.text, item.content_type or PLAIN


_READERS: dict[ItemKind, Callable[[SourceItem, ReadLimits], tuple[str, str]]] = {
    ItemKind.FILE: _read_file,
    ItemKind.URL: _read_url,
    ItemKind.INLINE: _read_inline,
}


def load_text(item: SourceItem, limits: ReadLimits) -> tuple[str, str]:
    """(text, content type) of ``item``: files and URLs are read and decoded (UTF-8 unless
    the server names a charset; PDF text via pypdf). Raises ``ItemError`` saying why not."""
    return _READERS[item.kind](item, limits)
