"""ragfleet gateway: fan-out retrieval, fusion, grounded streaming answers with citations, and
ingestion, served over gRPC (GatewayService) and REST from one ``RagPipeline``."""
