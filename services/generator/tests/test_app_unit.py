"""Model configuration, the Serve application graph and the ingress's routing, readiness and
error mapping, with fake deployment handles (no Ray cluster, no models)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from pydantic import ValidationError
from ray.exceptions import RayTaskError

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import Usage
from ragfleet.generator.v1 import generator_pb2
from ragfleet.runtime.errors import InvalidInput, NotFound, Unauthenticated
from ragfleet_generator.app import app_builder, build_app, model_deployment_name
from ragfleet_generator.core import ModelInfo
from ragfleet_generator.deployment import (
    SERVICE_NAME,
    GeneratorIngress,
    ModelDeployment,
    to_domain_request,
)
from ragfleet_generator.engine import (
    EngineKind,
    FinishReason,
    GenerationDone,
    GenerationEvent,
    TokenDelta,
)
from ragfleet_generator.settings import GeneratorSettings

pytestmark = pytest.mark.unit

OPENAI_MODEL = {
    "name": "gpt-4o-mini",
    "engine": "openai",
    "base_url": "https://api.example.com/v1",
    "api_key_env": "OPENAI_API_KEY",
    "num_cpus": 0.1,
    "autoscaling_max_replicas": 3,
}


def test_models_by_name_take_the_service_wide_engine_and_resources() -> None:
    settings = GeneratorSettings(engine=EngineKind.FAKE, num_cpus=0.5, num_gpus=0.25)
    (model,) = settings.served_models()
    assert (model.name, model.engine, model.num_cpus, model.num_gpus) == (
        "qwen2.5-coder-0.5b-instruct",
        EngineKind.FAKE,
        0.5,
        0.25,
    )


def test_model_objects_set_their_own_engine_and_deployment() -> None:
    settings = GeneratorSettings(models=("qwen2.5-coder-0.5b-instruct", OPENAI_MODEL))
    default, remote = settings.served_models()
    assert settings.default_model == default.name
    assert (default.engine, default.source) == (EngineKind.LLAMA_CPP, default.name)
    assert (remote.engine, remote.source, remote.base_url) == (
        EngineKind.OPENAI,
        "gpt-4o-mini",
        "https://api.example.com/v1",
    )
    assert (remote.num_cpus, remote.autoscaling_max_replicas, remote.context_length) == (
        0.1,
        3,
        4096,
    )


def test_vllm_models_map_served_names_to_weights() -> None:
    settings = GeneratorSettings(
        engine=EngineKind.VLLM,
        models=("mistral-7b-instruct",),
        vllm_models={"mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.3"},
        vllm_max_model_len=8192,
    )
    (model,) = settings.served_models()
    assert (model.source, model.context_length) == ("mistralai/Mistral-7B-Instruct-v0.3", 8192)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_models_file_replaces_models(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"models{suffix}"
    path.write_text(json.dumps(["qwen2.5-coder-1.5b-instruct", OPENAI_MODEL]))
    settings = GeneratorSettings(models_file=path)
    assert [m.name for m in settings.served_models()] == [
        "qwen2.5-coder-1.5b-instruct",
        "gpt-4o-mini",
    ]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (("no-such-gguf",), "unknown model"),
        (("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct"), "unique"),
        (({"name": "x", "engine": "openai"},), "base_url"),
        (({"name": "x", "num_gpus": -1},), "num_gpus"),
    ],
)
def test_bad_model_configuration_is_rejected(models: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GeneratorSettings(models=models)


def test_the_app_has_one_deployment_per_model_behind_the_ingress() -> None:
    settings = GeneratorSettings(
        models=("qwen2.5-coder-0.5b-instruct", {**OPENAI_MODEL, "num_gpus": 0.5})
    )
    app = build_app(settings)
    ingress = app._bound_deployment
    assert ingress.name == "GeneratorIngress"
    models = ingress.init_args[0]
    assert list(models) == ["qwen2.5-coder-0.5b-instruct", "gpt-4o-mini"]
    remote = models["gpt-4o-mini"]._bound_deployment
    assert remote.name == model_deployment_name("gpt-4o-mini") == "Model-gpt-4o-mini"
    assert remote.ray_actor_options == {"num_cpus": 0.1, "num_gpus": 0.5}
    assert remote._deployment_config.autoscaling_config.max_replicas == 3
    local = models["qwen2.5-coder-0.5b-instruct"]._bound_deployment
    assert local.name == "Model-qwen2_5-coder-0_5b-instruct"
    assert local.num_replicas == 1


def test_app_builder_reads_args_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGFLEET_GENERATOR_ENGINE", "fake")
    monkeypatch.setenv("RAGFLEET_GENERATOR_NUM_CPUS", "2")
    app = app_builder({"num_cpus": "0.25", "models": '["a", "b"]'})
    models = app._bound_deployment.init_args[0]
    assert list(models) == ["a", "b"]
    assert models["a"]._bound_deployment.ray_actor_options["num_cpus"] == 0.25
    with pytest.raises(ValueError, match="unknown generator settings in args: modles"):
        app_builder({"modles": "x"})


class FakeResponse:
    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error

    def __await__(self) -> Any:
        async def get() -> Any:
            if self._error is not None:
                raise self._error
            return self._result

        return get().__await__()


class FakeStream:
    def __init__(self, events: list[GenerationEvent], error: BaseException | None) -> None:
        self._events, self._error = iter(events), error
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self

    async def __anext__(self) -> GenerationEvent:
        if self._error is not None:
            raise self._error
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None


class FakeMethod:
    def __init__(self, make: Any) -> None:
        self.remote = make


class FakeHandle:
    """Mimics a DeploymentHandle of ModelDeployment: generate (streamed), info, ready."""

    def __init__(
        self, name: str, error: BaseException | None = None, ready_delay_s: float = 0.0
    ) -> None:
        self.name, self.error, self.delay = name, error, ready_delay_s
        self.requests: list[Any] = []
        self.trace_contexts: list[dict[str, str]] = []
        self.streams: list[FakeStream] = []
        events: list[GenerationEvent] = [
            TokenDelta(f"from {name}"),
            GenerationDone(FinishReason.STOP, Usage(3, 1, 1.0, 2.0, 0.0)),
        ]

        def generate(request: Any, trace_context: dict[str, str] | None = None) -> FakeStream:
            self.requests.append(request)
            self.trace_contexts.append(trace_context or {})
            self.streams.append(FakeStream(events, self.error))
            return self.streams[-1]

        async def ready() -> bool:
            await asyncio.sleep(self.delay)
            return True

        self.generate = FakeMethod(generate)
        self.info = FakeMethod(
            lambda: FakeResponse(ModelInfo(name, EngineKind.FAKE, 4096, 1024), self.error)
        )
        self.ready = FakeMethod(ready)

    def options(self, **kwargs: Any) -> FakeHandle:
        assert kwargs == {"stream": True}
        return self


class RecordingContext:
    """Mimics RayServegRPCContext: the caller's metadata, and the code and details set."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._code = grpc.StatusCode.OK
        self.details: str | None = None
        self.metadata = list(metadata)

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self.details = details


def make_ingress(*handles: FakeHandle) -> GeneratorIngress:
    settings = GeneratorSettings(engine=EngineKind.FAKE, health_timeout_s=0.2)
    return GeneratorIngress(cast(Any, {h.name: h for h in handles}), settings)


def request(model: str = "") -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(
        model=model, messages=[common_pb2.ChatMessage(role="user", content="hi")]
    )


async def generate(
    ingress: GeneratorIngress, req: generator_pb2.GenerateRequest, context: RecordingContext
) -> list[generator_pb2.GenerateResponse]:
    return [r async for r in ingress.Generate(req, cast(Any, context))]


async def test_generate_routes_by_model_with_the_first_as_default() -> None:
    small, big = FakeHandle("small"), FakeHandle("big")
    ingress = make_ingress(small, big)
    for model, handle in (("", small), ("big", big)):
        responses = await generate(ingress, request(model), RecordingContext())
        assert responses[0].token.text == f"from {handle.name}"
        assert responses[-1].done.model == handle.name
    assert len(small.requests) == len(big.requests) == 1


async def test_unknown_model_is_not_found_listing_the_served_ones() -> None:
    context = RecordingContext()
    with pytest.raises(NotFound):
        await generate(make_ingress(FakeHandle("small"), FakeHandle("big")), request("x"), context)
    assert context.code() is grpc.StatusCode.NOT_FOUND
    assert context.details == "model: 'x' is not served; available models: small, big"


async def test_a_replica_domain_error_keeps_its_code() -> None:
    cause = InvalidInput("max_tokens: must be between 1 and 1024")
    wrapped = RayTaskError("generate", "traceback", cause).as_instanceof_cause()
    context = RecordingContext()
    with pytest.raises(InvalidInput):
        await generate(make_ingress(FakeHandle("small", wrapped)), request(), context)
    assert (context.code(), context.details) == (grpc.StatusCode.INVALID_ARGUMENT, cause.message)


async def test_list_models_asks_every_model() -> None:
    response = await make_ingress(FakeHandle("small"), FakeHandle("big")).ListModels(
        generator_pb2.ListModelsRequest(), cast(Any, RecordingContext())
    )
    assert [m.name for m in response.models] == ["small", "big"]
    assert response.default_model == "small"


@pytest.mark.parametrize(("delay_s", "status"), [(0.0, "SERVING"), (5.0, "NOT_SERVING")])
async def test_check_is_serving_only_when_every_model_answers(delay_s: float, status: str) -> None:
    ingress = make_ingress(FakeHandle("small"), FakeHandle("big", ready_delay_s=delay_s))
    response = await ingress.Check(health_pb2.HealthCheckRequest(), cast(Any, RecordingContext()))
    assert response.status == health_pb2.HealthCheckResponse.ServingStatus.Value(status)


TRACE_ID, CALLER_SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


async def test_generate_continues_the_callers_trace_into_the_model_replica(
    recorded_spans: InMemorySpanExporter,
) -> None:
    """The traceparent the proxy forwards parents the ingress span, and the ingress hands its
    own context to the model replica, whose span is its child."""
    handle = FakeHandle("small")
    metadata = (("application", "generator"), ("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
    await generate(make_ingress(handle), request(), RecordingContext(metadata))
    (ingress_span,) = recorded_spans.get_finished_spans()
    assert ingress_span.name == "ragfleet.generator.v1.GeneratorService/Generate"
    assert ingress_span.kind is SpanKind.SERVER
    assert ingress_span.context is not None and ingress_span.parent is not None
    assert ingress_span.context.trace_id == int(TRACE_ID, 16)
    assert ingress_span.parent.span_id == int(CALLER_SPAN_ID, 16)

    settings = GeneratorSettings(engine=EngineKind.FAKE, models=("echo",))
    replica = ModelDeployment(settings.served_models()[0], settings)
    events = [
        e async for e in replica.generate(to_domain_request(request()), handle.trace_contexts[0])
    ]
    assert isinstance(events[-1], GenerationDone)
    replica_span = recorded_spans.get_finished_spans()[-1]
    assert replica_span.name == "generator.model.generate"
    assert replica_span.context is not None and replica_span.parent is not None
    assert replica_span.context.trace_id == int(TRACE_ID, 16)
    assert replica_span.parent.span_id == ingress_span.context.span_id
    assert replica_span.attributes is not None
    assert (
        replica_span.attributes["gen_ai.usage.output_tokens"] == events[-1].usage.completion_tokens
    )


async def test_generate_is_untraced_and_passes_no_context_while_tracing_is_off() -> None:
    handle = FakeHandle("small")
    metadata = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"),)
    await generate(make_ingress(handle), request(), RecordingContext(metadata))
    assert handle.trace_contexts == [{}]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_generate_counts_requests_tokens_and_time_to_first_token() -> None:
    rpc = {"grpc_service": SERVICE_NAME, "grpc_method": "Generate"}

    def samples() -> list[float]:
        return [
            _sample("ragfleet_grpc_server_requests_total", **rpc, grpc_code="OK"),
            _sample("ragfleet_grpc_server_requests_total", **rpc, grpc_code="NOT_FOUND"),
            _sample("ragfleet_generator_tokens_total", model="small", direction="in"),
            _sample("ragfleet_generator_tokens_total", model="small", direction="out"),
            _sample("ragfleet_generator_time_to_first_token_seconds_count", model="small"),
        ]

    before = samples()
    ingress = make_ingress(FakeHandle("small"))
    await generate(ingress, request(), RecordingContext())
    with pytest.raises(NotFound):
        await generate(ingress, request("x"), RecordingContext())
    after = samples()
    # FakeHandle's usage: 3 prompt tokens, 1 completion token.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 3, 1, 1]


async def test_a_generate_call_that_goes_away_cancels_the_model_call() -> None:
    handle = FakeHandle("small")
    ingress = make_ingress(handle)
    call = ingress.Generate(request(), cast(Any, RecordingContext()))
    assert (await anext(call)).token.text == "from small"
    await call.aclose()  # what Serve does when the client cancels between messages
    await generate(ingress, request(), RecordingContext())
    assert [s.cancelled for s in handle.streams] == [True, False]


async def test_with_a_service_credential_only_calls_carrying_it_are_served() -> None:
    settings = GeneratorSettings(
        engine=EngineKind.FAKE, health_timeout_s=0.2, service_credential="fleet-secret"
    )
    small = FakeHandle("small")
    ingress = GeneratorIngress(cast(Any, {"small": small}), settings)
    for metadata, detail in (
        ((), "needs the fleet's service credential"),
        ((("authorization", "Bearer wrong"),), "is not this fleet's"),
    ):
        context = RecordingContext(metadata)
        with pytest.raises(Unauthenticated):
            await generate(ingress, request(), context)
        assert context.code() is grpc.StatusCode.UNAUTHENTICATED
        assert context.details is not None and detail in context.details
        with pytest.raises(Unauthenticated):
            await ingress.ListModels(generator_pb2.ListModelsRequest(), cast(Any, context))
    assert small.requests == []
    allowed = RecordingContext((("authorization", "Bearer fleet-secret"),))
    assert (await generate(ingress, request(), allowed))[-1].done.model == "small"
    health = await ingress.Check(health_pb2.HealthCheckRequest(), cast(Any, RecordingContext()))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
