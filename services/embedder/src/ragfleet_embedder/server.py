"""Assembles the embedder's gRPC server from its settings and core."""

from __future__ import annotations

from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.runtime.server import GrpcService, Servicer, create_server
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.servicer import EmbedderServicer
from ragfleet_embedder.settings import EmbedderSettings

SERVICE_NAME: str = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name


def build_server(settings: EmbedderSettings, embedder: Embedder) -> GrpcService:
    """An unstarted server; it answers UNAVAILABLE until ``mark_ready`` after ``embedder.load``."""
    return create_server(
        settings,
        [
            Servicer(
                EmbedderServicer(embedder),
                embedder_pb2_grpc.add_EmbedderServiceServicer_to_server,
                SERVICE_NAME,
            )
        ],
    )
