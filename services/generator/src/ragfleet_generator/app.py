"""Builds and deploys the generator as a Ray Serve application behind Serve's gRPC proxy: one
deployment per served model (its own replicas, autoscaling, CPUs and GPUs) and the gRPC ingress
that routes to them.

Clients call ``ragfleet.generator.v1.GeneratorService`` (and ``grpc.health.v1.Health/Check``) on
the proxy port, with the metadata ``application: <app_name>`` when more than one Serve
application runs in the cluster. KubeRay (and ``serve run``) build the application with the
import path ``ragfleet_generator.app:app_builder``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import HTTPOptions, gRPCOptions
from ray.serve.schema import LoggingConfig

from ragfleet_generator.deployment import (
    GRPC_SERVICER_FUNCTIONS,
    GeneratorIngress,
    ModelDeployment,
)
from ragfleet_generator.settings import GeneratorSettings, ServedModelConfig

INGRESS_DEPLOYMENT = "GeneratorIngress"


def grpc_options(settings: GeneratorSettings) -> gRPCOptions:
    return gRPCOptions(
        port=settings.port,
        grpc_servicer_functions=list(GRPC_SERVICER_FUNCTIONS),
        request_timeout_s=settings.request_timeout_s,
    )


def logging_config(settings: GeneratorSettings) -> LoggingConfig:
    """Serve logs at the service's level, without one access-log line per request."""
    return LoggingConfig(log_level=settings.log_level, enable_access_log=False)


def model_deployment_name(model: str) -> str:
    """The Serve deployment of ``model``: ``Model-`` and the name with characters other than
    letters, digits, ``-`` and ``_`` replaced by ``_`` (``Model-qwen2_5-coder-0_5b-instruct``)."""
    return "Model-" + re.sub(r"[^A-Za-z0-9_-]", "_", model)


def _scaling_options(model: ServedModelConfig) -> dict[str, Any]:
    if model.autoscaling_max_replicas > 0:
        return {
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": model.autoscaling_max_replicas,
                # One generation runs at a time per replica; queueing more is what scales out.
                "target_ongoing_requests": 1,
            }
        }
    return {"num_replicas": model.num_replicas}


def build_app(settings: GeneratorSettings) -> Application:
    """The generator application: a deployment per model with the resources and scaling of its
    configuration, bound into the ingress in configuration order (the first is the default).

    The model cache path is made absolute here, because replicas do not share the caller's
    working directory.
    """
    replica_settings = settings.model_copy(
        update={"model_cache_dir": settings.model_cache_dir.resolve()}
    )
    models: dict[str, Application] = {}
    for model in settings.served_models():
        deployment = serve.deployment(
            name=model_deployment_name(model.name),
            ray_actor_options={"num_cpus": model.num_cpus, "num_gpus": model.num_gpus},
            max_ongoing_requests=model.max_ongoing_requests,
            logging_config=logging_config(settings),
            **_scaling_options(model),
        )(ModelDeployment)
        models[model.name] = deployment.bind(model, replica_settings)
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        ray_actor_options={"num_cpus": settings.ingress_num_cpus},
        logging_config=logging_config(settings),
    )(GeneratorIngress)
    return ingress.bind(models, replica_settings)


def app_builder(args: dict[str, str]) -> Application:
    """Serve's application builder (``import_path: ragfleet_generator.app:app_builder``):
    settings from ``RAGFLEET_GENERATOR_*`` and ``args``, which take precedence. Arg names are
    setting names; JSON values (lists, objects) are decoded. Raises ValueError naming unknown
    args."""
    unknown = sorted(set(args) - set(GeneratorSettings.model_fields))
    if unknown:
        raise ValueError(f"unknown generator settings in args: {', '.join(unknown)}")
    overrides = {key: _decode_arg(value) for key, value in args.items()}
    return build_app(GeneratorSettings(**overrides))


def _decode_arg(value: str) -> Any:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text[:1] in ("[", "{"):
        return json.loads(text)
    return value


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
