"""What the ingestion pipeline works on and reports: source items, outcomes, the summary.

Free of Ray, gRPC and HTTP so that every door (CLI, gateway RPC, REST job) shares them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class ItemKind(StrEnum):
    """Where an item's bytes come from."""

    FILE = "file"
    URL = "url"
    INLINE = "inline"


@dataclass(frozen=True)
class SourceItem:
    """One document to ingest, before it is read.

    ``source`` names it in the index and the manifest (a path relative to the ingested root, a
    URL, or a JSONL record id); ``locator`` is where to read it (an absolute path or a URL);
    ``text`` holds the content of INLINE items (JSONL records, gateway documents).
    """

    source: str
    kind: ItemKind
    locator: str = ""
    content_type: str = ""
    title: str = ""
    text: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class Outcome(StrEnum):
    """What happened to one document in a run."""

    ADDED = "added"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class ItemReport:
    """A document that was skipped or failed, and why."""

    source: str
    reason: str


@dataclass
class IngestSummary:
    """Counts of one run. ``documents`` is every item the source listed; each ends in exactly
    one of added, replaced, unchanged, skipped or failed. ``deleted`` counts documents removed
    by ``--sync`` because they vanished from the source."""

    source: str = ""
    documents: int = 0
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    chunks_added: int = 0
    chunks_deleted: int = 0
    elapsed_s: float = 0.0
    skipped_items: list[ItemReport] = field(default_factory=list)
    failures: list[ItemReport] = field(default_factory=list)

    def count(self, outcome: Outcome, source: str = "", reason: str = "") -> None:
        if outcome is Outcome.ADDED:
            self.added += 1
        elif outcome is Outcome.REPLACED:
            self.replaced += 1
        elif outcome is Outcome.UNCHANGED:
            self.unchanged += 1
        elif outcome is Outcome.DELETED:
            self.deleted += 1
        elif outcome is Outcome.SKIPPED:
            self.skipped += 1
            self.skipped_items.append(ItemReport(source, reason))
        else:
            self.failed += 1
            self.failures.append(ItemReport(source, reason))

    @property
    def finished(self) -> int:
        """Documents with an outcome so far (vanished ones not included)."""
        return self.added + self.replaced + self.unchanged + self.skipped + self.failed

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def rates(self) -> tuple[float, float]:
        """(documents/s, chunks added/s) over ``elapsed_s``."""
        if self.elapsed_s <= 0:
            return 0.0, 0.0
        return self.finished / self.elapsed_s, self.chunks_added / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        docs_per_s, chunks_per_s = self.rates()
        return {
            **asdict(self),
            "ok": self.ok,
            "documents_per_s": round(docs_per_s, 2),
            "chunks_per_s": round(chunks_per_s, 2),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def describe(self) -> str:
        """Human-readable lines: the totals, then each failure and skip with its reason."""
        docs_per_s, chunks_per_s = self.rates()
        lines = [
            f"ingested {self.documents} documents from {self.source} in {self.elapsed_s:.1f}s: "
            f"{self.added} added, {self.replaced} replaced, {self.unchanged} unchanged, "
            f"{self.deleted} deleted, {self.skipped} skipped, {self.failed} failed; "
            f"{self.chunks_added} chunks added, {self.chunks_deleted} deleted "
            f"({docs_per_s:.1f} documents/s, {chunks_per_s:.1f} chunks/s)"
        ]
        lines += [f"  failed  {r.source}: {r.reason}" for r in self.failures]
        lines += [f"  skipped {r.source}: {r.reason}" for r in self.skipped_items]
        return "\n".join(lines)
