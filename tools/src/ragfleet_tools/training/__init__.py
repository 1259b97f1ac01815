"""Training of ragfleet's own models (today: the cross-encoder reranker). CPU-friendly, offline."""
