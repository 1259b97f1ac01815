"""The whole fleet through the CLI: `ragfleet up`, a real question about docs/, `ragfleet down`.

Real processes on free ports, real models, a real on-disk index under a temporary home.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RAGFLEET = str(Path(sys.executable).parent / "ragfleet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("fleet")
    env = {
        **os.environ,
        "RAGFLEET_HOME": str(home),
        "RAGFLEET_GATEWAY_PORT": str(_free_port()),
        "RAGFLEET_GATEWAY_REST_PORT": str(_free_port()),
        "RAGFLEET_EMBEDDER_PORT": str(_free_port()),
        "RAGFLEET_RETRIEVER_PORT": str(_free_port()),
        "RAGFLEET_GENERATOR_PORT": str(_free_port()),
        "RAGFLEET_GENERATOR_HTTP_PORT": str(_free_port()),
        "RAGFLEET_RAY_PORT": str(_free_port()),
    }
    up = subprocess.run(
        [RAGFLEET, "up", "--corpus", "docs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        assert up.returncode == 0, f"ragfleet up failed:\n{up.stdout}\n{up.stderr}"
        assert "all services SERVING" in up.stdout
        assert "ingested" in up.stdout
        yield env
    finally:
        subprocess.run([RAGFLEET, "down"], cwd=ROOT, env=env, timeout=120, check=False)


def _ragfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAGFLEET, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_status_reports_every_service_serving(fleet_env: dict[str, str]) -> None:
    result = _ragfleet(fleet_env, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("embedder", "retriever", "generator", "gateway"):
        assert any(
            line.startswith(name) and line.endswith("SERVING")
            for line in result.stdout.splitlines()
        ), result.stdout


def test_ask_answers_from_the_docs_with_a_citation(fleet_env: dict[str, str]) -> None:
    result = _ragfleet(fleet_env, "ask", "Which port does the gateway listen on for gRPC?")
    assert result.returncode == 0, result.stdout + result.stderr
    answer, _, citations = result.stdout.partition("Citations:")
    assert "50050" in answer, result.stdout
    assert "docs/configuration.md" in citations, result.stdout


def test_rest_bridge_answers_and_rejects_bad_input(fleet_env: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{fleet_env['RAGFLEET_GATEWAY_REST_PORT']}"
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    reply = httpx.post(
        f"{base}/v1/retrieve", json={"query": "graceful shutdown SIGTERM"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert any(h["chunk"]["source"] == "docs/operations.md" for h in reply.json()["hits"])
    bad = httpx.post(f"{base}/v1/ask", json={"question": "   "}, timeout=10)
    assert bad.status_code == 400
    assert "question" in bad.json()["error"]["message"]


def test_bad_input_over_grpc_exits_with_the_status(fleet_env: dict[str, str]) -> None:
    result = _ragfleet(fleet_env, "ask", "What is ragfleet?", "--top-k", "0")
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stderr and "top_k" in result.stderr
