"""The Serve deployment's error mapping and proto conversion, without Ray."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import Usage
from ragfleet.generator.v1 import generator_pb2
from ragfleet.runtime.errors import InvalidInput, NotFound, Unavailable
from ragfleet_generator.deployment import grpc_status_for_errors, to_domain_request, to_response
from ragfleet_generator.engine import FinishReason, GenerationDone, TokenDelta

pytestmark = pytest.mark.unit


class RecordingContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("max_tokens: too big"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("model: 'x' is not served"), grpc.StatusCode.NOT_FOUND),
        (Unavailable("model still loading"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_domain_errors_set_their_code_and_message_and_propagate(
    error: Exception, code: grpc.StatusCode
) -> None:
    context = RecordingContext()
    with pytest.raises(type(error)), grpc_status_for_errors(cast(Any, context), "Generate"):
        raise error
    assert context.code is code
    assert context.details == str(error)


def test_unexpected_errors_are_internal_without_their_message() -> None:
    context = RecordingContext()
    with pytest.raises(KeyError), grpc_status_for_errors(cast(Any, context), "Generate"):
        raise KeyError("secret internals")
    assert context.code is grpc.StatusCode.INTERNAL
    assert context.details == "internal error: KeyError"


def test_request_conversion_keeps_unset_temperature_unset() -> None:
    request = generator_pb2.GenerateRequest(
        model="m",
        messages=[common_pb2.ChatMessage(role="user", content="hi")],
        max_tokens=5,
        stop=["\n"],
    )
    domain = to_domain_request(request)
    assert domain.temperature is None
    assert (domain.model, domain.max_tokens, list(domain.stop)) == ("m", 5, ["\n"])
    request.temperature = 0.0
    assert to_domain_request(request).temperature == 0.0


def test_event_conversion() -> None:
    assert to_response(TokenDelta("hi"), "m").token.text == "hi"
    usage = Usage(3, 2, 10.0, 30.0, 100.0)
    done = to_response(GenerationDone(FinishReason.LENGTH, usage), "m").done
    assert (done.model, done.finish_reason) == ("m", "length")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 2)
    assert done.usage.time_to_first_token_ms == 10.0
