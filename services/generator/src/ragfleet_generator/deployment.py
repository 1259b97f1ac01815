"""The Ray Serve ingress deployment: gRPC methods of ``ragfleet.generator.v1.GeneratorService``
and ``grpc.health.v1.Health/Check``, served through Serve's gRPC proxy.

Serve routes ``/<service>/<Method>`` to the deployment method named ``<Method>``. Methods are
thin: convert protos to domain types, call the core, convert back. Domain errors reach the
caller as status codes through ``grpc_status_for_errors``, the Serve-side counterpart of the
runtime's error interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2
from ray.serve.grpc_util import RayServegRPCContext

from ragfleet.common.v1 import common_pb2
from ragfleet.generator.v1 import generator_pb2
from ragfleet.runtime.errors import NotFound, RagfleetError
from ragfleet.runtime.logging import configure_logging, get_logger
from ragfleet_generator.core import GenerationRequest, GeneratorCore, MessageInput
from ragfleet_generator.engine import GenerationEvent, TokenDelta
from ragfleet_generator.loader import build_core
from ragfleet_generator.settings import GeneratorSettings

log = get_logger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
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
        max_tokens=request.max_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        stop=list(request.stop),
    )


def to_response(event: GenerationEvent, model: str) -> generator_pb2.GenerateResponse:
    if isinstance(event, TokenDelta):
        return generator_pb2.GenerateResponse(token=generator_pb2.TokenDelta(text=event.text))
    usage = event.usage
    return generator_pb2.GenerateResponse(
        done=generator_pb2.GenerationDone(
            model=model,
            finish_reason=str(event.finish_reason),
            usage=common_pb2.Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                time_to_first_token_ms=usage.time_to_first_token_ms,
                total_ms=usage.total_ms,
                tokens_per_second=usage.tokens_per_second,
            ),
        )
    )


class GeneratorDeployment:
    """One replica: loads every configured model in its constructor, so Serve counts the replica
    (and the application) as running only once generation can start. Wrapped with
    ``serve.deployment`` by ``ragfleet_generator.app.build_app``."""

    def __init__(self, settings: GeneratorSettings) -> None:
        configure_logging(settings.log_level, settings.log_format)
        self._core: GeneratorCore = build_core(settings)
        log.info("replica_ready", models=[m.name for m in self._core.list_models()])

    async def Generate(
        self, request: generator_pb2.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Streams token deltas, then one ``done`` message with usage and timing."""
        with grpc_status_for_errors(grpc_context, "Generate"):
            domain_request = to_domain_request(request)
            model = self._core.resolve_model(domain_request.model).name
            async for event in self._core.generate(domain_request):
                yield to_response(event, model)

    async def ListModels(
        self, request: generator_pb2.ListModelsRequest, grpc_context: RayServegRPCContext
    ) -> generator_pb2.ListModelsResponse:
        with grpc_status_for_errors(grpc_context, "ListModels"):
            return generator_pb2.ListModelsResponse(
                models=[
                    generator_pb2.ModelCard(
                        name=m.name,
                        engine=str(m.engine),
                        context_length=m.context_length,
                        max_output_tokens=m.max_output_tokens,
                    )
                    for m in self._core.list_models()
                ],
                default_model=self._core.default_model,
            )

    async def Check(
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 readiness: a replica exists only once its models are loaded, so any
        replica that answers is SERVING. Unknown service names get NOT_FOUND, as the health
        protocol specifies. While no replica is up, the proxy itself fails the call."""
        with grpc_status_for_errors(grpc_context, "Check"):
            if request.service not in ("", SERVICE_NAME):
                raise NotFound(f"service: unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
