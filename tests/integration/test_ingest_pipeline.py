"""The ingestion pipeline for real: local Ray (one per module), the real embedder and real
retriever servers (subprocesses, free ports, index in a temporary directory).

Covers a directory with bad files, re-runs (no-op, change, --sync), HTTP sources against a local
http.server (timeouts, 500s, non-UTF-8), SIGKILL at random points with a rerun proving the index
equals a clean run's, and the gateway's doors (REST job, Ingest RPC with a source).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.ingest import EmbeddingBackend, IngestConfig, ReadLimits, run_ingest
from ragfleet.ingest.manifest import Manifest
from ragfleet_gateway.auth import Role, add_key, new_key

pytestmark = pytest.mark.integration

RAGFLEET = str(Path(sys.executable).parent / "ragfleet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server at {address} exited with {proc.returncode}"
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise TimeoutError(address)


def start_service(
    module: str, prefix: str, env: dict[str, str]
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, f"{prefix}_PORT": str(port), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    wait_serving(address, proc)
    return address, proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def gcs_address() -> Iterator[str]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def embedder() -> Iterator[str]:
    address, proc = start_service("ragfleet_embedder", "RAGFLEET_EMBEDDER", {})
    yield address
    stop(proc)


Index = tuple[str, Path]


@pytest.fixture
def new_index(tmp_path: Path) -> Iterator[Callable[[], Index]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> Index:
        data = tmp_path / f"index{len(procs)}"
        address, proc = start_service(
            "ragfleet_retriever", "RAGFLEET_RETRIEVER", {"RAGFLEET_RETRIEVER_DATA_DIR": str(data)}
        )
        procs.append(proc)
        return address, data

    yield start
    for proc in procs:
        stop(proc)


def indexed(data: Path) -> list[tuple[str, str]]:
    """(id, source) of every chunk in the retriever's catalog, sorted."""
    with sqlite3.connect(data / "catalog.sqlite3") as db:
        return sorted(db.execute("SELECT id, source FROM chunks"))


def config(index: Index, embedder: str, **overrides: object) -> IngestConfig:
    values: dict[str, object] = {
        "retriever_address": index[0],
        "embedder_address": embedder,
        "embedding": EmbeddingBackend.SERVICE,
        "worker_cpus": 0.5,
        "read_cpus": 0.25,
        **overrides,
    }
    return IngestConfig(**values)  # type: ignore[arg-type]


def test_directory_bad_files_rerun_change_and_sync(
    gcs_address: str, embedder: str, new_index: Callable[[], Index], tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.md").write_text("# Keep\n\nThis page stays the same.\n\n" + "Alpha words. " * 120)
    (docs / "change.txt").write_text("Version one of a changing file.")
    (docs / "gone.html").write_text("<h1>Gone</h1><p>Soon removed.</p>")
    (docs / "empty.md").write_text("  \n")
    (docs / "garbage.txt").write_bytes(os.urandom(64) + b"\x00" * 8)
    (docs / "latin.txt").write_bytes("na\u00efve caf\u00e9".encode("latin-1"))
    (docs / "huge.md").write_text("big " * 2000)
    index = new_index()
    manifest = tmp_path / "manifest.sqlite"
    cfg = config(index, embedder, limits=ReadLimits(max_document_bytes=4096))

    first = run_ingest(str(docs), cfg, manifest)
    assert (first.documents, first.added, first.skipped, first.failed) == (7, 3, 1, 3)
    reasons = {Path(r.source).name: r.reason for r in first.failures}
    assert reasons["garbage.txt"].startswith("binary content")
    assert reasons["latin.txt"].startswith("not valid UTF-8")
    assert "exceeds the limit of 4096 bytes" in reasons["huge.md"]
    chunks = indexed(index[1])
    assert len(chunks) == first.chunks_added > 3
    with Manifest(manifest) as m:
        recorded = sorted((i, s) for s, e in m.entries("").items() for i in e.chunk_ids)
    assert recorded == chunks

    again = run_ingest(str(docs), cfg, manifest)
    assert (again.unchanged, again.added, again.replaced, again.chunks_added) == (3, 0, 0, 0)
    assert indexed(index[1]) == chunks

    (docs / "change.txt").write_text("Version two, quite different now.")
    (docs / "gone.html").unlink()
    cfg = config(index, embedder, sync=True, limits=ReadLimits(max_document_bytes=4096))
    changed = run_ingest(str(docs), cfg, manifest)
    assert (changed.replaced, changed.unchanged, changed.deleted) == (1, 1, 1)
    after = indexed(index[1])
    sources = {Path(s).name for _, s in after}
    assert sources == {"keep.md", "change.txt"}
    assert changed.chunks_deleted == 2 and len(after) == len(chunks) - 1


class _Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/sitemap.xml":
            urls = "".join(
                f"<url><loc>{base}{p}</loc></url>"
                for p in ("/ok.html", "/plain", "/broken", "/slow", "/latin")
            )
            body = (
                '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                f"{urls}</urlset>"
            ).encode()
            self._send(200, "application/xml", body)
        elif self.path == "/ok.html":
            self._send(200, "text/html; charset=utf-8", b"<h1>Ok</h1><p>A fine page.</p>")
        elif self.path == "/plain":
            self._send(200, "text/plain; charset=iso-8859-1", "caf\u00e9 ok".encode("latin-1"))
        elif self.path == "/broken":
            self._send(500, "text/plain", b"boom")
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, "text/plain", b"too late")
        else:
            self._send(200, "text/plain", "caf\u00e9".encode("latin-1"))

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_sitemap_over_http_reports_bad_pages(
    gcs_address: str, embedder: str, new_index: Callable[[], Index], tmp_path: Path, site: str
) -> None:
    index = new_index()
    cfg = config(index, embedder, limits=ReadLimits(http_timeout_s=1.0))
    summary = run_ingest(f"{site}/sitemap.xml", cfg, tmp_path / "manifest.sqlite")
    assert (summary.documents, summary.added, summary.failed) == (5, 2, 3)
    reasons = {r.source.rsplit("/", 1)[1]: r.reason for r in summary.failures}
    assert reasons.pop("latin").startswith("not valid UTF-8 text")
    assert reasons == {"broken": "HTTP 500 Internal Server Error", "slow": "timed out after 1s"}
    assert {s for _, s in indexed(index[1])} == {f"{site}/ok.html", f"{site}/plain"}


def _corpus(path: Path, documents: int) -> None:
    rng = random.Random(7)
    words = [
        "cell",
        "protein",
        "gene",
        "tumor",
        "immune",
        "signal",
        "receptor",
        "pathway",
        "enzyme",
        "membrane",
    ]
    with path.open("w") as out:
        for i in range(documents):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(40, 400)))
            out.write(json.dumps({"_id": f"doc{i}", "title": f"Doc {i}", "text": text}) + "\n")


def _cli(corpus: Path, index: Index, embedder: str, home: Path, gcs: str) -> list[str]:
    port = index[0].rsplit(":", 1)[1]
    return [
        "env",
        f"RAGFLEET_RETRIEVER_PORT={port}",
        f"RAGFLEET_EMBEDDER_PORT={embedder.rsplit(':', 1)[1]}",
        f"RAGFLEET_HOME={home}",
        RAGFLEET,
        "ingest",
        str(corpus),
        "--json",
        "--embedding",
        "service",
        "--worker-cpus",
        "0.5",
        "--ray-address",
        gcs,
    ]


def test_sigkill_at_random_points_then_rerun_equals_clean_run(
    gcs_address: str, embedder: str, new_index: Callable[[], Index], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    _corpus(corpus, 120)
    clean, crashed = new_index(), new_index()
    clean_run = subprocess.run(
        _cli(corpus, clean, embedder, tmp_path / "clean", gcs_address),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert clean_run.returncode == 0, clean_run.stderr
    rng = random.Random(int(time.time()))
    kills = 0
    for _ in range(2):
        proc = subprocess.Popen(
            _cli(corpus, crashed, embedder, tmp_path / "crashed", gcs_address),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(rng.uniform(2.0, 12.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    final = subprocess.run(
        _cli(corpus, crashed, embedder, tmp_path / "crashed", gcs_address),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["documents"] == 120 and summary["failed"] == 0
    assert kills >= 1
    want, got = indexed(clean[1]), indexed(crashed[1])
    assert len(got) == len({i for i, _ in got}) == len(want)
    assert got == want


def test_gateway_rest_job_and_ingest_rpc(
    gcs_address: str, embedder: str, new_index: Callable[[], Index], tmp_path: Path
) -> None:
    index = new_index()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "one.md").write_text("# One\n\nThe first gateway document.")
    (docs / "two.txt").write_text("The second gateway document.")
    key, entry = new_key("default", frozenset({Role.INGEST}))
    add_key(tmp_path / "api_keys.json", entry)
    bearer = {"authorization": f"Bearer {key}"}
    env = {
        "RAGFLEET_GATEWAY_API_KEYS_FILE": str(tmp_path / "api_keys.json"),
        "RAGFLEET_GATEWAY_REST_PORT": str(free_port()),
        "RAGFLEET_GATEWAY_RETRIEVER_ADDRESS": index[0],
        "RAGFLEET_GATEWAY_EMBEDDER_ADDRESS": embedder,
        "RAGFLEET_GATEWAY_INGEST_RAY_ADDRESS": gcs_address,
        "RAGFLEET_GATEWAY_INGEST_MANIFEST_PATH": str(tmp_path / "manifest.sqlite"),
        "RAGFLEET_GATEWAY_INGEST_ALLOWED_ROOTS": json.dumps([str(docs)]),
    }
    address, proc = start_service("ragfleet_gateway", "RAGFLEET_GATEWAY", env)
    rest = f"http://127.0.0.1:{env['RAGFLEET_GATEWAY_REST_PORT']}"
    try:
        with httpx.Client(base_url=rest, timeout=30, headers=bearer) as client:
            unauthenticated = client.post(
                "/v1/ingest/jobs", json={"source": str(docs)}, headers={"authorization": ""}
            )
            assert unauthenticated.status_code == 401
            assert client.get("/v1/ingest/jobs/nope").status_code == 404
            refused = client.post("/v1/ingest/jobs", json={"source": str(tmp_path)})
            assert refused.status_code == 400
            assert "allowed root" in refused.json()["error"]["message"]
            started = client.post("/v1/ingest/jobs", json={"source": str(docs)})
            assert started.status_code == 202, started.text
            job_id = started.json()["id"]
            deadline = time.monotonic() + 300
            job = started.json()
            while job["state"] == "running" and time.monotonic() < deadline:
                time.sleep(1)
                job = client.get(f"/v1/ingest/jobs/{job_id}").json()
        assert job["state"] == "succeeded", job
        assert job["summary"]["added"] == 2 and job["summary"]["chunks_added"] == 2
        with grpc.insecure_channel(address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            metadata = tuple(bearer.items())
            reply = stub.Ingest(
                gateway_pb2.IngestRequest(source=str(docs)), timeout=300, metadata=metadata
            )
            assert (reply.documents, reply.unchanged, reply.added) == (2, 2, 0)
            with pytest.raises(grpc.RpcError) as err:
                stub.Ingest(
                    gateway_pb2.IngestRequest(
                        source=str(docs), documents=[gateway_pb2.Document(source="x", text="y")]
                    ),
                    timeout=30,
                    metadata=metadata,
                )
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert len(indexed(index[1])) == 2
    finally:
        stop(proc)
