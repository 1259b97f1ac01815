"""``python -m ragfleet_gateway`` / ``ragfleet-gateway``: gRPC (port 50050) and REST (8080) in one
event loop. Ready once the upstream channels exist; SIGTERM drains gRPC, then REST."""

from __future__ import annotations

import asyncio

from ragfleet.runtime.logging import configure_logging, get_logger
from ragfleet.runtime.server import run_service
from ragfleet_gateway.clients import Upstreams
from ragfleet_gateway.ingest_jobs import IngestJobs
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.rest import create_app
from ragfleet_gateway.server import build_rest_server, build_server
from ragfleet_gateway.settings import GatewaySettings

log = get_logger(__name__)


async def serve(settings: GatewaySettings) -> None:
    upstreams = Upstreams.connect(settings)
    pipeline = RagPipeline(
        settings,
        upstreams.embedder,
        upstreams.retriever,
        upstreams.generator,
        model_generators=upstreams.model_generators,
        reranker=upstreams.embedder,
    )
    jobs = IngestJobs.from_settings(settings)
    grpc_service = build_server(settings, pipeline, jobs)
    rest = build_rest_server(
        settings, create_app(pipeline, lambda: upstreams.health(settings.health_timeout_s), jobs)
    )
    rest_task: asyncio.Task[None] | None = None

    async def start_rest() -> None:
        nonlocal rest_task
        rest_task = await rest.start()
        log.info("rest_listening", port=rest.port)

    try:
        await run_service(grpc_service, start_rest)
    finally:
        if rest_task is not None:
            rest.should_exit = True
            await rest_task
        await upstreams.close()


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
