"""High availability under load: replicas behind one balanced channel, one of them SIGKILLed.

Two embedder processes (the real model) and one retriever process (a real index on disk; it
stays single: the embedded index is single-writer), two gateway processes whose embedder
address lists both embedders, and a stand-in generator. Closed-loop clients call the gateway's
Retrieve (and Ask) over one channel balanced across both gateways (``gateway_channel``, as the
CLI uses), while the test SIGKILLs one embedder, then one gateway. No Retrieve may fail or
degrade to lexical-only hits, and none of the Asks that had not received an event may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragfleet.clients import gateway_channel
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import RetryPolicy, insecure_channel

from .test_gateway_failover import DOCUMENTS, StandIn, _free_port, _stop, _wait_serving, standins

pytestmark = pytest.mark.integration
__all__ = ["standins"]  # the stand-in generator fixture, shared with the failover tests

EMBEDDER = "ragfleet.embedder.v1.EmbedderService"
GATEWAY = "ragfleet.gateway.v1.GatewayService"
PHASE_S = 3.0
RETRIEVE_CLIENTS = 4


@dataclass
class Replica:
    name: str
    address: str
    proc: subprocess.Popen[bytes]


def _start(name: str, module: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    with open(logs / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module], env={**os.environ, **env}, stderr=log, stdout=log
        )


@dataclass
class Fleet:
    embedders: list[Replica]
    gateways: list[Replica]

    @property
    def gateway_addresses(self) -> str:
        return ",".join(g.address for g in self.gateways)


@pytest.fixture
def fleet(tmp_path: Path, standins: Callable[..., StandIn]) -> Iterator[Fleet]:
    """Two embedders and a retriever (started together: the models load in parallel), then
    two gateways in front of them and of a stand-in generator, with ``DOCUMENTS`` ingested."""
    generator = standins("standin", tokens=6, delay_s=0.05)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        embedders = []
        for i in range(2):
            port = _free_port()
            env = {
                "RAGFLEET_EMBEDDER_PORT": str(port),
                "RAGFLEET_EMBEDDER_GRACE_PERIOD_S": "0",
                # What `ragfleet up --replicas 2` gives each embedder on two cores.
                "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2)),
            }
            proc = _start(f"embedder-{i}", "ragfleet_embedder", env, tmp_path)
            procs.append(proc)
            embedders.append(Replica(f"embedder-{i}", f"127.0.0.1:{port}", proc))
        retriever_port = _free_port()
        retriever = _start(
            "retriever",
            "ragfleet_retriever",
            {
                "RAGFLEET_RETRIEVER_PORT": str(retriever_port),
                "RAGFLEET_RETRIEVER_DATA_DIR": str(tmp_path / "index"),
                "RAGFLEET_RETRIEVER_GRACE_PERIOD_S": "0",
            },
            tmp_path,
        )
        procs.append(retriever)
        gateways = []
        for i in range(2):
            port = _free_port()
            env = {
                "RAGFLEET_GATEWAY_PORT": str(port),
                "RAGFLEET_GATEWAY_REST_PORT": str(_free_port()),
                "RAGFLEET_GATEWAY_AUTH_DISABLED": "true",
                "RAGFLEET_GATEWAY_GRACE_PERIOD_S": "0",
                # A slow machine must not pass for a failover: lexical-only answers (degraded)
                # come from the embedder being gone, not from it taking over 2 s.
                "RAGFLEET_GATEWAY_EMBED_TIMEOUT_S": "5",
                "RAGFLEET_GATEWAY_EMBEDDER_ADDRESS": ",".join(e.address for e in embedders),
                "RAGFLEET_GATEWAY_RETRIEVER_ADDRESS": f"127.0.0.1:{retriever_port}",
                "RAGFLEET_GATEWAY_GENERATOR_ADDRESS": generator.address,
                "RAGFLEET_GATEWAY_INGEST_MANIFEST_PATH": str(tmp_path / f"manifest-{i}.sqlite"),
                "RAGFLEET_GATEWAY_FEEDBACK_SPOOL_DIR": str(tmp_path / f"spool-{i}"),
            }
            proc = _start(f"gateway-{i}", "ragfleet_gateway", env, tmp_path)
            procs.append(proc)
            gateways.append(Replica(f"gateway-{i}", f"127.0.0.1:{port}", proc))
        for replica in gateways:
            _wait_serving(replica.address, GATEWAY, replica.proc, 90)
        _wait_serving(
            f"127.0.0.1:{retriever_port}", "ragfleet.retriever.v1.RetrieverService", retriever, 60
        )
        for replica in embedders:
            _wait_serving(replica.address, EMBEDDER, replica.proc, 120)
        with grpc.insecure_channel(gateways[0].address) as channel:
            reply = gateway_pb2_grpc.GatewayServiceStub(channel).Ingest(
                gateway_pb2.IngestRequest(documents=DOCUMENTS), timeout=60
            )
        assert reply.chunks >= 2
        yield Fleet(embedders, gateways)
    finally:
        for proc in procs:
            _stop(proc)


@dataclass
class Tally:
    """Outcomes per phase; a call counts in the phase it started in."""

    phase: str = "all up"
    retrieve: Counter[tuple[str, str]] = field(default_factory=Counter)
    ask: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


async def _retrieve_loop(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub, tally: Tally, worker: int, stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        phase, n = tally.phase, n + 1
        # A new question each time: no cache between the client and the embedders.
        request = gateway_pb2.RetrieveRequest(query=f"what happens on SIGTERM ({worker}.{n})")
        try:
            reply = await stub.Retrieve(request, timeout=10)
        except grpc.aio.AioRpcError as err:
            tally.retrieve[phase, "failed"] += 1
            tally.errors.append(f"Retrieve in {phase}: {err.code().name}: {err.details()}")
            continue
        if reply.degraded or not reply.hits:
            tally.retrieve[phase, "degraded"] += 1
            tally.errors.append(f"Retrieve in {phase}: {list(reply.degraded_reasons)}")
        else:
            tally.retrieve[phase, "ok"] += 1


async def _ask_loop(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub, tally: Tally, stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        phase, n, events = tally.phase, n + 1, 0
        request = gateway_pb2.AskRequest(question=f"What happens on SIGTERM? ({n})")
        try:
            async for event in stub.Ask(request, timeout=10):
                events += 1
                if event.WhichOneof("event") == "answer":
                    tally.ask[phase, "ok" if event.answer.answered else "unanswered"] += 1
        except grpc.aio.AioRpcError as err:
            # Cut after an event: the client saw part of the answer (not retried, by design).
            outcome = "failed before any event" if events == 0 else "cut mid-stream"
            tally.ask[phase, outcome] += 1
            if events == 0:
                tally.errors.append(f"Ask in {phase}: {err.code().name}: {err.details()}")


def _sigkill(replica: Replica) -> None:
    replica.proc.send_signal(signal.SIGKILL)
    replica.proc.wait(timeout=10)


async def test_sigkill_one_embedder_then_one_gateway_under_load_fails_no_request(
    fleet: Fleet,
) -> None:
    tally = Tally()
    stop = asyncio.Event()
    async with gateway_channel(fleet.gateway_addresses) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        # Warm-up: a model's first inferences are slow; every gateway and embedder takes some.
        warm_up = gateway_pb2.RetrieveRequest(query="graceful shutdown")
        await asyncio.gather(*(stub.Retrieve(warm_up, timeout=30) for _ in range(8)))
        workers = [
            asyncio.create_task(_retrieve_loop(stub, tally, i, stop))
            for i in range(RETRIEVE_CLIENTS)
        ]
        workers.append(asyncio.create_task(_ask_loop(stub, tally, stop)))
        started = time.perf_counter()
        await asyncio.sleep(PHASE_S)
        tally.phase = "embedder killed"
        _sigkill(fleet.embedders[0])
        await asyncio.sleep(PHASE_S)
        tally.phase = "gateway killed"
        _sigkill(fleet.gateways[0])
        await asyncio.sleep(PHASE_S)
        stop.set()
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - started
    phases = ("all up", "embedder killed", "gateway killed")
    report: dict[str, dict[str, dict[str, int]]] = {p: {"retrieve": {}, "ask": {}} for p in phases}
    for (phase, outcome), count in tally.retrieve.items():
        report[phase]["retrieve"][outcome] = count
    for (phase, outcome), count in tally.ask.items():
        report[phase]["ask"][outcome] = count
    print(f"\nHA run, {elapsed:.1f} s of load: {report}")
    assert tally.errors == []
    for phase in phases:
        assert tally.retrieve[phase, "ok"] >= 5, (phase, report)
        assert tally.ask[phase, "failed before any event"] == 0, (phase, report)
    assert tally.ask["gateway killed", "ok"] >= 1, report


class _CountingHealth(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        self.calls += 1
        return await super().Check(request, context)


async def test_an_address_list_is_balanced_and_a_dead_replica_skipped() -> None:
    """The channel spreads calls over every replica of ``host:port,host:port`` and, with one
    replica gone, keeps answering from the other."""
    servers, servicers, ports = [], [], []
    for _ in range(2):
        server, servicer = grpc.aio.server(), _CountingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        servicers.append(servicer)
    retry = RetryPolicy("grpc.health.v1.Health", ("Check",))
    try:
        async with insecure_channel(",".join(f"127.0.0.1:{p}" for p in ports), retry=[retry]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            await ch.channel_ready()
            # Ready once one replica is: call until both have answered.
            for _ in range(50):
                await asyncio.gather(
                    *(stub.Check(health_pb2.HealthCheckRequest()) for _ in range(4))
                )
                if all(s.calls for s in servicers):
                    break
            assert all(s.calls > 0 for s in servicers), [s.calls for s in servicers]
            await servers[0].stop(0)
            before = servicers[1].calls
            replies = await asyncio.gather(
                *(stub.Check(health_pb2.HealthCheckRequest(), timeout=5) for _ in range(20))
            )
            assert all(r.status == health_pb2.HealthCheckResponse.SERVING for r in replies)
            assert servicers[1].calls - before == 20
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop(0)
