"""Server assembly: the retriever servicer on the shared runtime's server factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ragfleet.retriever.v1 import retriever_pb2_grpc
from ragfleet.runtime.server import GrpcService, Servicer, create_server
from ragfleet_retriever.backend import IndexBackend
from ragfleet_retriever.core import Retriever
from ragfleet_retriever.embedded import EmbeddedBackend
from ragfleet_retriever.opensearch import OpenSearchBackend
from ragfleet_retriever.opensearch.bodies import IndexLayout
from ragfleet_retriever.opensearch.client import address_of, make_client
from ragfleet_retriever.servicer import RetrieverServicer
from ragfleet_retriever.settings import BackendKind, RetrieverSettings

SERVICE_NAME = "ragfleet.retriever.v1.RetrieverService"


def open_embedded(settings: RetrieverSettings) -> EmbeddedBackend:
    return EmbeddedBackend.open(
        settings.data_dir,
        dimension=settings.dimension,
        vector_dtype=settings.vector_dtype,
        exact_search_max_candidates=settings.exact_search_max_candidates,
    )


def opensearch_layout(settings: RetrieverSettings) -> IndexLayout:
    return IndexLayout(
        index=settings.opensearch_index,
        dimension=settings.dimension,
        engine=settings.opensearch_engine,
        space_type=settings.opensearch_space_type,
        hnsw_m=settings.opensearch_hnsw_m,
        hnsw_ef_construction=settings.opensearch_hnsw_ef_construction,
        hnsw_ef_search=settings.opensearch_hnsw_ef_search,
        shards=settings.opensearch_shards,
        replicas=settings.opensearch_replicas,
    )


def open_opensearch(settings: RetrieverSettings) -> OpenSearchBackend:
    client = make_client(settings)
    try:
        return OpenSearchBackend.open(
            client,
            opensearch_layout(settings),
            address=address_of(settings.opensearch_url),
            refresh=settings.opensearch_refresh,
            hybrid=settings.opensearch_hybrid,
            dense_weight=settings.default_dense_weight,
            rrf_k=settings.default_rrf_k,
            bulk_max_bytes=settings.opensearch_bulk_max_bytes,
            read_from_primary=settings.opensearch_read_from_primary,
            timeout_s=settings.opensearch_timeout_s,
        )
    except BaseException:
        client.close()
        raise


_OPENERS: Mapping[BackendKind, Callable[[RetrieverSettings], IndexBackend]] = {
    BackendKind.EMBEDDED: open_embedded,
    BackendKind.OPENSEARCH: open_opensearch,
}


def open_backend(settings: RetrieverSettings) -> IndexBackend:
    """Opens the backend ``settings.backend`` names (blocking). The embedded backend may
    rebuild derived indexes; the OpenSearch backend fails fast when the cluster is down."""
    return _OPENERS[settings.backend](settings)


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
