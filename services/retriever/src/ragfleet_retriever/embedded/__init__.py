"""The embedded on-disk backend: SQLite as the source of truth, tantivy for BM25, usearch for
dense search."""

from ragfleet_retriever.embedded.backend import EmbeddedBackend

__all__ = ["EmbeddedBackend"]
