"""The load driver (`ragfleet loadtest`) on ghz's configuration files, against a real
retriever on a free port that demands the service credential."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragfleet_tools.loadtest import LoadConfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "loadtest").glob("*.json"))
CREDENTIAL = "loadtest-credential"
RAGFLEET = Path(sys.executable).parent / "ragfleet"


def test_every_rpc_has_a_configuration_that_fits_its_protos() -> None:
    env = {"RAGFLEET_API_KEY": "k", "RAGFLEET_SERVICE_CREDENTIAL": "c"}
    configs = [LoadConfig.load(path, env=env) for path in FILES]
    calls = {c.call for c in configs}
    for service, methods in {
        "ragfleet.gateway.v1.GatewayService": ("Ask", "Retrieve", "Ingest"),
        "ragfleet.embedder.v1.EmbedderService": ("Embed", "GetModelInfo", "Rerank"),
        "ragfleet.retriever.v1.RetrieverService": ("Upsert", "Delete", "Search", "GetStats"),
        "ragfleet.generator.v1.GeneratorService": ("Generate", "ListModels"),
    }.items():
        assert {f"{service}/{m}" for m in methods} <= calls
    assert all(dict(c.metadata)["authorization"] in ("Bearer k", "Bearer c") for c in configs)


def test_bad_files_are_refused_naming_the_problem(tmp_path: Path) -> None:
    from ragfleet.runtime.errors import InvalidInput

    cases = {
        '{"call": "ragfleet.retriever.v1.RetrieverService/Nope"}': "has no method Nope",
        '{"call": "nope.Service/Get"}': "no service nope.Service",
        '{"call": "ragfleet.retriever.v1.RetrieverService/Search", "data": {"qery": 1}}': "data",
        '{"call": "x/y", "totl": 3}': "unknown keys",
        '{"call": "ragfleet.retriever.v1.RetrieverService/GetStats", '
        '"metadata": {"a": "${RAGFLEET_NOT_SET_ANYWHERE}"}}': "RAGFLEET_NOT_SET_ANYWHERE",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(InvalidInput, match=message):
            LoadConfig.load(path, env={})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAGFLEET_")},
        "RAGFLEET_RETRIEVER_PORT": str(port),
        "RAGFLEET_RETRIEVER_DATA_DIR": str(tmp_path_factory.mktemp("index")),
        "RAGFLEET_RETRIEVER_SERVICE_CREDENTIAL": CREDENTIAL,
        "RAGFLEET_RETRIEVER_GRACE_PERIOD_S": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragfleet_retriever"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with grpc.insecure_channel(address) as channel:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "retriever did not serve"
            time.sleep(0.2)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _loadtest(
    address: str, files: list[str], credential: str, *options: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGFLEET_SERVICE_CREDENTIAL": credential}
    paths = [str(ROOT / "loadtest" / f) for f in files]
    return subprocess.run(
        [str(RAGFLEET), "loadtest", *paths, "--host", address, *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_driver_prints_ghz_reports_against_a_live_service(retriever: str) -> None:
    files = ["retriever-upsert.json", "retriever-search.json", "retriever-stats.json"]
    done = _loadtest(retriever, files, CREDENTIAL, "--total", "40", "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Summary:") == 3
    assert "[OK]\t40 responses" in done.stdout and "Latency distribution:" in done.stdout
    as_json = _loadtest(retriever, ["retriever-search.json"], CREDENTIAL, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["count"] == 2000 and report["statusCodeDistribution"] == {"OK": 2000}
    assert report["fastest"] <= report["average"] <= report["slowest"]
    assert [d["percentage"] for d in report["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert report["rps"] > 0


def test_failed_calls_are_counted_by_status_and_fail_the_run(retriever: str) -> None:
    done = _loadtest(retriever, ["retriever-stats.json"], "wrong", "--total", "10")
    assert done.returncode == 1
    assert "[UNAUTHENTICATED]\t10 responses" in done.stdout
    assert "Error distribution:" in done.stdout and "code = UNAUTHENTICATED" in done.stdout
