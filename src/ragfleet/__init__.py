"""ragfleet's base library: the generated API stubs, the runtime every service is built on,
the shared domain types and typed clients, and the components services and tools share
(chunking, fusion, reranking models, the ingestion pipeline). It imports no service and no tool."""
