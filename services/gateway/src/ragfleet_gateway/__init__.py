"""ragfleet gateway: retrieval (through the retriever's hybrid search), reranking, grounded
streaming answers with citations through a fallback chain of models, and ingestion, served over
gRPC (GatewayService) and REST from one ``RagPipeline``."""
