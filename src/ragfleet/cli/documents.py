"""Reading local files into gateway ``Document`` messages for ingestion."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ragfleet.gateway.v1 import gateway_pb2

CONTENT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
}


def source_name(path: Path) -> str:
    """The path as it will be cited: relative to the working directory when under it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return resolved.as_posix()


def iter_files(root: Path) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself) whose type can be ingested, in a stable order."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in CONTENT_TYPES:
            yield path


def read_document(path: Path) -> gateway_pb2.Document:
    text = path.read_text(encoding="utf-8")
    return gateway_pb2.Document(
        source=source_name(path),
        title=path.stem.replace("-", " ").replace("_", " ").capitalize(),
        text=text,
        content_type=CONTENT_TYPES.get(path.suffix.lower(), "text/plain"),
    )
