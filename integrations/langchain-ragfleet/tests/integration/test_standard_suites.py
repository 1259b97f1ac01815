"""LangChain's standard integration suites against a live fleet on free ports: the real
embedder (packaged MiniLM) and retriever (embedded index in a temporary folder) and the gateway
as processes of their own, and the generator on a local Ray Serve (the real
Qwen2.5-Coder-0.5B as the chain's first model, the deterministic "echo" engine as the second,
which the model-override tests pick). A small corpus is ingested through the gateway first.

Only features the services do not offer are switched off, through the suites' own properties:
tool calling, structured output, JSON mode, image/audio/PDF inputs. The gateway's relevance
threshold is off so that every Ask reaches a model (a greeting is not about the corpus).

The fleet runs with authentication on, as ``ragfleet up`` starts it: the gateway with a keys file,
the embedder, the retriever and the gateway with a service credential. The suites pass the key
and the credential as parameters; the other tests get them from ``RAGFLEET_API_KEY`` and
``RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL``, set for this module."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
)
from ray import serve

from langchain_ragfleet import ChatRagfleet, RagfleetEmbeddings, RagfleetRetriever
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.errors import Unauthenticated, Unavailable
from ragfleet_gateway.auth import Role, add_key, new_key
from ragfleet_generator.app import deploy
from ragfleet_generator.settings import GeneratorSettings

pytestmark = pytest.mark.integration

MODEL = "qwen2.5-coder-0.5b-instruct"
ECHO = "echo"
CORPUS = {
    "shutdown.md": "# Shutdown\n\nOn SIGTERM each service reports NOT_SERVING and drains "
    "in-flight calls for a grace period of five seconds before it stops.",
    "logs.md": "# Logs\n\nServices write structured JSON logs to standard error, one event a "
    "line, with the request id of the call they belong to.",
    "index.md": "# Index\n\nThe embedded index keeps BM25 postings in tantivy and vectors in "
    "usearch, both under the retriever's data directory.",
    "fusion.md": "# Fusion\n\nHybrid search fuses the lexical and the dense result lists with "
    "reciprocal rank fusion, whose rank constant is 60.",
    "embedder.md": "# Embedder\n\nThe embedder serves all-MiniLM-L6-v2 and batches concurrent "
    "Embed calls together.",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(
    address: str, service: str, proc: subprocess.Popen[bytes], limit_s: float
) -> None:
    end = time.monotonic() + limit_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            assert proc.poll() is None, f"{service} exited with {proc.returncode}"
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{service} at {address} was not SERVING within {limit_s} s")


@dataclass(frozen=True)
class Fleet:
    gateway: str
    embedder: str
    api_key: str
    service_credential: str


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    ports = {name: _free_port() for name in ("embedder", "retriever", "generator", "gateway")}
    address = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    key, entry = new_key("default", frozenset({Role.QUERY, Role.INGEST}))
    add_key(work / "api_keys.json", entry)
    credential = secrets.token_urlsafe(32)
    (work / "service_credential").write_text(credential)
    env = {
        **os.environ,
        "RAGFLEET_EMBEDDER_PORT": str(ports["embedder"]),
        "RAGFLEET_EMBEDDER_GRACE_PERIOD_S": "0",
        "RAGFLEET_RETRIEVER_PORT": str(ports["retriever"]),
        "RAGFLEET_RETRIEVER_DATA_DIR": str(work / "index"),
        "RAGFLEET_RETRIEVER_GRACE_PERIOD_S": "0",
        "RAGFLEET_GATEWAY_PORT": str(ports["gateway"]),
        "RAGFLEET_GATEWAY_REST_PORT": str(_free_port()),
        "RAGFLEET_GATEWAY_EMBEDDER_ADDRESS": address["embedder"],
        "RAGFLEET_GATEWAY_RETRIEVER_ADDRESS": address["retriever"],
        "RAGFLEET_GATEWAY_GENERATOR_ADDRESS": address["generator"],
        "RAGFLEET_GATEWAY_MODELS": json.dumps([MODEL, ECHO]),
        "RAGFLEET_GATEWAY_MIN_DENSE_SCORE": "-1",
        "RAGFLEET_GATEWAY_INGEST_MANIFEST_PATH": str(work / "manifest.sqlite"),
        "RAGFLEET_GATEWAY_GRACE_PERIOD_S": "0",
        "RAGFLEET_GATEWAY_API_KEYS_FILE": str(work / "api_keys.json"),
        **{
            f"RAGFLEET_{name}_SERVICE_CREDENTIAL_FILE": str(work / "service_credential")
            for name in ("EMBEDDER", "RETRIEVER", "GATEWAY")
        },
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name in ("embedder", "retriever", "gateway"):
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"ragfleet_{name}"],
                env=env,
                cwd=work,
                stderr=subprocess.DEVNULL,
            )
        deploy(
            GeneratorSettings(
                port=ports["generator"],
                http_port=_free_port(),
                num_cpus=0.5,
                ingress_num_cpus=0.1,
                models=(MODEL, {"name": ECHO, "engine": "fake", "num_cpus": 0.1}),
                model_cache_dir=work / "models",
                log_format="console",
            )
        )
        for name in ("embedder", "retriever", "gateway"):
            service = f"ragfleet.{name}.v1.{name.capitalize()}Service"
            _wait_serving(address[name], service, procs[name], 120)
        with grpc.insecure_channel(address["gateway"]) as channel:
            reply = gateway_pb2_grpc.GatewayServiceStub(channel).Ingest(
                gateway_pb2.IngestRequest(
                    documents=[
                        gateway_pb2.Document(source=source, text=text)
                        for source, text in CORPUS.items()
                    ]
                ),
                timeout=120,
                metadata=(("authorization", f"Bearer {key}"),),
            )
        assert reply.chunks >= len(CORPUS)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAGFLEET_API_KEY", key)
            patch.setenv("RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL", credential)
            yield Fleet(address["gateway"], address["embedder"], key, credential)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        serve.shutdown()
        ray.shutdown()


class _LiveFleet:
    """Gives each suite the fleet's addresses before its fixtures build the class under test."""

    fleet: Fleet

    @pytest.fixture(autouse=True)
    def _addresses(self, fleet: Fleet, request: pytest.FixtureRequest) -> None:
        request.cls.fleet = fleet


class TestRagfleetRetriever(_LiveFleet, RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[RagfleetRetriever]:
        return RagfleetRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"address": self.fleet.gateway, "api_key": self.fleet.api_key}

    @property
    def retriever_query_example(self) -> str:
        return "What does a service do on SIGTERM?"


class TestRagfleetEmbeddings(_LiveFleet, EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[RagfleetEmbeddings]:
        return RagfleetEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {
            "address": self.fleet.embedder,
            "service_credential": self.fleet.service_credential,
        }


class TestChatRagfleet(_LiveFleet, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatRagfleet]:
        return ChatRagfleet

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"address": self.fleet.gateway, "api_key": self.fleet.api_key}

    # Features the gateway's Ask does not offer.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    # Ask's model field picks the chain's first model: the echo engine, second in the chain.
    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return ECHO


def test_a_grounded_answer_cites_the_passages_it_was_given(fleet: Fleet) -> None:
    reply = ChatRagfleet(address=fleet.gateway, max_tokens=64).invoke(
        "How long is the grace period on SIGTERM?"
    )
    meta = reply.response_metadata
    # What the small model writes varies; the end-to-end tests judge its answers' content.
    assert reply.text and meta["answered"] and meta["model_name"] == MODEL
    numbers = {s["number"]: s["source"] for s in meta["sources"]}
    assert meta["citations"], reply.text
    assert all(numbers[c["number"]] == c["source"] for c in meta["citations"])
    assert any(c["source"] == "shutdown.md" for c in meta["citations"])
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0


async def test_streamed_tokens_add_up_to_the_answer(fleet: Fleet) -> None:
    chat = ChatRagfleet(address=fleet.gateway, model=ECHO)
    chunks = [c async for c in chat.astream("which index keeps vectors")]
    assert len(chunks) > 2
    text = "".join(c.text for c in chunks)
    assert text == (await chat.ainvoke("which index keeps vectors")).text
    assert chunks[-1].response_metadata["model_name"] == ECHO


def test_a_stop_sequence_cuts_the_answer(fleet: Fleet) -> None:
    chat = ChatRagfleet(address=fleet.gateway, model=ECHO)
    whole = chat.invoke("tantivy and usearch").text
    assert "usearch" in whole
    cut = chat.invoke("tantivy and usearch", stop=["usearch"]).text
    streamed = "".join(c.text for c in chat.stream("tantivy and usearch", stop=["usearch"]))
    assert cut == streamed == whole[: whole.index("usearch")]


def test_earlier_turns_go_to_the_gateway_as_history(fleet: Fleet) -> None:
    chat = ChatRagfleet(address=fleet.gateway, model=ECHO, max_tokens=32)
    reply = chat.invoke(
        [
            SystemMessage("be brief"),
            HumanMessage("Where does tantivy keep its postings?"),
            AIMessage("In the index folder [1]."),
            HumanMessage("and usearch?"),
        ]
    )
    rewrite = reply.response_metadata["rewrite"]
    assert rewrite["query"] != "and usearch?" and "usearch" in rewrite["query"]
    assert reply.response_metadata["history_trimmed"] == 0
    with pytest.raises(ValueError, match="human, ai"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")])


def test_retrieval_options_reach_the_gateway(fleet: Fleet) -> None:
    retriever = RagfleetRetriever(address=fleet.gateway, k=2, mode="lexical")
    docs = retriever.invoke("tantivy postings")
    assert [d.metadata["source"] for d in docs][:1] == ["index.md"]
    assert docs[0].metadata["lexical_rank"] == 1 and docs[0].metadata["dense_rank"] == 0
    assert docs[0].id


def test_a_bad_option_is_the_gateways_invalid_argument(fleet: Fleet) -> None:
    from ragfleet.runtime.errors import InvalidInput

    with pytest.raises(InvalidInput, match="top_k"):
        RagfleetRetriever(address=fleet.gateway, k=10_000).invoke("anything")


def test_query_and_passage_embeddings_come_from_the_embedder(fleet: Fleet) -> None:
    embeddings = RagfleetEmbeddings(address=fleet.embedder, batch_size=2)
    passages = embeddings.embed_documents(list(CORPUS.values()))
    assert len(passages) == len(CORPUS) and {len(v) for v in passages} == {384}
    query = embeddings.embed_query("Which library keeps the vectors?")
    scores = [sum(q * p for q, p in zip(query, v, strict=True)) for v in passages]
    assert max(range(len(scores)), key=scores.__getitem__) == list(CORPUS).index("index.md")


def test_every_class_sends_its_key_or_credential(fleet: Fleet) -> None:
    """Without the key (or the credential) the same calls are refused: the classes above
    succeed because they send them."""
    with pytest.raises(Unauthenticated, match="API key"):
        RagfleetRetriever(address=fleet.gateway, api_key=None).invoke("tantivy")
    with pytest.raises(Unauthenticated, match="not valid"):
        ChatRagfleet(address=fleet.gateway, api_key="rfk_000000000000_wrong").invoke("tantivy")
    # The embedder's client reports a refused credential as the upstream failing, naming why.
    with pytest.raises(Unavailable, match=r"UNAUTHENTICATED.*service credential"):
        RagfleetEmbeddings(address=fleet.embedder, service_credential=None).embed_query("x")
    assert RagfleetRetriever(address=fleet.gateway, k=1).invoke("tantivy postings")
    assert len(RagfleetEmbeddings(address=fleet.embedder).embed_query("tantivy")) == 384
