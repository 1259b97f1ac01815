"""Builds and deploys the generator as a Ray Serve application behind Serve's gRPC proxy.

Clients call ``ragfleet.generator.v1.GeneratorService`` (and ``grpc.health.v1.Health/Check``) on
the proxy port, with the metadata ``application: <app_name>`` when more than one Serve
application runs in the cluster.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import HTTPOptions, gRPCOptions
from ray.serve.schema import LoggingConfig

from ragfleet_generator.deployment import GRPC_SERVICER_FUNCTIONS, GeneratorDeployment
from ragfleet_generator.settings import GeneratorSettings


def grpc_options(settings: GeneratorSettings) -> gRPCOptions:
    return gRPCOptions(
        port=settings.port,
        grpc_servicer_functions=list(GRPC_SERVICER_FUNCTIONS),
        request_timeout_s=settings.request_timeout_s,
    )


def logging_config(settings: GeneratorSettings) -> LoggingConfig:
    """Serve logs at the service's level, without one access-log line per request."""
    return LoggingConfig(log_level=settings.log_level, enable_access_log=False)


def _scaling_options(settings: GeneratorSettings) -> dict[str, Any]:
    if settings.autoscaling_max_replicas > 0:
        return {
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": settings.autoscaling_max_replicas,
                # One generation runs at a time per replica; queueing more is what scales out.
                "target_ongoing_requests": 1,
            }
        }
    return {"num_replicas": settings.num_replicas}


def build_app(settings: GeneratorSettings) -> Application:
    """The generator application with replica resources and scaling from ``settings``.

    The model cache path is made absolute here, because replicas do not share the caller's
    working directory.
    """
    replica_settings = settings.model_copy(
        update={"model_cache_dir": settings.model_cache_dir.resolve()}
    )
    deployment = serve.deployment(
        name="GeneratorDeployment",
        ray_actor_options={"num_cpus": settings.num_cpus},
        max_ongoing_requests=settings.max_ongoing_requests,
        logging_config=logging_config(settings),
        **_scaling_options(settings),
    )(GeneratorDeployment)
    return deployment.bind(replica_settings)


def start_serve(settings: GeneratorSettings) -> None:
    """Starts Serve's proxies on the configured ports (a no-op if Serve is already running)."""
    serve.start(
        http_options=HTTPOptions(host=settings.host, port=settings.http_port),
        grpc_options=grpc_options(settings),
        logging_config=logging_config(settings),
    )


def deploy(settings: GeneratorSettings) -> None:
    """Deploys the application as ``settings.app_name`` and returns once it is RUNNING, i.e.
    once every replica has loaded its models. Needs a connected Ray (``ray.init``).

    Raises RuntimeError carrying the replicas' own error (e.g. the ModelLoadError saying what
    to install) when the application cannot start.
    """
    start_serve(settings)
    try:
        serve.run(
            build_app(settings),
            name=settings.app_name,
            # Serve's proxies only route to applications with a route prefix, gRPC included.
            route_prefix=f"/{settings.app_name}",
            logging_config=logging_config(settings),
        )
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} {_failure_details(settings.app_name)}") from exc


def _failure_details(app_name: str) -> str:
    """Serve's status messages for the application's deployments (where replica errors land)."""
    app = serve.status().applications.get(app_name)
    if app is None:
        return ""
    return " ".join(d.message for d in app.deployments.values() if d.message)
