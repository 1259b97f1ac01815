"""Latency of ``GatewayService.Retrieve`` on real services, for before/after comparisons.

Starts the real embedder, retriever (embedded on-disk index in a temporary data dir) and gateway
as ``python -m ragfleet_<service>`` processes on free ports (no generator: the gateway's
generator address points at a port nothing listens on, which Retrieve never uses), waits for
each to report SERVING on grpc.health.v1, ingests a corpus through the gateway's ``Ingest`` RPC
(the Markdown files under ``--corpus``, plus the first ``--scifact`` SciFact abstracts when the
dataset is present), then times ``Retrieve`` from the client: ``--warmup`` untimed requests, then
``--requests`` timed ones per mode (default: the gateway's default mode, hybrid; lexical; dense)
and per concurrency (``--concurrency 1,4``). Queries are SciFact's claims in file order (the
docs' headings when SciFact is not ingested). Reports p50, p95, p99 and mean client latency,
requests per second, and the median of each stage the gateway reports in
``RetrieveResponse.timings``.

Then, with the services stopped, the same work in this process with the raw libraries (``--raw``,
on by default): sentence-transformers' ``encode`` of each query with the same model, and the
retriever's core (tantivy, usearch, SQLite) searching the index the services built, with the
options the gateway sends; ``--concurrency`` callers at a time, each in its own thread. The
report sets service and raw latency side by side, with their ratio.

To compare two versions of the code, run it twice, once with the services imported from another
checkout (a git worktree of the older commit) through ``--checkout`` or ``--pythonpath``: those
folders go first on the children's PYTHONPATH, ahead of the venv's editable install. The script
prints where the children import ``ragfleet`` and each service from, and refuses to run when a
module does not come from the folders given. The client (this process) only uses the generated
gRPC stubs, not the code under test, and this checkout's ``ragfleet_gateway.auth`` to make the
API key it sends (the gateway gets the key's keys file; a checkout from before API keys gets
none and ignores the key). ``--hits-out`` saves each query's hit ids and
``--compare-hits`` checks a run against such a file (same ids in the same order).

Inherited ``RAGFLEET_*`` variables are not passed on, so both runs see the same settings; give
settings explicitly with ``--env NAME=VALUE`` (services refuse names they do not know). The
children get an empty ``HOME`` in the temporary folder, which is removed with every process at
the end, on errors and on Ctrl-C too. Not a timed test: it prints numbers and writes a report.

    git worktree add /tmp/rf-baseline <commit>
    .venv/bin/python benchmarks/gateway_retrieve.py --checkout /tmp/rf-baseline \\
        --concurrency 1,4 --report /tmp/before.md --hits-out /tmp/before.json
    .venv/bin/python benchmarks/gateway_retrieve.py \\
        --concurrency 1,4 --report /tmp/after.md --compare-hits /tmp/before.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import (
    Filter,
    SearchMode,
    SearchQuery,
    SearchResult,
    default_embedding_model_path,
)
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import insecure_channel
from ragfleet_gateway.auth import Role, add_key, new_key
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_retriever.server import build_core
from ragfleet_retriever.settings import RetrieverSettings

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
SERVICES = ("embedder", "retriever", "gateway")
MODULES = ("ragfleet", "ragfleet_embedder", "ragfleet_retriever", "ragfleet_gateway")
MODES = {
    "default": common_pb2.SEARCH_MODE_UNSPECIFIED,
    "hybrid": common_pb2.SEARCH_MODE_HYBRID,
    "lexical": common_pb2.SEARCH_MODE_LEXICAL,
    "dense": common_pb2.SEARCH_MODE_DENSE,
}
RAW_MODES = {
    "default": SearchMode.HYBRID,  # the gateway's default_mode
    "hybrid": SearchMode.HYBRID,
    "lexical": SearchMode.LEXICAL,
    "dense": SearchMode.DENSE,
}
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# --- processes ---------------------------------------------------------------------------------
def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies, even by SIGKILL."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Fleet:
    """The service processes, each in its own session with its log in ``log_dir``."""

    def __init__(self, python: str, env: dict[str, str], log_dir: Path) -> None:
        self.python = python
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, settings: dict[str, str]) -> None:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [self.python, "-m", f"ragfleet_{name}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **settings},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} during the benchmark; its log:\n"
                    + self.log_tail(name)
                )

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to every process group, SIGKILL to what is left after ``grace_s``."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self.procs.values():
            # The group too: anything a service spawned goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def child_env(pythonpath: Sequence[str], home: Path, extra: dict[str, str]) -> dict[str, str]:
    """The services' environment: ours without ``RAGFLEET_*``, ``pythonpath`` first."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RAGFLEET_")}
    paths = [*pythonpath, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def imported_from(python: str, env: dict[str, str]) -> dict[str, str]:
    """Where a child started like the services imports each of ``MODULES`` from."""
    code = (
        "import importlib, json, sys\n"
        f"names = {list(MODULES)!r}\n"
        "files = {n: importlib.import_module(n).__file__ for n in names}\n"
        "files['python'] = sys.executable + ' ' + sys.version.split()[0]\n"
        "print(json.dumps(files))\n"
    )
    out = subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{python} cannot import the services:\n{out.stderr[-3000:]}")
    files: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return files


def gateway_takes_keys(python: str, env: dict[str, str]) -> bool:
    """Whether the children's gateway has API keys (``api_keys_file``): a checkout from before
    them would refuse the setting."""
    code = (
        "from ragfleet_gateway.settings import GatewaySettings\n"
        "print('api_keys_file' in GatewaySettings.model_fields)\n"
    )
    out = subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def git_describe(path: Path) -> str:
    """``<short sha>`` of the checkout holding ``path``, with ``+uncommitted changes`` when its
    tracked files differ from it. Reads only (no index refresh)."""

    def git(*argv: str) -> str:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(path), *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    top = git("rev-parse", "--show-toplevel")
    if not top:
        return "not in a git checkout"
    sha = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{top} at {sha}" + (" + uncommitted changes" if dirty else " (clean)")


# --- corpus and queries ------------------------------------------------------------------------
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def markdown_documents(folder: Path) -> tuple[list[gateway_pb2.Document], list[str]]:
    """Every ``*.md`` under ``folder`` (sorted) as a document, and their headings in order."""
    documents, headings = [], []
    for path in sorted(folder.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            continue
        titles = [m.group(1) for line in text.splitlines() if (m := HEADING.match(line))]
        headings.extend(titles)
        documents.append(
            gateway_pb2.Document(
                source=path.relative_to(folder).as_posix(),
                title=titles[0] if titles else path.stem,
                text=text,
                content_type="text/markdown",
            )
        )
    return documents, headings


def scifact_documents(folder: Path, count: int) -> list[gateway_pb2.Document]:
    documents = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as lines:
        for line in lines:
            if len(documents) >= count:
                break
            row = json.loads(line)
            if row["text"].strip():
                documents.append(
                    gateway_pb2.Document(
                        source=f"scifact/{row['_id']}",
                        title=row.get("title", ""),
                        text=row["text"],
                        content_type="text/plain",
                    )
                )
    return documents


def scifact_queries(folder: Path) -> list[str]:
    with open(folder / "queries.jsonl", encoding="utf-8") as lines:
        return [q for line in lines if (q := json.loads(line)["text"].strip())]


def cycle(items: Sequence[str], count: int, start: int = 0) -> list[str]:
    return [items[(start + i) % len(items)] for i in range(count)]


# --- measuring ---------------------------------------------------------------------------------
@dataclass
class Run:
    mode: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    overhead_ms: list[float] = field(default_factory=list)
    hits: list[list[str]] = field(default_factory=list)
    degraded: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load: float = 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def wait_serving(fleet: Fleet, addresses: dict[str, str], timeout_s: float) -> float:
    """Seconds until every service reported SERVING; raises when one exits or time runs out."""
    start = time.monotonic()
    channels = {name: grpc.aio.insecure_channel(a) for name, a in addresses.items()}
    pending = set(channels)
    try:
        while pending:
            fleet.check_alive()
            for name in sorted(pending):
                stub = health_pb2_grpc.HealthStub(channels[name])
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        pending.discard(name)
                        print(
                            f"  {name} SERVING after {time.monotonic() - start:.1f} s", flush=True
                        )
            if pending and time.monotonic() - start > timeout_s:
                logs = "\n".join(f"--- {n}:\n{fleet.log_tail(n)}" for n in sorted(pending))
                raise TimeoutError(
                    f"not SERVING after {timeout_s:.0f} s: {sorted(pending)}\n{logs}"
                )
            if pending:
                await asyncio.sleep(0.5)
    finally:
        for channel in channels.values():
            await channel.close()
    return time.monotonic() - start


async def ingest(
    stub: gateway_pb2_grpc.GatewayServiceStub, documents: list[gateway_pb2.Document], batch: int
) -> tuple[int, float]:
    """Chunks indexed and seconds taken, ``batch`` documents per Ingest request."""
    start = time.perf_counter()
    chunks = 0
    for i in range(0, len(documents), batch):
        reply = await stub.Ingest(
            gateway_pb2.IngestRequest(documents=documents[i : i + batch]), timeout=900
        )
        chunks += reply.chunks
        print(f"  ingested {min(i + batch, len(documents))}/{len(documents)} documents", flush=True)
    return chunks, time.perf_counter() - start


def request(query: str, mode: str, top_k: int | None) -> gateway_pb2.RetrieveRequest:
    options = gateway_pb2.RetrievalOptions(mode=MODES[mode])
    if top_k is not None:
        options.top_k = top_k
    return gateway_pb2.RetrieveRequest(query=query, retrieval=options)


async def measure(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    fleet: Fleet,
    run: Run,
    queries: list[str],
    top_k: int | None,
    timeout_s: float,
    timed: bool = True,
) -> None:
    """Sends every query once, ``run.concurrency`` at a time; records into ``run`` if timed."""
    results: list[tuple[float, gateway_pb2.RetrieveResponse] | None] = [None] * len(queries)
    indexes = iter(range(len(queries)))

    async def worker() -> None:
        for i in indexes:  # shared by the workers: each query is sent once
            began = time.perf_counter()
            try:
                reply = await stub.Retrieve(request(queries[i], run.mode, top_k), timeout=timeout_s)
            except grpc.aio.AioRpcError as err:
                if timed:
                    run.errors.append(f"{err.code().name}: {err.details()}")
                fleet.check_alive()
                continue
            results[i] = ((time.perf_counter() - began) * 1000, reply)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(run.concurrency)))
    if not timed:
        return
    run.wall_s = time.perf_counter() - began
    run.load = os.getloadavg()[0]
    for result in results:
        if result is None:
            run.hits.append([])
            continue
        ms, reply = result
        run.latencies_ms.append(ms)
        run.hits.append([h.chunk.id for h in reply.hits])
        run.degraded += reply.degraded
        for timing in reply.timings:
            run.stages.setdefault(timing.stage, []).append(timing.ms)
            if timing.stage == "total":
                run.overhead_ms.append(ms - timing.ms)


async def measure_raw(
    run: Run,
    queries: list[str],
    encode: Callable[[str], list[float]],
    search: Callable[[str, Sequence[float], SearchMode], Awaitable[SearchResult]],
    timed: bool = True,
) -> None:
    """``measure`` for the raw libraries: each of ``run.concurrency`` callers embeds a query
    (``encode``, blocking, in its own thread) and awaits ``search`` on it."""
    results: list[tuple[float, list[str]] | None] = [None] * len(queries)
    indexes = iter(range(len(queries)))
    loop = asyncio.get_running_loop()
    embeds = run.mode != "lexical"

    async def worker(pool: ThreadPoolExecutor) -> None:
        for i in indexes:
            began = time.perf_counter()
            vector: Sequence[float] = ()
            if embeds:
                vector = await loop.run_in_executor(pool, encode, queries[i])
            found = await search(queries[i], vector, RAW_MODES[run.mode])
            results[i] = ((time.perf_counter() - began) * 1000, [h.chunk.id for h in found.hits])

    with ThreadPoolExecutor(max_workers=run.concurrency, thread_name_prefix="raw") as pool:
        began = time.perf_counter()
        await asyncio.gather(*(worker(pool) for _ in range(run.concurrency)))
        wall_s = time.perf_counter() - began
    if not timed:
        return
    run.wall_s = wall_s
    run.load = os.getloadavg()[0]
    for result in results:
        assert result is not None
        run.latencies_ms.append(result[0])
        run.hits.append(result[1])


async def raw_baseline(
    index_dir: Path,
    runs: list[Run],
    queries: list[str],
    warmup: list[str],
    top_k: int,
    tenant: str,
) -> list[Run]:
    """One raw run for each of ``runs`` (same mode, concurrency and queries), on the index in
    ``index_dir`` (the services must have stopped)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_embedding_model_path()), local_files_only=True)

    def encode(query: str) -> list[float]:
        vector = model.encode([query], normalize_embeddings=True, show_progress_bar=False)[0]
        return [float(x) for x in vector]

    core = build_core(RetrieverSettings(data_dir=index_dir))
    await core.load()

    async def search(query: str, vector: Sequence[float], mode: SearchMode) -> SearchResult:
        return await core.search(
            SearchQuery(
                query=query, vector=vector, mode=mode, top_k=top_k, filter=Filter(tenant=tenant)
            )
        )

    raw_runs = []
    try:
        for service_run in runs:
            run = Run(service_run.mode, service_run.concurrency)
            await measure_raw(run, warmup, encode, search, timed=False)
            await measure_raw(run, queries, encode, search)
            raw_runs.append(run)
            print("raw " + "\n".join(latency_table([run])[2:]), flush=True)
    finally:
        await core.close()
    return raw_runs


# --- reporting ---------------------------------------------------------------------------------
def latency_table(runs: list[Run]) -> list[str]:
    lines = [
        "| mode | concurrency | requests | p50 (ms) | p95 (ms) | p99 (ms) | mean (ms) "
        "| requests/s | errors | degraded | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ms = run.latencies_ms
        if not ms:
            lines.append(
                f"| {label(run.mode)} | {run.concurrency} | 0 | - | - | - | - | - "
                f"| {len(run.errors)} | - | {run.load:.2f} |"
            )
            continue
        lines.append(
            f"| {label(run.mode)} | {run.concurrency} | {len(ms)} | {statistics.median(ms):.1f} "
            f"| {percentile(ms, 95):.1f} | {percentile(ms, 99):.1f} | {statistics.mean(ms):.1f} "
            f"| {len(ms) / run.wall_s:.1f} | {len(run.errors)} | {run.degraded} | {run.load:.2f} |"
        )
    return lines


def raw_table(runs: list[Run], raw_runs: list[Run]) -> list[str]:
    """Service against raw, row by row: p50 and p99 (ms), requests/s, their ratios, and how
    many queries got the same hit ids in the same order."""
    lines = [
        "| mode | concurrency | service p50 | raw p50 | p50 ratio | service p99 | raw p99 "
        "| p99 ratio | service req/s | raw req/s | same hits |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, raw in zip(runs, raw_runs, strict=True):
        if not run.latencies_ms or not raw.latencies_ms:
            continue
        p50, raw50 = statistics.median(run.latencies_ms), statistics.median(raw.latencies_ms)
        p99, raw99 = percentile(run.latencies_ms, 99), percentile(raw.latencies_ms, 99)
        rps, raw_rps = len(run.latencies_ms) / run.wall_s, len(raw.latencies_ms) / raw.wall_s
        same = sum(a == b for a, b in zip(run.hits, raw.hits, strict=True) if a)
        lines.append(
            f"| {label(run.mode)} | {run.concurrency} | {p50:.1f} | {raw50:.1f} "
            f"| {p50 / raw50:.2f} | {p99:.1f} | {raw99:.1f} | {p99 / raw99:.2f} "
            f"| {rps:.1f} | {raw_rps:.1f} "
            f"| {same}/{len(run.latencies_ms)} |"
        )
    return lines


def stage_table(runs: list[Run]) -> list[str]:
    stages: list[str] = []
    for run in runs:
        stages.extend(s for s in run.stages if s not in stages)
    if not stages:
        return ["The Retrieve replies carried no timings."]
    if "total" in stages:  # last, as the gateway sends it
        stages.remove("total")
        stages.append("total")
    lines = [
        "| mode | concurrency | " + " | ".join(stages) + " | client - gateway total |",
        "|---|---|" + "---|" * (len(stages) + 1),
    ]
    for run in runs:
        cells = []
        for stage in stages:
            values = run.stages.get(stage, [])
            cells.append(f"{statistics.median(values):.1f}" if values else "-")
            if values and len(values) != len(run.latencies_ms):
                cells[-1] += f" ({len(values)} replies)"
        overhead = f"{statistics.median(run.overhead_ms):.1f}" if run.overhead_ms else "-"
        lines.append(
            f"| {label(run.mode)} | {run.concurrency} | " + " | ".join(cells) + f" | {overhead} |"
        )
    return lines


def label(mode: str) -> str:
    return "default (hybrid)" if mode == "default" else mode


def fingerprint(documents: Sequence[gateway_pb2.Document]) -> str:
    """A short hash of every document's source, title and text, in ingestion order."""
    digest = hashlib.sha256()
    for doc in documents:
        for part in (doc.source, doc.title, doc.text):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:12]


def hits_of(runs: list[Run], queries: list[str], corpus: str) -> dict[str, object]:
    """The hit ids of each mode's first timed run, by query position."""
    saved: dict[str, object] = {"corpus": corpus, "queries": queries, "modes": {}}
    modes: dict[str, list[list[str]]] = {}
    for run in runs:
        modes.setdefault(run.mode, run.hits)
    saved["modes"] = modes
    return saved


def compare_hits(current: dict[str, object], path: Path) -> list[str]:
    other = json.loads(path.read_text())
    if other["queries"] != current["queries"]:
        return [f"Hits not compared with {path}: its queries differ from this run's."]
    if other.get("corpus") != current["corpus"]:
        return [
            f"Hits not compared with {path}: its corpus ({other.get('corpus')}) differs from "
            f"this run's ({current['corpus']}); ingest the same files in both runs."
        ]
    lines = [
        f"Hit ids against `{path}` (same queries, same positions). Even the same code gives "
        "different lists for a few percent of queries from run to run: dense search is "
        "approximate (an HNSW graph built anew each run) and equal BM25 scores are ordered by "
        "where the index put the chunks; two runs of one commit show the level to expect.",
        "",
        "| mode | queries | same ids, same order | same ids, any order | top-1 same |",
        "|---|---|---|---|---|",
    ]
    mine: dict[str, list[list[str]]] = current["modes"]  # type: ignore[assignment]
    for mode, hits in mine.items():
        theirs = other["modes"].get(mode)
        if theirs is None:
            lines.append(f"| {label(mode)} | - | not in {path.name} | | |")
            continue
        pairs = [(a, b) for a, b in zip(hits, theirs, strict=True) if a and b]
        lines.append(
            f"| {label(mode)} | {len(pairs)} | {sum(a == b for a, b in pairs)} "
            f"| {sum(set(a) == set(b) for a, b in pairs)} "
            f"| {sum(a[:1] == b[:1] for a, b in pairs)} |"
        )
    return lines


# --- main --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=300, help="timed requests per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per run")
    parser.add_argument(
        "--modes", default="default,lexical,dense", help=f"comma list of {', '.join(MODES)}"
    )
    parser.add_argument("--concurrency", default="1", help="comma list, e.g. 1,4")
    parser.add_argument("--top-k", type=int, default=None, help="unset: the gateway's default")
    parser.add_argument("--corpus", type=Path, default=ROOT / "docs", help="Markdown folder")
    parser.add_argument("--scifact", type=int, default=2000, help="abstracts to ingest; 0: none")
    parser.add_argument("--scifact-dir", type=Path, default=SCIFACT)
    parser.add_argument("--ingest-batch", type=int, default=64, help="documents per Ingest")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the services")
    parser.add_argument(
        "--pythonpath",
        default="",
        help=f"'{os.pathsep}'-separated folders put first on the services' PYTHONPATH",
    )
    parser.add_argument(
        "--checkout",
        type=Path,
        default=None,
        help="another checkout of ragfleet: adds its src and services/*/src to --pythonpath",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the services (e.g. RAGFLEET_RETRIEVER_DEFAULT_CANDIDATE_K=100); "
        "repeatable",
    )
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each Retrieve")
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown report here")
    parser.add_argument("--hits-out", type=Path, default=None, help="save hit ids (JSON)")
    parser.add_argument("--compare-hits", type=Path, default=None, help="a --hits-out file")
    parser.add_argument(
        "--raw",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the same work with the raw libraries in this process",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    return parser.parse_args()


def pythonpath_of(args: argparse.Namespace) -> list[str]:
    paths = [p for p in args.pythonpath.split(os.pathsep) if p]
    if args.checkout is not None:
        checkout = args.checkout.resolve()
        paths += [str(checkout / "src")]
        paths += [str(p) for p in sorted((checkout / "services").glob("*/src"))]
    missing = [p for p in paths if not Path(p).is_dir()]
    if missing:
        raise SystemExit(f"--pythonpath/--checkout: not folders: {missing}")
    return [str(Path(p).resolve()) for p in paths]


def settings_of(args: argparse.Namespace) -> dict[str, str]:
    extra = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        prefixes = tuple(f"RAGFLEET_{s.upper()}_" for s in SERVICES)
        if not sep or not name.startswith(prefixes):
            raise SystemExit(
                f"--env {item!r}: expected RAGFLEET_<SERVICE>_<SETTING>=VALUE "
                f"for one of {', '.join(SERVICES)}"
            )
        extra[name] = value
    return extra


async def benchmark(args: argparse.Namespace, fleet: Fleet, tmp: Path) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    load_before = os.getloadavg()

    # Corpus and queries, before anything starts: a missing file fails fast.
    documents, headings = markdown_documents(args.corpus)
    scifact = args.scifact > 0 and (args.scifact_dir / "corpus.jsonl").exists()
    if args.scifact > 0 and not scifact:
        print(f"SciFact not found at {args.scifact_dir}: docs only, headings as queries")
    if scifact:
        documents += scifact_documents(args.scifact_dir, args.scifact)
        pool, query_source = scifact_queries(args.scifact_dir), "SciFact claims (queries.jsonl)"
    else:
        pool, query_source = headings, f"headings of {args.corpus}"
    if not documents or not pool:
        raise SystemExit(f"nothing to ingest or no queries under {args.corpus}")
    queries = cycle(pool, args.requests)
    # Warm-up queries come from the other end of the pool, so they differ from the timed ones.
    warmup = cycle(pool[::-1], args.warmup)

    # Where the children import from.
    pythonpath = pythonpath_of(args)
    extra = settings_of(args)
    env = child_env(pythonpath, tmp / "home", {})
    files = imported_from(args.python, env)
    print("services import from:")
    for name, path in files.items():
        print(f"  {name}: {path}")
    if pythonpath:
        stray = {
            n: f
            for n, f in files.items()
            if n != "python" and not any(f.startswith(p + os.sep) for p in pythonpath)
        }
        if stray:
            raise SystemExit(f"these modules do not come from --pythonpath/--checkout: {stray}")
    code = git_describe(Path(files["ragfleet_gateway"]).parent)
    print(f"code: {code}")

    # Start the fleet.
    ports = dict(
        zip(("embedder", "retriever", "gateway", "rest", "generator"), free_ports(5), strict=True)
    )
    host = "127.0.0.1"
    common = {"LOG_FORMAT": "json", "GRACE_PERIOD_S": "1", "HOST": host}

    def service(name: str, own: dict[str, str]) -> dict[str, str]:
        prefix = f"RAGFLEET_{name.upper()}_"
        values = {f"{prefix}{k}": v for k, v in {**common, **own}.items()}
        return {**values, **{k: v for k, v in extra.items() if k.startswith(prefix)}}

    keys: dict[str, str] = {}
    key = None
    if gateway_takes_keys(args.python, env):
        key, entry = new_key("default", frozenset({Role.QUERY, Role.INGEST}), "benchmark")
        add_key(tmp / "api_keys.json", entry)
        keys["API_KEYS_FILE"] = str(tmp / "api_keys.json")

    fleet.env = env
    began = time.monotonic()
    fleet.start("embedder", service("embedder", {"PORT": str(ports["embedder"])}))
    fleet.start(
        "retriever",
        service("retriever", {"PORT": str(ports["retriever"]), "DATA_DIR": str(tmp / "index")}),
    )
    fleet.start(
        "gateway",
        service(
            "gateway",
            {
                "PORT": str(ports["gateway"]),
                "REST_PORT": str(ports["rest"]),
                "EMBEDDER_ADDRESS": f"{host}:{ports['embedder']}",
                "RETRIEVER_ADDRESS": f"{host}:{ports['retriever']}",
                # Nothing listens there: Retrieve never calls the generator.
                "GENERATOR_ADDRESS": f"{host}:{ports['generator']}",
                "INGEST_MANIFEST_PATH": str(tmp / "ingest" / "manifest.sqlite"),
                **keys,
            },
        ),
    )
    print(f"started {', '.join(SERVICES)} (logs in {tmp / 'logs'}); waiting for SERVING")
    addresses = {name: f"{host}:{ports[name]}" for name in SERVICES}
    await wait_serving(fleet, addresses, args.startup_timeout)
    startup_s = time.monotonic() - began

    runs: list[Run] = []
    async with insecure_channel(addresses["gateway"], key) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        print(f"ingesting {len(documents)} documents")
        chunks, ingest_s = await ingest(stub, documents, args.ingest_batch)
        print(f"  {chunks} chunks in {ingest_s:.1f} s")
        for concurrency in levels:
            for mode in modes:
                run = Run(mode, concurrency)
                await measure(stub, fleet, run, warmup, args.top_k, args.timeout, timed=False)
                await measure(stub, fleet, run, queries, args.top_k, args.timeout)
                runs.append(run)
                print("\n".join(latency_table([run])[2:]), flush=True)
                fleet.check_alive()
    fleet.stop()

    raw_runs: list[Run] = []
    if args.raw:
        print("the same work with the raw libraries, in this process")
        top_k = args.top_k or GatewaySettings.model_fields["default_top_k"].default
        raw_runs = await raw_baseline(
            tmp / "index", runs, queries, warmup, top_k, "default" if key else ""
        )

    # Report.
    load_after = os.getloadavg()
    corpus = fingerprint(documents)
    saved = hits_of(runs, queries, corpus)
    lines = [
        "# Gateway Retrieve latency",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.node()}, "
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (1 min)",
        f"- code under test: {code}",
        "- services import from: "
        + ", ".join(f"`{n}` {f}" for n, f in files.items() if n != "python"),
        f"- interpreter: {files['python']}; extra settings: "
        + (", ".join(f"{k}={v}" for k, v in extra.items()) or "none"),
        "- fleet up (embedder, retriever, gateway; no generator) to all SERVING: "
        f"{startup_s:.1f} s",
        f"- corpus: {len(documents)} documents ({args.corpus} Markdown"
        + (f" + first {args.scifact} SciFact abstracts" if scifact else "")
        + f"), {chunks} chunks, ingested through the gateway in {ingest_s:.1f} s; "
        f"content hash {corpus}",
        f"- queries: {args.requests} timed per row from {query_source}, after {args.warmup} "
        f"untimed; top_k {args.top_k if args.top_k is not None else 'gateway default'}",
        "",
        "Client latency of `GatewayService.Retrieve` (p95 is nearest-rank; load 1 min: the "
        f"machine's 1-minute load average as the row ended, on {os.cpu_count()} CPUs):",
        "",
        *latency_table(runs),
        "",
        "Median of each stage in `RetrieveResponse.timings` (ms), and of client latency minus "
        "the gateway's `total` (gRPC and client overhead):",
        "",
        *stage_table(runs),
    ]
    if raw_runs:
        lines += [
            "",
            "The same work with the raw libraries in this process (sentence-transformers "
            "`encode` of the query, the retriever core's search on the index the services "
            "built), the services stopped; same hits: queries whose hit ids match the "
            "service's in order:",
            "",
            *latency_table(raw_runs),
            "",
            *raw_table(runs, raw_runs),
        ]
    if args.compare_hits is not None:
        lines += ["", *compare_hits(saved, args.compare_hits)]
    command = shlex.join([sys.executable, *sys.argv])
    lines += ["", "Command:", "", f"    {command}", ""]
    text = "\n".join(lines)
    print()
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
        print(f"report written to {args.report}")
    if args.hits_out is not None:
        args.hits_out.write_text(json.dumps(saved))
        print(f"hit ids written to {args.hits_out}")
    return 1 if any(run.errors for run in runs) else 0


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="ragfleet-retrieve-bench-"))
    (tmp / "logs").mkdir()
    (tmp / "home").mkdir()
    fleet = Fleet(args.python, {}, tmp / "logs")
    try:
        return asyncio.run(benchmark(args, fleet, tmp))
    except KeyboardInterrupt:
        print("interrupted; stopping the services", file=sys.stderr)
        return 130
    except Exception:
        for name in fleet.procs:
            print(f"--- last lines of {name}'s log:\n{fleet.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        fleet.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
