"""Ingestion at scale: sources → Ray Data (read, parse, chunk, embed) → retriever, resumable
and exactly-once through a manifest. See docs/ingestion.md."""

from ragfleet.ingest.domain import IngestSummary, ItemKind, ItemReport, Outcome, SourceItem
from ragfleet.ingest.pipeline import EmbeddingBackend, IngestConfig, run_ingest
from ragfleet.ingest.ray_session import ray_session
from ragfleet.ingest.sources import ReadLimits, SourceKind

__all__ = [
    "EmbeddingBackend",
    "IngestConfig",
    "IngestSummary",
    "ItemKind",
    "ItemReport",
    "Outcome",
    "ReadLimits",
    "SourceItem",
    "SourceKind",
    "ray_session",
    "run_ingest",
]
