"""LangChain integration of ragfleet: ``RagfleetRetriever`` (the gateway's Retrieve),
``RagfleetEmbeddings`` (the embedder's Embed) and ``ChatRagfleet`` (the gateway's grounded
Ask, with citations). It talks to the services over gRPC with the base library's stubs and
clients, and imports no service's package."""

from langchain_ragfleet.chat_models import ChatRagfleet
from langchain_ragfleet.embeddings import RagfleetEmbeddings
from langchain_ragfleet.retrievers import RagfleetRetriever

__all__ = ["ChatRagfleet", "RagfleetEmbeddings", "RagfleetRetriever"]
