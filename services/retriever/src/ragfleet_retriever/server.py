"""Server assembly: the retriever servicer on the shared runtime's server factory."""

from __future__ import annotations

from ragfleet.retriever.v1 import retriever_pb2_grpc
from ragfleet.runtime.server import GrpcService, Servicer, create_server
from ragfleet_retriever.backend import IndexBackend
from ragfleet_retriever.core import Retriever
from ragfleet_retriever.embedded import EmbeddedBackend
from ragfleet_retriever.servicer import RetrieverServicer
from ragfleet_retriever.settings import RetrieverSettings

SERVICE_NAME = "ragfleet.retriever.v1.RetrieverService"


def open_backend(settings: RetrieverSettings) -> IndexBackend:
    """Opens the backend ``settings.backend`` names (blocking; may rebuild derived indexes)."""
    return EmbeddedBackend.open(
        settings.data_dir,
        dimension=settings.dimension,
        vector_dtype=settings.vector_dtype,
        exact_search_max_candidates=settings.exact_search_max_candidates,
    )


def build_core(settings: RetrieverSettings) -> Retriever:
    """A core whose ``load`` opens the configured backend."""
    return Retriever(settings, lambda: open_backend(settings))


def build_server(settings: RetrieverSettings, core: Retriever) -> GrpcService:
    """An unstarted server for ``core``; run ``core.load`` before marking it ready."""
    return create_server(
        settings,
        [
            Servicer(
                RetrieverServicer(core),
                retriever_pb2_grpc.add_RetrieverServiceServicer_to_server,
                SERVICE_NAME,
            )
        ],
    )
