"""ragfleet embedder: sentence-transformers embeddings over gRPC, batched across callers."""
