"""Every RPC of every service, fed hostile messages (``strategies.messages``) and raw bytes that
are not protobuf: each call ends within its deadline with a status a client can act on, never
INTERNAL or UNKNOWN (a crash in service code), and the services stay SERVING."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ragfleet.common.v1 import common_pb2
from ragfleet.embedder.v1 import embedder_pb2
from ragfleet.gateway.v1 import gateway_pb2
from ragfleet.generator.v1 import generator_pb2
from ragfleet.retriever.v1 import retriever_pb2

from .conftest import DIMENSION, TENANT, Fleet, examples, health_status
from .strategies import messages, mutated

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
# A call may end with any of these: the caller's fault, or a refusal it can read.
ACCEPTABLE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
FUZZ = settings(
    max_examples=examples(50),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Target:
    service: ServiceDescriptor
    address_of: str
    """The ``Fleet`` attribute holding the service's address."""
    needs_key: bool = False


TARGETS = (
    Target(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"], "gateway", needs_key=True),
    Target(retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"], "retriever"),
    Target(embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"], "embedder"),
    Target(generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"], "generator"),
)
_VECTOR = [0.25] * DIMENSION
_RETRIEVAL = gateway_pb2.RetrievalOptions(top_k=3, mode=common_pb2.SEARCH_MODE_HYBRID, rerank=True)
# A valid request per RPC (where one has fields): ``mutated`` spoils a few of its fields.
VALID: dict[str, Message] = {
    "Ask": gateway_pb2.AskRequest(
        question="How do services shut down?",
        retrieval=_RETRIEVAL,
        max_tokens=16,
        history=[common_pb2.ChatMessage(role="user", content="What is ragfleet?")],
    ),
    "Retrieve": gateway_pb2.RetrieveRequest(query="shutdown grace period", retrieval=_RETRIEVAL),
    "Ingest": gateway_pb2.IngestRequest(
        documents=[
            gateway_pb2.Document(
                source="docs/fuzz.md",
                title="Fuzz",
                text="# Fuzz\n\nHostile input gets a clear error.",
                content_type="text/markdown",
                metadata={"lang": "en"},
            )
        ]
    ),
    "Feedback": gateway_pb2.FeedbackRequest(answer_id="a" * 32, rating=1, comment="good"),
    "Upsert": retriever_pb2.UpsertRequest(
        chunks=[
            common_pb2.Chunk(
                id="fuzz-1",
                text="Hostile input gets a clear error.",
                source="fuzz.md",
                title="Fuzz",
                section="Fuzz",
                tenant=TENANT,
                metadata={"lang": "en"},
                vector=_VECTOR,
            )
        ]
    ),
    "Delete": retriever_pb2.DeleteRequest(
        source="fuzz.md", filter=common_pb2.Filter(tenant=TENANT), keep_ids=["fuzz-1"]
    ),
    "Search": retriever_pb2.SearchRequest(
        query="hostile input",
        query_vector=_VECTOR,
        mode=common_pb2.SEARCH_MODE_HYBRID,
        top_k=5,
        filter=common_pb2.Filter(tenant=TENANT, equals={"lang": "en"}),
    ),
    "Embed": embedder_pb2.EmbedRequest(
        texts=["hostile input"], input_type=embedder_pb2.INPUT_TYPE_QUERY
    ),
    "Rerank": embedder_pb2.RerankRequest(query="hostile", passages=["hostile input", "other"]),
    "Generate": generator_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role="user", content="say hi")], max_tokens=8
    ),
}

RPCS = [(t, m) for t in TARGETS for m in t.service.methods]


def _rpc_id(rpc: tuple[Target, MethodDescriptor]) -> str:
    return f"{rpc[0].service.name}.{rpc[1].name}"


@pytest.fixture(scope="module")
def channels(fleet: Fleet) -> Iterator[dict[str, grpc.Channel]]:
    opened = {
        t.address_of: grpc.insecure_channel(
            getattr(fleet, t.address_of),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        for t in TARGETS
    }
    yield opened
    for channel in opened.values():
        channel.close()


def call(
    fleet: Fleet,
    channel: grpc.Channel,
    target: Target,
    method: MethodDescriptor,
    request: Message | bytes,
) -> grpc.StatusCode:
    """Sends ``request`` (raw bytes are sent as they are), reads the whole answer, and returns
    the status; fails when the call outlives its deadline."""
    path = f"/{target.service.full_name}/{method.name}"
    serialize = None if isinstance(request, bytes) else type(request).SerializeToString
    metadata = (("authorization", f"Bearer {fleet.key}"),) if target.needs_key else ()
    start = time.monotonic()
    try:
        if method.server_streaming:
            stream: grpc.UnaryStreamMultiCallable[Any, Any] = channel.unary_stream(
                path, request_serializer=serialize
            )
            for _ in stream(request, timeout=DEADLINE_S, metadata=metadata):
                pass
        else:
            unary: grpc.UnaryUnaryMultiCallable[Any, Any] = channel.unary_unary(
                path, request_serializer=serialize
            )
            unary(request, timeout=DEADLINE_S, metadata=metadata)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        details = err.details()  # type: ignore[attr-defined]
        assert code in ACCEPTABLE, f"{path} answered {code.name}: {details}"
    elapsed = time.monotonic() - start
    assert elapsed < DEADLINE_S + 1, f"{path} took {elapsed:.1f} s"
    return code


@pytest.mark.parametrize("rpc", RPCS, ids=_rpc_id)
@FUZZ
@given(data=st.data())
def test_hostile_messages_get_a_status_the_caller_can_act_on(
    fleet: Fleet,
    channels: dict[str, grpc.Channel],
    rpc: tuple[Target, MethodDescriptor],
    data: st.DataObject,
) -> None:
    target, method = rpc
    valid = VALID.get(method.name)
    hostile = messages(method.input_type)
    # Two in three spoil a valid request (deep paths), one in three is random (validation).
    strategy = hostile if valid is None else st.one_of(mutated(valid), mutated(valid), hostile)
    request = data.draw(strategy, label="request")
    call(fleet, channels[target.address_of], target, method, request)


# Serve's gRPC proxy (not ours) decodes the generator's requests; the stand-in has no runtime
# interceptors, so raw bytes are sent only to the services built on ``create_server``.
RAW_RPCS = [(t, m) for t, m in RPCS if t.address_of != "generator"]


@pytest.mark.parametrize("rpc", RAW_RPCS, ids=_rpc_id)
@settings(FUZZ, max_examples=examples(30))
@given(payload=st.binary(min_size=1, max_size=64))
@example(payload=b"\xff\xff\xff\xff")  # field 0 / wire type 7: no such thing
@example(payload=b"\x0a\x05ab")  # a length-delimited field cut short
@example(payload=b"\x0a\x02\xc3\x28")  # field 1 as a string that is not UTF-8
@example(payload=b"\x08\x80\x80\x80")  # a varint cut short
def test_bytes_that_are_not_protobuf_are_invalid_argument(
    fleet: Fleet,
    channels: dict[str, grpc.Channel],
    rpc: tuple[Target, MethodDescriptor],
    payload: bytes,
) -> None:
    target, method = rpc
    call(fleet, channels[target.address_of], target, method, payload)


@pytest.mark.parametrize("rpc", RAW_RPCS, ids=_rpc_id)
def test_a_truncated_message_is_named_invalid_argument(
    fleet: Fleet, channels: dict[str, grpc.Channel], rpc: tuple[Target, MethodDescriptor]
) -> None:
    target, method = rpc
    code = call(fleet, channels[target.address_of], target, method, b"\x0a\x05ab")
    assert code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("target", TARGETS[:3], ids=lambda t: t.address_of)
def test_every_service_is_still_serving(fleet: Fleet, target: Target) -> None:
    address = getattr(fleet, target.address_of)
    for service in ("", target.service.full_name):
        assert health_status(address, service) == health_pb2.HealthCheckResponse.SERVING
