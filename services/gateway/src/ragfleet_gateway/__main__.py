"""``python -m ragfleet_gateway`` / ``ragfleet-gateway``: gRPC (port 50050) and REST (8080) in one
event loop. Ready once the upstream channels exist; SIGTERM drains gRPC, then REST."""

from __future__ import annotations

import asyncio

from ragfleet.runtime.logging import configure_logging, get_logger
from ragfleet.runtime.server import run_service
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.wiring import build_gateway

log = get_logger(__name__)


async def serve(settings: GatewaySettings) -> None:
    gateway = build_gateway(settings)

    async def start_rest() -> None:
        await gateway.start_recording()
        await gateway.start_rest()
        log.info("rest_listening", port=gateway.rest.port)

    try:
        await run_service(gateway.grpc, start_rest)
    finally:
        await gateway.stop_rest()
        await gateway.upstreams.close()
        if gateway.feedback is not None:
            await gateway.feedback.close()


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
