"""Sources: discovery of directories, JSONL/BEIR corpora and URL lists; reading one item and
reporting what is wrong with a bad one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragfleet.chunking import ChunkingConfig, ChunkingStrategy
from ragfleet.ingest.domain import IngestSummary, ItemKind, Outcome, SourceItem
from ragfleet.ingest.sources import (
    HTML,
    MARKDOWN,
    PDF,
    ItemError,
    ReadLimits,
    SourceKind,
    discover,
    load_text,
    resolve_kind,
)
from ragfleet.ingest.stages import ITEM_COLUMNS, RowStatus, item_row, read_and_chunk
from ragfleet.runtime.errors import InvalidInput

pytestmark = pytest.mark.unit


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose page shows ``text`` (Helvetica), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Title\n\nSome markdown text.")
    (tmp_path / "sub" / "b.txt").write_text("plain text")
    (tmp_path / "sub" / "c.html").write_text("<h1>Head</h1><p>html body</p>")
    (tmp_path / "d.pdf").write_bytes(minimal_pdf("Portable document words"))
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    return tmp_path


def test_directory_lists_supported_files_in_order_with_types(tree: Path) -> None:
    found = discover(str(tree))
    names = [Path(i.source).name for i in found.items]
    assert names == ["a.md", "d.pdf", "b.txt", "c.html"]
    types = {Path(i.source).name: i.content_type for i in found.items}
    assert types["a.md"] == MARKDOWN and types["c.html"] == HTML and types["d.pdf"] == PDF
    assert found.collection == tree.resolve().as_posix() and not found.errors


def test_pdf_text_is_extracted(tree: Path) -> None:
    item = next(i for i in discover(str(tree)).items if i.source.endswith("d.pdf"))
    text, kind = load_text(item, ReadLimits())
    assert "Portable document words" in text and kind == PDF


def test_jsonl_beir_records_and_bad_lines(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = [
        json.dumps({"_id": "d1", "title": "T1", "text": "first", "metadata": {"year": 2020}}),
        "{not json",
        json.dumps({"title": "no id", "text": "x"}),
        json.dumps({"id": "d2", "text": "second", "content_type": "text/markdown"}),
        json.dumps({"_id": "d1", "text": "duplicate"}),
    ]
    corpus.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    found = discover(str(corpus))
    assert [i.source for i in found.items] == ["d1", "d2"]
    first = found.items[0]
    assert first.kind is ItemKind.INLINE and first.title == "T1"
    assert first.metadata == {"year": "2020", "doc_id": "d1"}
    reasons = dict(found.errors)
    assert reasons["corpus.jsonl:2"].startswith("invalid JSON")
    assert reasons["corpus.jsonl:3"] == "no _id, id or source field"
    assert reasons["corpus.jsonl:5"] == "duplicate id 'd1'"
    assert reasons["corpus.jsonl:6"].startswith("not UTF-8")


def test_url_list_file(tmp_path: Path) -> None:
    listing = tmp_path / "pages.urls"
    listing.write_text("# docs\nhttp://a.example/x\nftp://nope\n\nhttps://b.example/y # c\n")
    found = discover(str(listing))
    assert [i.source for i in found.items] == ["http://a.example/x", "https://b.example/y"]
    assert found.errors == [("pages.urls:3", "not an http(s) URL: 'ftp://nope'")]


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("https://x.example/sitemap.xml", SourceKind.SITEMAP),
        ("https://x.example/page", SourceKind.URLS),
    ],
)
def test_resolve_kind_of_urls(spec: str, kind: SourceKind) -> None:
    assert resolve_kind(spec) is kind


def test_missing_source_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"source: .* neither an http"):
        discover(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"abc\x00\x01\x02garbage", "binary content"),
        ("caf\u00e9".encode("latin-1"), "not valid UTF-8 text"),
        (b"x" * 2048, "exceeds the limit of 1024 bytes"),
        (b"%PDF-1.4 broken", "unreadable PDF"),
    ],
)
def test_bad_files_raise_item_error_with_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    item = SourceItem(source="bad.txt", kind=ItemKind.FILE, locator=str(path))
    with pytest.raises(ItemError, match=reason):
        load_text(item, ReadLimits(max_document_bytes=1024))


def test_unreadable_path_is_an_item_error(tmp_path: Path) -> None:
    item = SourceItem(source="dir.md", kind=ItemKind.FILE, locator=str(tmp_path))
    with pytest.raises(ItemError, match="unreadable"):
        load_text(item, ReadLimits())


def _batch(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    return {name: np.array([r[name] for r in rows], dtype=object) for name in ITEM_COLUMNS}


def test_read_and_chunk_emits_chunks_and_markers(tmp_path: Path) -> None:
    good = SourceItem("good", ItemKind.INLINE, text="word " * 400, title="Good")
    empty = SourceItem("empty", ItemKind.INLINE, text="   ")
    missing = SourceItem("gone.md", ItemKind.FILE, locator=str(tmp_path / "gone.md"))
    config = ChunkingConfig(ChunkingStrategy.CHARACTERS, 500, 50)
    first = read_and_chunk(
        _batch([item_row(good, ""), item_row(empty, ""), item_row(missing, "")]),
        tenant="t",
        chunking=config,
        limits=ReadLimits(),
    )
    statuses = list(first["status"])
    chunks = [i for i, s in enumerate(statuses) if s == RowStatus.CHUNK.value]
    assert len(chunks) == int(first["n_chunks"][chunks[0]]) >= 3
    assert all(str(first["passage"][i]).startswith("Good\n") for i in chunks)
    by_source = {str(first["source"][i]): str(first["reason"][i]) for i in range(len(statuses))}
    assert statuses.count(RowStatus.SKIPPED.value) == 1 and by_source["empty"] == "empty document"
    assert by_source["gone.md"] == "vanished while ingesting"
    digest = str(first["content_hash"][chunks[0]])
    again = read_and_chunk(
        _batch([item_row(good, digest)]), tenant="t", chunking=config, limits=ReadLimits()
    )
    assert list(again["status"]) == [RowStatus.UNCHANGED.value]
    rechunked = read_and_chunk(
        _batch([item_row(good, digest)]),
        tenant="t",
        chunking=ChunkingConfig(ChunkingStrategy.CHARACTERS, 400, 50),
        limits=ReadLimits(),
    )
    assert RowStatus.CHUNK.value in set(rechunked["status"])


def test_summary_counts_and_json() -> None:
    summary = IngestSummary(source="s", documents=4, elapsed_s=2.0)
    summary.count(Outcome.ADDED, "a")
    summary.count(Outcome.UNCHANGED, "b")
    summary.count(Outcome.SKIPPED, "c", "empty document")
    summary.count(Outcome.FAILED, "d", "HTTP 500 Internal Server Error")
    summary.chunks_added = 10
    data = json.loads(summary.to_json())
    assert data["ok"] is False and data["failed"] == 1 and data["chunks_per_s"] == 5.0
    assert data["failures"] == [{"source": "d", "reason": "HTTP 500 Internal Server Error"}]
    assert "failed  d: HTTP 500" in summary.describe()
