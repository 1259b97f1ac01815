"""The OpenSearch backend: BM25 and k-NN in one OpenSearch index, with optional server-side
hybrid search through search pipelines."""

from ragfleet_retriever.opensearch.backend import OpenSearchBackend

__all__ = ["OpenSearchBackend"]
