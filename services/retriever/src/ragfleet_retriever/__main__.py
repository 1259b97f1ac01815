"""Entry point: ``ragfleet-retriever`` or ``python -m ragfleet_retriever``."""

from __future__ import annotations

import asyncio

from ragfleet.runtime.logging import configure_logging
from ragfleet.runtime.server import run_service
from ragfleet_retriever.server import build_core, build_server
from ragfleet_retriever.settings import RetrieverSettings


async def _serve(settings: RetrieverSettings) -> None:
    core = build_core(settings)
    try:
        await run_service(build_server(settings, core), core.load)
    finally:
        await core.close()


def main() -> None:
    settings = RetrieverSettings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
