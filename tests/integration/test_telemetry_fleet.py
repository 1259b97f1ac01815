"""Traces and metrics across real processes: the embedder, the retriever and the gateway as
their own processes (real model, real index on disk), each exporting spans over OTLP to a
collector this test runs, and serving Prometheus metrics on a port of its own.

The generator here is the stand-in (``generator_standin.py``, a real gRPC server process with
the runtime's telemetry interceptor) rather than Ray Serve, whose start-up alone would take
most of this test's budget; the Serve ingress continuing the caller's trace into the model
replica is tested without Ray in ``services/generator/tests/test_app_unit.py``. The services
run with authentication on, as in production: the gateway with a keys file, the embedder and
the retriever with a service credential the gateway sends.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet_gateway.auth import Role, add_key, new_key

from .test_gateway_failover import _free_port, _wait_serving

pytestmark = pytest.mark.integration

STANDIN = Path(__file__).with_name("generator_standin.py")
GATEWAY = "ragfleet.gateway.v1.GatewayService"
EMBEDDER = "ragfleet.embedder.v1.EmbedderService"
RETRIEVER = "ragfleet.retriever.v1.RetrieverService"
GENERATOR = "ragfleet.generator.v1.GeneratorService"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                received += [
                    ReceivedSpan(service, s.name, s.kind, s.trace_id, s.span_id, s.parent_span_id)
                    for s in scope_spans.spans
                ]
        with self._lock:
            self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)


@dataclass
class Fleet:
    collector: Collector
    gateway: str
    key: str
    metrics: dict[str, int]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    ports = {name: _free_port() for name in ("embedder", "retriever", "gateway", "generator")}
    metrics = {name: _free_port() for name in ("embedder", "retriever", "gateway")}
    auth = tmp_path_factory.mktemp("auth")
    key, entry = new_key("default", frozenset({Role.QUERY, Role.INGEST}))
    add_key(auth / "api_keys.json", entry)
    (auth / "service_credential").write_text(secrets.token_urlsafe(32))
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "RAGFLEET_RETRIEVER_DATA_DIR": str(tmp_path_factory.mktemp("index")),
        "RAGFLEET_GATEWAY_REST_PORT": "0",
        "RAGFLEET_GATEWAY_API_KEYS_FILE": str(auth / "api_keys.json"),
        "RAGFLEET_GATEWAY_EMBEDDER_ADDRESS": f"127.0.0.1:{ports['embedder']}",
        "RAGFLEET_GATEWAY_RETRIEVER_ADDRESS": f"127.0.0.1:{ports['retriever']}",
        "RAGFLEET_GATEWAY_GENERATOR_ADDRESS": f"127.0.0.1:{ports['generator']}",
    }
    for name in ("embedder", "retriever", "gateway"):
        prefix = f"RAGFLEET_{name.upper()}_"
        env |= {
            f"{prefix}PORT": str(ports[name]),
            f"{prefix}METRICS_PORT": str(metrics[name]),
            f"{prefix}GRACE_PERIOD_S": "0",
            f"{prefix}SERVICE_CREDENTIAL_FILE": str(auth / "service_credential"),
        }
    standin = [
        sys.executable, str(STANDIN), "--port", str(ports["generator"]),
        "--calls-file", str(tmp_path_factory.mktemp("standin") / "calls"),
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"ragfleet_{name}"], env=env, stderr=subprocess.DEVNULL
        )
        for name in ("embedder", "retriever", "gateway")
    ]
    procs.append(subprocess.Popen(standin, env=env, stdout=subprocess.DEVNULL))
    try:
        for name, service, limit_s in (
            ("retriever", RETRIEVER, 60),
            ("gateway", GATEWAY, 60),
            ("embedder", EMBEDDER, 120),
        ):
            proc = procs[["embedder", "retriever", "gateway"].index(name)]
            _wait_serving(f"127.0.0.1:{ports[name]}", service, proc, limit_s)
        yield Fleet(collector, f"127.0.0.1:{ports['gateway']}", key, metrics)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        receiver.stop(0)


def _ask(gateway: str, key: str) -> gateway_pb2.Answer:
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        document = gateway_pb2.Document(
            source="docs/operations.md",
            title="Operations",
            text="# Operations\n\n## Shutdown\n\nOn SIGTERM each service flips its health to "
            "NOT_SERVING and drains in-flight calls for the grace period of five seconds.",
        )
        stub.Ingest(gateway_pb2.IngestRequest(documents=[document]), timeout=60, metadata=metadata)
        question = gateway_pb2.AskRequest(question="What does a service do on SIGTERM?")
        events = list(stub.Ask(question, timeout=60, metadata=metadata))
    answers = [e.answer for e in events if e.WhichOneof("event") == "answer"]
    assert answers, events
    return answers[0]


def _trace_of_ask(collector: Collector, limit_s: float = 20.0) -> list[ReceivedSpan]:
    """The spans of the trace the Ask started, once the generator's span has arrived."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        spans = collector.spans()
        asks = [s for s in spans if s.name == f"{GATEWAY}/Ask"]
        if asks:
            trace = [s for s in spans if s.trace_id == asks[0].trace_id]
            if any(s.name == f"{GENERATOR}/Generate" and s.kind == 2 for s in trace):
                return trace
        time.sleep(0.2)
    raise AssertionError(f"no complete Ask trace in {[(s.service, s.name) for s in spans]}")


def test_one_ask_is_one_trace_across_all_four_services(fleet: Fleet) -> None:
    answer = _ask(fleet.gateway, fleet.key)
    assert answer.text
    trace = _trace_of_ask(fleet.collector)
    server = 2  # SPAN_KIND_SERVER in OTLP
    served = {(s.service, s.name) for s in trace if s.kind == server}
    assert {
        ("ragfleet-gateway", f"{GATEWAY}/Ask"),
        ("ragfleet-embedder", f"{EMBEDDER}/Embed"),
        ("ragfleet-retriever", f"{RETRIEVER}/Search"),
        ("ragfleet-generator-standin", f"{GENERATOR}/Generate"),
    } <= served
    (root,) = [s for s in trace if s.name == f"{GATEWAY}/Ask" and s.kind == server]
    assert root.parent_span_id == b""
    by_id = {s.span_id: s for s in trace}
    for span in trace:
        if span is root:
            continue
        # Every span hangs off the Ask: each upstream's server span under the gateway's client
        # span of the same RPC.
        assert span.parent_span_id in by_id, span
        if span.kind == server:
            caller = by_id[span.parent_span_id]
            assert (caller.service, caller.name, caller.kind) == ("ragfleet-gateway", span.name, 3)


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, _, value = line.rpartition(" ")
            found = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if found == wanted:
                return float(value)
    return 0.0


def test_every_service_serves_its_request_counters(fleet: Fleet) -> None:
    _ask(fleet.gateway, fleet.key)
    scraped = {
        name: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for name, port in fleet.metrics.items()
    }
    requests = "ragfleet_grpc_server_requests_total"
    for name, service, method in (
        ("gateway", GATEWAY, "Ask"),
        ("gateway", GATEWAY, "Ingest"),
        ("embedder", EMBEDDER, "Embed"),
        ("retriever", RETRIEVER, "Search"),
        ("retriever", RETRIEVER, "Upsert"),
    ):
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": "OK"}
        assert _metric(scraped[name], requests, **labels) >= 1, (name, method)
    calls = "ragfleet_grpc_client_request_duration_seconds_count"
    for service, method in ((EMBEDDER, "Embed"), (RETRIEVER, "Search"), (GENERATOR, "Generate")):
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": "OK"}
        assert _metric(scraped["gateway"], calls, **labels) >= 1, method
    assert "ragfleet_embedder_batch_texts_bucket" in scraped["embedder"]
    assert "ragfleet_gateway_breaker_state" in scraped["gateway"]
