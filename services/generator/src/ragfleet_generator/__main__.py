"""``ragfleet-generator [deploy]``: deploys the generator into a running Ray cluster and returns
once it is RUNNING. The application keeps running in the cluster; ``serve.shutdown()`` (or
``serve shutdown`` / ``ray stop``) stops it."""

from __future__ import annotations

import argparse
import logging

import ray

from ragfleet.runtime.logging import configure_logging, get_logger
from ragfleet_generator.app import deploy
from ragfleet_generator.settings import GeneratorSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ragfleet-generator", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["deploy"], default="deploy")
    parser.parse_args(argv)
    settings = GeneratorSettings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("ragfleet_generator")
    ray.init(
        address=settings.ray_address,
        logging_level=logging.getLevelNamesMapping()[settings.log_level],
        log_to_driver=False,
    )
    deploy(settings)
    log.info(
        "deployed",
        app=settings.app_name,
        grpc_port=settings.port,
        http_port=settings.http_port,
        models=[m.name for m in settings.served_models()],
    )


if __name__ == "__main__":
    main()
