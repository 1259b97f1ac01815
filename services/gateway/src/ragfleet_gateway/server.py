"""Builds the gateway's gRPC server and its REST server around one ``RagPipeline``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from ragfleet.gateway.v1 import gateway_pb2_grpc
from ragfleet.runtime.server import GrpcService, Servicer, create_server
from ragfleet_gateway.auth import Authenticator, grpc_authenticate
from ragfleet_gateway.ingest_jobs import IngestJobs
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.servicer import GatewayServicer
from ragfleet_gateway.settings import GatewaySettings

SERVICE_NAME = "ragfleet.gateway.v1.GatewayService"


def build_server(
    settings: GatewaySettings,
    pipeline: RagPipeline,
    jobs: IngestJobs | None = None,
    authenticator: Authenticator | None = None,
) -> GrpcService:
    """An unstarted gRPC server for GatewayService (plus health and reflection, which need no
    key); ``jobs`` and ``authenticator`` are shared with the REST app (defaults: built from
    ``settings``)."""
    auth = authenticator or Authenticator.from_settings(
        settings.api_keys_file, settings.auth_disabled
    )
    return create_server(
        settings,
        [
            Servicer(
                GatewayServicer(pipeline, jobs),
                gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
                SERVICE_NAME,
            )
        ],
        authenticate=grpc_authenticate(auth),
    )


class RestServer(uvicorn.Server):
    """uvicorn serving the REST app inside the caller's event loop. It leaves signals to the
    caller (``run_service``), which stops it by setting ``should_exit``."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._listening.set()

    async def start(self) -> asyncio.Task[None]:
        """Serves in a background task, returned once the port is bound."""
        serving = asyncio.create_task(self.serve())
        listening = asyncio.create_task(self._listening.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not self._listening.is_set():
            listening.cancel()
            await serving
            raise OSError(f"the REST server did not start on {self.config.host}:{self.config.port}")
        return serving

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); valid once ``started``."""
        sockets = [s for server in self.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1])


def build_rest_server(settings: GatewaySettings, app: FastAPI) -> RestServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.rest_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.grace_period_s) or None,
        lifespan="off",
    )
    return RestServer(config)
