"""The generator on a real Ray Serve (local Ray, gRPC proxy on a free port) with two model
deployments behind the ingress: the real Qwen2.5-Coder-0.5B (default) and a fake "echo" model.
Health, streaming, grounded answers, routing by model, model listing, status codes, and a
client that goes away freeing the replica."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray import serve

from ragfleet.common.v1 import common_pb2
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet_generator.app import deploy
from ragfleet_generator.deployment import SERVICE_NAME
from ragfleet_generator.settings import GeneratorSettings

pytestmark = pytest.mark.integration

MODEL = "qwen2.5-coder-0.5b-instruct"
ECHO = "echo"
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeneratorSettings]:
    settings = GeneratorSettings(
        port=_free_port(),
        http_port=_free_port(),
        num_cpus=0.5,
        ingress_num_cpus=0.1,
        models=(MODEL, {"name": ECHO, "engine": "fake", "num_cpus": 0.1}),
        model_cache_dir=tmp_path_factory.mktemp("models"),
        log_format="console",
    )
    # "local" starts a fresh instance even when a `ray start` cluster runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        deploy(settings)
        yield settings
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def channel(settings: GeneratorSettings) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def generator(channel: grpc.Channel) -> generator_pb2_grpc.GeneratorServiceStub:
    return generator_pb2_grpc.GeneratorServiceStub(channel)


# The proxy needs no routing metadata with one application; it is sent as clients should.
METADATA = (("application", "generator"),)


def _generate(
    stub: generator_pb2_grpc.GeneratorServiceStub, **fields: object
) -> list[generator_pb2.GenerateResponse]:
    request = generator_pb2.GenerateRequest(**fields)  # type: ignore[arg-type]
    return list(stub.Generate(request, timeout=TIMEOUT_S, metadata=METADATA))


def _user(text: str) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role="user", content=text)]


def test_model_cache_holds_the_verified_model(settings: GeneratorSettings) -> None:
    cache = Path(settings.model_cache_dir)
    assert (cache / f"{MODEL}.gguf").stat().st_size == 491_400_064
    assert (cache / f"{MODEL}.gguf.verified").is_file()


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
def test_health_is_serving_through_the_proxy(channel: grpc.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT_S)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_generate_streams_deltas_then_usage(
    generator: generator_pb2_grpc.GeneratorServiceStub,
) -> None:
    responses = _generate(
        generator, messages=_user("Name three primary colours."), max_tokens=24, temperature=0.0
    )
    deltas = [r.token.text for r in responses[:-1]]
    assert all(r.WhichOneof("event") == "token" for r in responses[:-1])
    assert len(deltas) > 1
    done = responses[-1].done
    assert responses[-1].WhichOneof("event") == "done"
    assert done.model == MODEL
    assert done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 5
    assert 0 < done.usage.completion_tokens <= 24
    assert done.usage.time_to_first_token_ms > 0
    assert done.usage.total_ms >= done.usage.time_to_first_token_ms
    assert done.usage.tokens_per_second > 0


def test_grounded_question_is_answered_from_the_context(
    generator: generator_pb2_grpc.GeneratorServiceStub,
) -> None:
    question = (
        "Using only this context: 'The ragfleet gateway listens on port 50050.' "
        "Which port does the gateway listen on?"
    )
    responses = _generate(generator, messages=_user(question), max_tokens=48, temperature=0.0)
    answer = "".join(r.token.text for r in responses[:-1])
    assert "50050" in answer
    usage = responses[-1].done.usage
    print(
        f"\ngrounded answer {answer!r}: prompt {usage.prompt_tokens} tokens, completion "
        f"{usage.completion_tokens} tokens, ttft {usage.time_to_first_token_ms:.0f} ms, "
        f"{usage.tokens_per_second:.1f} tok/s, total {usage.total_ms:.0f} ms"
    )


def test_list_models(generator: generator_pb2_grpc.GeneratorServiceStub) -> None:
    response = generator.ListModels(
        generator_pb2.ListModelsRequest(), timeout=TIMEOUT_S, metadata=METADATA
    )
    assert response.default_model == MODEL
    cards = {(c.name, c.engine, c.context_length, c.max_output_tokens) for c in response.models}
    assert cards == {(MODEL, "llama_cpp", 4096, 1024), (ECHO, "fake", 4096, 1024)}


def test_generate_routes_by_model(generator: generator_pb2_grpc.GeneratorServiceStub) -> None:
    responses = _generate(generator, model=ECHO, messages=_user("route me"))
    assert "".join(r.token.text for r in responses[:-1]) == "echo: route me"
    assert responses[-1].done.model == ECHO


@pytest.mark.parametrize(
    ("fields", "code", "detail"),
    [
        ({"max_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        ({"max_tokens": 100_000}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        ({"temperature": 2.5}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"model": "gpt-9"}, grpc.StatusCode.NOT_FOUND, f"available models: {MODEL}, {ECHO}"),
        (
            {"max_tokens": 1024, "messages": _user("word " * 4000)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "context window of 4096",
        ),
    ],
)
def test_bad_input_gets_its_status_code(
    generator: generator_pb2_grpc.GeneratorServiceStub,
    fields: dict[str, object],
    code: grpc.StatusCode,
    detail: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _generate(generator, **{"messages": _user("hi"), **fields})
    assert caught.value.code() is code
    assert detail in (caught.value.details() or "")


def test_empty_messages_and_unknown_roles_are_invalid(
    generator: generator_pb2_grpc.GeneratorServiceStub,
) -> None:
    for messages in ([], [common_pb2.ChatMessage(role="robot", content="hi")]):
        with pytest.raises(grpc.RpcError) as caught:
            _generate(generator, messages=messages)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# A RAG-sized prompt (about 2,000 tokens): its evaluation alone takes seconds on two cores.
LONG_PROMPT = (
    " ".join(
        f"Passage {i}: the keeper logged the weather, the ships and the lamp oil on day {i}."
        for i in range(80)
    )
    + " Write a long story about the keeper, in many chapters."
)
FREED_WITHIN_S = 5.0


@pytest.mark.parametrize("give_up", ["cancel", "deadline"])
def test_a_client_that_goes_away_frees_the_replica(
    generator: generator_pb2_grpc.GeneratorServiceStub, give_up: str
) -> None:
    """A long generation given up after 1 s, while the replica still evaluates its prompt, is
    aborted there: the replica (one generation at a time) answers the next request at once
    instead of after the rest of the prompt and 1,000 tokens."""
    request = generator_pb2.GenerateRequest(
        messages=_user(LONG_PROMPT), max_tokens=1000, temperature=0.0
    )
    if give_up == "cancel":
        call = generator.Generate(request, timeout=TIMEOUT_S, metadata=METADATA)
        threading.Timer(1.0, call.cancel).start()
        expected = grpc.StatusCode.CANCELLED
    else:
        call = generator.Generate(request, timeout=1.0, metadata=METADATA)
        expected = grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() is expected
    gave_up = time.perf_counter()
    responses = _generate(generator, messages=_user("Hi"), max_tokens=1)
    freed = time.perf_counter() - gave_up
    print(f"\n{give_up}: the replica answered the next request {freed:.2f} s later")
    assert responses[-1].WhichOneof("event") == "done"
    assert freed < FREED_WITHIN_S
