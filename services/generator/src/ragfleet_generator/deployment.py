"""The Ray Serve deployments: one ``ModelDeployment`` per served model, and the gRPC ingress
``GeneratorIngress`` (``ragfleet.generator.v1.GeneratorService`` and ``grpc.health.v1.Health/
Check`` through Serve's gRPC proxy) that routes each request to its model's deployment handle.

Serve routes ``/<service>/<Method>`` to the ingress method named ``<Method>``. Methods are
thin: convert protos to domain types, call the model deployment, convert back. Domain errors
reach the caller as status codes through ``grpc_status_for_errors``, the Serve-side counterpart
of the runtime's error interceptor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from ragfleet.domain import usage_to_proto
from ragfleet.generator.v1 import generator_pb2
from ragfleet.runtime.errors import NotFound, RagfleetError, Unavailable
from ragfleet.runtime.logging import configure_logging, get_logger
from ragfleet.runtime.server import service_credential_check
from ragfleet.runtime.telemetry import (
    LATENCY_BUCKETS,
    MetricsEndpoint,
    configure_tracing,
    incoming_context,
    observe_rpc,
    stage_span,
    trace_carrier,
    tracing_enabled,
)
from ragfleet_generator.core import GenerationRequest, GeneratorCore, MessageInput, ModelInfo
from ragfleet_generator.engine import GenerationDone, GenerationEvent, TokenDelta
from ragfleet_generator.loader import build_model_core
from ragfleet_generator.settings import GeneratorSettings, ServedModelConfig

log = get_logger(__name__)
T = TypeVar("T")

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
GENERATED_TOKENS = Counter(
    "ragfleet_generator_tokens",
    "Tokens of finished generations: direction is prompt (in) or completion (out)",
    ("model", "direction"),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ragfleet_generator_time_to_first_token_seconds",
    "Time from a Generate call reaching the ingress to its first token",
    ("model",),
    buckets=LATENCY_BUCKETS,
)
CANCELLED_GENERATIONS = Counter(
    "ragfleet_generator_cancelled_generations",
    "Generate calls whose client went away (cancelled, deadline) before the final message",
    ("model",),
)
GRPC_SERVICER_FUNCTIONS = (
    "ragfleet.generator.v1.generator_pb2_grpc.add_GeneratorServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
)


@contextmanager
def grpc_status_for_errors(grpc_context: RayServegRPCContext, method: str) -> Iterator[None]:
    """Sets the status code and details for an error raised in the block, then re-raises it.

    Serve keeps a code set on the context before a deployment method raises (the exception
    reaches the proxy wrapped with that code), for streaming methods too, even before their
    first message. Domain errors keep their code and message; anything else is INTERNAL with
    the exception type only, and is logged with its traceback.
    """
    try:
        yield
    except RagfleetError as exc:
        if exc.grpc_code is grpc.StatusCode.INTERNAL:
            log.error("rpc_failed", method=method, error=exc.message)
        grpc_context.set_code(exc.grpc_code)
        grpc_context.set_details(exc.message)
        raise
    except Exception as exc:
        log.exception("rpc_crashed", method=method)
        grpc_context.set_code(grpc.StatusCode.INTERNAL)
        grpc_context.set_details(f"internal error: {type(exc).__name__}")
        raise


def to_domain_request(request: generator_pb2.GenerateRequest) -> GenerationRequest:
    return GenerationRequest(
        messages=[MessageInput(m.role, m.content) for m in request.messages],
        model=request.model,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else None,
        stop=list(request.stop),
    )


def to_response(event: GenerationEvent, model: str) -> generator_pb2.GenerateResponse:
    if isinstance(event, TokenDelta):
        return generator_pb2.GenerateResponse(token=generator_pb2.TokenDelta(text=event.text))
    return generator_pb2.GenerateResponse(
        done=generator_pb2.GenerationDone(
            model=model,
            finish_reason=str(event.finish_reason),
            usage=usage_to_proto(event.usage),
        )
    )


class ModelDeployment:
    """One replica of one model: loads its engine in the constructor, so Serve counts the
    replica (and the application) as running only once generation can start. Called through
    deployment handles by ``GeneratorIngress``; wrapped with ``serve.deployment`` by
    ``ragfleet_generator.app.build_app``."""

    def __init__(self, model: ServedModelConfig, settings: GeneratorSettings) -> None:
        configure_logging(settings.log_level, settings.log_format)
        configure_tracing(settings.telemetry_name)
        self._name = model.name
        self._core: GeneratorCore = build_model_core(model, settings)
        log.info("replica_ready", model=model.name, engine=str(model.engine))

    async def generate(
        self, request: GenerationRequest, trace_context: Mapping[str, str] | None = None
    ) -> AsyncIterator[GenerationEvent]:
        """Streams the core's events; domain errors propagate to the caller. ``trace_context``
        (the ingress's ``trace_carrier()``) parents this replica's span."""
        parent = incoming_context((trace_context or {}).items()) if trace_context else None
        with stage_span("generator.model.generate", parent=parent, model=self._name) as span:
            async for event in self._core.generate(request):
                if isinstance(event, GenerationDone) and span.is_recording():
                    span.set_attribute("gen_ai.usage.input_tokens", event.usage.prompt_tokens)
                    span.set_attribute("gen_ai.usage.output_tokens", event.usage.completion_tokens)
                yield event

    async def info(self) -> ModelInfo:
        (info,) = self._core.list_models()
        return info

    async def ready(self) -> bool:
        """Answers once the replica exists, i.e. once its model is loaded."""
        return True


def _count_tokens(model: str, done: GenerationDone) -> None:
    GENERATED_TOKENS.labels(model, "in").inc(done.usage.prompt_tokens)
    GENERATED_TOKENS.labels(model, "out").inc(done.usage.completion_tokens)


def _domain_error(exc: BaseException, model: str) -> BaseException:
    """What a failed handle call means to our caller: the replica's own domain error, or
    Unavailable when the model's replica died, is missing or is overloaded."""
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, RagfleetError):
        return exc.cause
    if isinstance(exc, RayActorError | DeploymentUnavailableError | BackPressureError):
        return Unavailable(f"model {model!r} is unavailable: {type(exc).__name__}")
    return exc


class GeneratorIngress:
    """The gRPC ingress: routes ``Generate`` by ``request.model`` (empty: the first, default
    model) to that model's deployment and streams its events back; ``ListModels`` asks every
    model; ``Check`` is SERVING only when every model deployment answers."""

    def __init__(
        self, models: Mapping[str, DeploymentHandle[Any]], settings: GeneratorSettings
    ) -> None:
        configure_logging(settings.log_level, settings.log_format)
        if not models:
            raise ValueError("at least one model deployment is required")
        configure_tracing(settings.telemetry_name)
        # One ingress replica (the default) sees every request; it serves the metrics.
        self._metrics = MetricsEndpoint(settings.host, settings.metrics_port)
        self._metrics.start()
        self._models = dict(models)
        self._default_model = next(iter(self._models))
        self._health_timeout_s = settings.health_timeout_s
        # Serve's proxy has no interceptors: the ingress checks the service credential itself
        # (health stays open, as on the other services).
        credential = settings.credential()
        self._authenticate = None if credential is None else service_credential_check(credential)

    def _check_credential(self, grpc_context: RayServegRPCContext, method: str) -> None:
        if self._authenticate is not None:
            self._authenticate(f"/{SERVICE_NAME}/{method}", grpc_context.invocation_metadata())

    def _handle(self, name: str) -> tuple[str, DeploymentHandle[Any]]:
        model = name or self._default_model
        handle = self._models.get(model)
        if handle is None:
            raise NotFound(
                f"model: {name!r} is not served; available models: {', '.join(self._models)}"
            )
        return model, handle

    async def _call(self, model: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as exc:
            raise _domain_error(exc, model) from None

    async def Generate(
        self, request: generator_pb2.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Streams token deltas, then one ``done`` message with usage and timing. A call that is
        cancelled (the client cancelled, its deadline ran out, the proxy timed it out) cancels
        the model replica's generation, which stops within its step in progress."""
        metadata = grpc_context.invocation_metadata()
        parent = incoming_context(metadata) if tracing_enabled() else None
        start = time.perf_counter()
        with observe_rpc(f"/{SERVICE_NAME}/Generate", kind=SpanKind.SERVER, parent=parent) as rpc:
            try:
                with grpc_status_for_errors(grpc_context, "Generate"):
                    self._check_credential(grpc_context, "Generate")
                    domain_request = to_domain_request(request)
                    model, handle = self._handle(domain_request.model)
                    events: DeploymentResponseGenerator[GenerationEvent] = handle.options(
                        stream=True
                    ).generate.remote(domain_request, trace_carrier())  # type: ignore[assignment]
                    first = True
                    finished = False
                    try:
                        while not finished:
                            try:
                                event: GenerationEvent = await events.__anext__()
                            except StopAsyncIteration:
                                break
                            except Exception as exc:
                                raise _domain_error(exc, model) from None
                            if first and isinstance(event, TokenDelta):
                                TIME_TO_FIRST_TOKEN.labels(model).observe(
                                    time.perf_counter() - start
                                )
                                first = False
                            if isinstance(event, GenerationDone):
                                _count_tokens(model, event)
                                finished = True
                            yield to_response(event, model)
                    except (asyncio.CancelledError, GeneratorExit):
                        # The client went away. Serve cancels the model replica's call with
                        # this one only on some paths (direct ingress), so it is cancelled
                        # here; the replica then stops generating.
                        if not finished:
                            CANCELLED_GENERATIONS.labels(model).inc()
                            events.cancel()  # type: ignore[no-untyped-call]
                        raise
            except Exception:
                rpc.code = grpc_context.code()
                raise

    async def ListModels(
        self, request: generator_pb2.ListModelsRequest, grpc_context: RayServegRPCContext
    ) -> generator_pb2.ListModelsResponse:
        with grpc_status_for_errors(grpc_context, "ListModels"):
            self._check_credential(grpc_context, "ListModels")
            infos = await asyncio.gather(
                *(self._call(name, h.info.remote()) for name, h in self._models.items())
            )
            return generator_pb2.ListModelsResponse(
                models=[
                    generator_pb2.ModelCard(
                        name=m.name,
                        engine=str(m.engine),
                        context_length=m.context_length,
                        max_output_tokens=m.max_output_tokens,
                    )
                    for m in infos
                ],
                default_model=self._default_model,
            )

    async def _model_ready(self, name: str, handle: DeploymentHandle[Any]) -> bool:
        try:
            ready: bool = await asyncio.wait_for(
                self._call(name, handle.ready.remote()), self._health_timeout_s
            )
        except (TimeoutError, Unavailable):
            log.warning("model_not_ready", model=name)
            return False
        return ready

    async def Check(
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 readiness: SERVING only when every model deployment answers within
        ``health_timeout_s`` (a replica exists only once its model is loaded), NOT_SERVING
        otherwise. Unknown service names get NOT_FOUND, as the health protocol specifies."""
        with grpc_status_for_errors(grpc_context, "Check"):
            if request.service not in ("", SERVICE_NAME):
                raise NotFound(f"service: unknown service {request.service!r}")
            ready = await asyncio.gather(
                *(self._model_ready(name, h) for name, h in self._models.items())
            )
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if all(ready)
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            return health_pb2.HealthCheckResponse(status=status)
