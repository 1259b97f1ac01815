"""Retriever search latency at scale (default 100,000 chunks) on the embedded backend, against
the design target "hybrid p99 <= 20 ms at 100k chunks".

Builds an embedded index (SQLite + tantivy BM25 + usearch HNSW) of ``--chunks`` passages in
``--workdir`` (a temporary folder when not given; with ``--workdir`` the index is kept and reused
by later runs with the same parameters). Passages are real prose: sentences of SciFact abstracts
(``corpus.jsonl``, read in place) recombined into ~``--words``-word passages, each mostly from one
abstract and topped up from abstracts near it, spread over ``--tenants`` tenants in turn.

Vectors are 384-d unit vectors. Embedding 100k passages with the real model would take hours on
a small CPU machine, so a passage's vector is the word-weighted mean of the vectors of the
abstracts its sentences come from, plus small noise: the abstracts' vectors are the real
all-MiniLM-L6-v2 ones when the evaluator's cache (``--cache-dir``, an unchunked SciFact index)
holds them, random unit "cluster centres" otherwise. Queries are SciFact claims
(``queries.jsonl``); their vectors are the real model's when it is installed (encoded once, in a
child process, and cached in the work folder), otherwise a random abstract's vector plus noise.
The report says which were used.

Then times searches with one client, ``--warmup`` untimed and ``--queries`` timed per row, for
lexical, dense and hybrid (the retriever's default fusion, ``top_k`` ``--top-k``, the default
candidate depth unless ``--candidate-k``), each without and with a tenant filter (the tenant
rotates with the query): first through the retriever core in this process (``Retriever.search``,
which runs the backend in a worker thread as the service does), then through the real service
(``python -m ragfleet_retriever`` on a free port, SearchRequest over gRPC on 127.0.0.1), each
``--repeats`` times, rows interleaved. Reports the median over repeats of p50/p95/p99 and
requests/s (and the p99 range), the build time, the index's size on disk and the RSS of both
processes, a per-stage breakdown of hybrid search (lexical, dense, fusion, fetch, timed one
after the other in this thread) and a short cProfile of it.

    .venv/bin/python benchmarks/retriever_scale.py --workdir /tmp/rf-scale \\
        --report /tmp/retriever_scale.md

Not a timed test: it prints numbers and writes a report. The 1-minute load average is shown per
row: on a shared machine, compare rows with similar load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ragfleet.domain import Chunk, Filter, SearchMode, SearchQuery
from ragfleet.fusion import make_fuser
from ragfleet_retriever.embedded import EmbeddedBackend
from ragfleet_retriever.server import build_core
from ragfleet_retriever.settings import RetrieverSettings

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
DIM = 384
BUILD_FORMAT = 1
TARGET_P99_MS = 20.0
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
MODES = {"lexical": SearchMode.LEXICAL, "dense": SearchMode.DENSE, "hybrid": SearchMode.HYBRID}


# --- corpus, passages and vectors ------------------------------------------------------------
@dataclass
class Abstract:
    id: str
    title: str
    sentences: list[str]
    words: list[int]


def read_abstracts(folder: Path) -> list[Abstract]:
    abstracts = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            sentences = [s.strip() for s in SENTENCE.split(row["text"]) if s.strip()]
            if sentences:
                words = [len(s.split()) for s in sentences]
                abstracts.append(Abstract(str(row["_id"]), row.get("title", ""), sentences, words))
    return abstracts


def read_claims(folder: Path) -> list[str]:
    with open(folder / "queries.jsonl", encoding="utf-8") as lines:
        return [q for line in lines if (q := json.loads(line)["text"].strip())]


def unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.where(norms == 0, 1, norms)).astype(np.float32)


def cached_abstract_vectors(cache_dir: Path, ids: Sequence[str]) -> tuple[np.ndarray, str] | None:
    """The real all-MiniLM-L6-v2 vectors of the abstracts from an unchunked SciFact index the
    evaluator cached (one chunk per abstract, source = abstract id), read-only; None if absent
    or if it misses more than 1% of ``ids``."""
    import sqlite3

    for catalog in sorted(
        cache_dir.glob(
            "scifact-*/sentence-transformers_all-MiniLM-L6-v2/none/index/catalog.sqlite3"
        )
    ):
        try:
            connection = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
            try:
                rows = connection.execute(
                    "SELECT source, vector FROM chunks WHERE vector IS NOT NULL"
                ).fetchall()
            finally:
                connection.close()
        except sqlite3.Error:
            continue
        by_id = {str(source): np.frombuffer(blob, dtype=np.float32) for source, blob in rows}
        found = [by_id.get(i) for i in ids]
        missing = sum(v is None or v.shape != (DIM,) for v in found)
        if missing > len(ids) // 100:
            continue
        rng = np.random.default_rng(7)
        matrix = np.stack(
            [v if v is not None and v.shape == (DIM,) else rng.standard_normal(DIM) for v in found]
        )
        label = f"real all-MiniLM-L6-v2 abstract vectors from {catalog.parent.parent.parent}"
        if missing:
            label += f" ({missing} missing, random)"
        return unit(matrix), label
    return None


def neighbours(vectors: np.ndarray, count: int, real: bool, rng: np.random.Generator) -> np.ndarray:
    """Each abstract's ``count`` nearest other abstracts (random ones for random vectors)."""
    n = len(vectors)
    if not real:
        return rng.integers(0, n, size=(n, count))
    out = np.empty((n, count), dtype=np.int64)
    for start in range(0, n, 1024):
        sims = vectors[start : start + 1024] @ vectors.T
        for row in range(sims.shape[0]):
            sims[row, start + row] = -2.0
        top = np.argpartition(-sims, count, axis=1)[:, :count]
        out[start : start + 1024] = top
    return out


@dataclass
class Passages:
    texts: list[str]
    titles: list[str]
    primary: np.ndarray  # abstract index of each passage's first sentences
    vectors: np.ndarray  # (n, DIM) float32, unit


def make_passages(
    abstracts: list[Abstract],
    abstract_vectors: np.ndarray,
    near: np.ndarray,
    count: int,
    words: int,
    noise: float,
    seed: int,
) -> Passages:
    """``count`` passages of about ``words`` words: from a random sentence of one abstract (each
    abstract in turn, shuffled) to its end, then sentences of its neighbours, until ``words``."""
    rng = np.random.default_rng(seed)
    n = len(abstracts)
    texts, titles = [], []
    primary = np.empty(count, dtype=np.int64)
    weights = np.zeros((count, DIM), dtype=np.float32)
    order = rng.permutation(n)
    for i in range(count):
        if i and i % n == 0:
            order = rng.permutation(n)
        first = int(order[i % n])
        primary[i] = first
        parts: list[str] = []
        mix: dict[int, int] = {}
        total = 0
        source = first
        start = int(rng.integers(0, max(1, len(abstracts[first].sentences) // 2)))
        attempts = 0
        while total < words and attempts < 12:
            abstract = abstracts[source]
            for sentence, size in zip(
                abstract.sentences[start:], abstract.words[start:], strict=True
            ):
                parts.append(sentence)
                mix[source] = mix.get(source, 0) + size
                total += size
                if total >= words:
                    break
            source = int(near[first, rng.integers(0, near.shape[1])])
            start = int(rng.integers(0, max(1, len(abstracts[source].sentences) - 2)))
            attempts += 1
        texts.append(" ".join(parts))
        titles.append(abstracts[first].title)
        keys = np.fromiter(mix, dtype=np.int64)
        shares = np.fromiter(mix.values(), dtype=np.float32)
        weights[i] = shares @ abstract_vectors[keys] / shares.sum()
    jitter = rng.standard_normal((count, DIM)).astype(np.float32) * (noise / math.sqrt(DIM))
    return Passages(texts, titles, primary, unit(unit(weights) + jitter))


def encode_claims(claims: list[str], out: Path) -> str | None:
    """Encodes ``claims`` with the real model in a child process (so torch stays out of this
    one) into ``out`` (.npy); returns an error text when it cannot."""
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from sentence_transformers import SentenceTransformer\n"
        "from ragfleet.domain import default_embedding_model_path\n"
        "texts = json.load(sys.stdin)\n"
        "model = SentenceTransformer(str(default_embedding_model_path()), device='cpu',\n"
        "                            local_files_only=True)\n"
        "v = model.encode(texts, batch_size=64, normalize_embeddings=True,\n"
        "                 show_progress_bar=False)\n"
        "np.save(sys.argv[1], np.asarray(v, dtype=np.float32))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        input=json.dumps(claims),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return None


# --- index ----------------------------------------------------------------------------------
def index_size(index_dir: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for path in sorted(index_dir.rglob("*")):
        if path.is_file():
            top = path.relative_to(index_dir).parts[0]
            name = "catalog.sqlite3 (+wal)" if top.startswith("catalog.sqlite3") else top
            sizes[name] = sizes.get(name, 0) + path.stat().st_size
    return sizes


def build_index(
    index_dir: Path, passages: Passages, tenants: int, batch: int
) -> tuple[float, list[float]]:
    """Upserts every passage through ``EmbeddedBackend.upsert`` in batches of ``batch`` (the
    service caps one Upsert at 1,024 chunks; the backend takes any size). Returns the seconds
    taken and each batch's seconds."""
    shutil.rmtree(index_dir, ignore_errors=True)
    began = time.perf_counter()
    backend = EmbeddedBackend.open(index_dir, dimension=DIM)
    per_batch = []
    try:
        for start in range(0, len(passages.texts), batch):
            stop = min(start + batch, len(passages.texts))
            chunks = [
                Chunk(
                    id=f"c{i:07d}",
                    text=passages.texts[i],
                    source=f"scifact/{int(passages.primary[i])}/{i // 8}",
                    title=passages.titles[i],
                    tenant=f"t{i % tenants}",
                    metadata={"kind": "abstract"},
                    vector=tuple(passages.vectors[i].tolist()),
                )
                for i in range(start, stop)
            ]
            t = time.perf_counter()
            backend.upsert(chunks)
            per_batch.append(time.perf_counter() - t)
            print(
                f"  upserted {stop}/{len(passages.texts)} chunks "
                f"(batch {per_batch[-1]:.1f} s, {time.perf_counter() - began:.0f} s in all)",
                flush=True,
            )
            del chunks
    finally:
        backend.close()
        del backend
        gc.collect()
    return time.perf_counter() - began, per_batch


# --- measuring ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass
class Row:
    path: str  # "in-process" or "gRPC"
    mode: str
    filtered: bool
    p50: list[float] = field(default_factory=list)
    p95: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    qps: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)  # hits returned per repeat (sum)
    errors: int = 0

    def record(self, ms: list[float], wall_s: float, hits: int) -> None:
        self.p50.append(statistics.median(ms))
        self.p95.append(percentile(ms, 95))
        self.p99.append(percentile(ms, 99))
        self.mean.append(statistics.mean(ms))
        self.qps.append(len(ms) / wall_s)
        self.load.append(os.getloadavg()[0])
        self.hits.append(hits)

    @property
    def label(self) -> str:
        return f"{self.mode}{' + tenant filter' if self.filtered else ''}"


@dataclass(frozen=True)
class Query:
    text: str
    vector: tuple[float, ...]
    tenant: str


def make_queries(
    claims: list[str], vectors: np.ndarray, count: int, tenants: int, offset: int
) -> list[Query]:
    out = []
    for i in range(count):
        j = (offset + i) % len(claims)
        out.append(Query(claims[j], tuple(float(x) for x in vectors[j]), f"t{i % tenants}"))
    return out


def search_query(
    q: Query, mode: str, filtered: bool, top_k: int, candidate_k: int | None
) -> SearchQuery:
    return SearchQuery(
        query=q.text if mode != "dense" else "",
        vector=q.vector if mode != "lexical" else (),
        mode=MODES[mode],
        top_k=top_k,
        candidate_k=candidate_k,
        filter=Filter(tenant=q.tenant) if filtered else Filter(),
    )


async def time_core(core, requests: list[SearchQuery]) -> tuple[list[float], float, int]:
    ms = []
    hits = 0
    began = time.perf_counter()
    for request in requests:
        t = time.perf_counter()
        result = await core.search(request)
        ms.append((time.perf_counter() - t) * 1000)
        hits += len(result.hits)
    return ms, time.perf_counter() - began, hits


def grpc_request(q: Query, mode: str, filtered: bool, top_k: int, candidate_k: int | None):
    from ragfleet.common.v1 import common_pb2
    from ragfleet.retriever.v1 import retriever_pb2

    proto_mode = {
        "lexical": common_pb2.SEARCH_MODE_LEXICAL,
        "dense": common_pb2.SEARCH_MODE_DENSE,
        "hybrid": common_pb2.SEARCH_MODE_HYBRID,
    }[mode]
    request = retriever_pb2.SearchRequest(
        query=q.text if mode != "dense" else "",
        query_vector=list(q.vector) if mode != "lexical" else [],
        mode=proto_mode,
        top_k=top_k,
        candidate_k=candidate_k or 0,
    )
    if filtered:
        request.filter.tenant = q.tenant
    return request


def time_grpc(stub, requests: list) -> tuple[list[float], float, int, int]:
    import grpc

    ms = []
    hits = errors = 0
    began = time.perf_counter()
    for request in requests:
        t = time.perf_counter()
        try:
            reply = stub.Search(request, timeout=30)
        except grpc.RpcError as err:
            errors += 1
            print(f"  error: {err.code().name}: {err.details()}", flush=True)
            continue
        ms.append((time.perf_counter() - t) * 1000)
        hits += len(reply.hits)
    return ms, time.perf_counter() - began, hits, errors


def stage_breakdown(
    backend,
    settings: RetrieverSettings,
    queries: list[Query],
    filtered: bool,
    top_k: int,
    sub_k: int,
) -> dict[str, list[float]]:
    """Hybrid search's stages, one after the other in this thread (the core runs lexical and
    dense side by side): ms per query for each stage."""
    fuser = make_fuser(
        settings.default_fusion,
        rrf_k=settings.default_rrf_k,
        dense_weight=settings.default_dense_weight,
    )
    stages: dict[str, list[float]] = {"lexical": [], "dense": [], "fusion": [], "fetch": []}
    for q in queries:
        f = Filter(tenant=q.tenant) if filtered else Filter()
        t0 = time.perf_counter()
        lexical = backend.search_lexical(q.text, sub_k, f)
        t1 = time.perf_counter()
        dense = backend.search_dense(q.vector, sub_k, f)
        t2 = time.perf_counter()
        fused = fuser(lexical, dense, top_k)
        t3 = time.perf_counter()
        backend.fetch([h.id for h in fused])
        t4 = time.perf_counter()
        for name, a, b in (
            ("lexical", t0, t1),
            ("dense", t1, t2),
            ("fusion", t2, t3),
            ("fetch", t3, t4),
        ):
            stages[name].append((b - a) * 1000)
    return stages


def profile_hybrid(backend, settings, queries, top_k, sub_k, lines: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for filtered in (False, True):
        stage_breakdown(backend, settings, queries, filtered, top_k, sub_k)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    text = out.getvalue()
    # Keep the table, drop pstats' preamble of blank and path lines.
    start = text.find("   ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


# --- the gRPC service ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``python -m ragfleet_retriever`` on ``index_dir``, in its own process group."""

    def __init__(self, index_dir: Path, log: Path, exact_max: int | None) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RAGFLEET_")}
        env.update(
            {
                "RAGFLEET_RETRIEVER_PORT": str(self.port),
                "RAGFLEET_RETRIEVER_HOST": "127.0.0.1",
                "RAGFLEET_RETRIEVER_DATA_DIR": str(index_dir),
                "RAGFLEET_RETRIEVER_DIMENSION": str(DIM),
                "RAGFLEET_RETRIEVER_LOG_FORMAT": "json",
                "RAGFLEET_RETRIEVER_GRACE_PERIOD_S": "1",
                "RAGFLEET_RETRIEVER_METRICS_PORT": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if exact_max is not None:
            env["RAGFLEET_RETRIEVER_EXACT_SEARCH_MAX_CANDIDATES"] = str(exact_max)
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ragfleet_retriever"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float) -> float:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        began = time.monotonic()
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the retriever exited:\n{self.tail()}")
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - began
                if time.monotonic() - began > timeout_s:
                    raise TimeoutError(f"not SERVING after {timeout_s:.0f} s:\n{self.tail()}")
                time.sleep(0.2)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- report ---------------------------------------------------------------------------------
def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def latency_table(rows: list[Row]) -> list[str]:
    lines = [
        "| path | search | p50 (ms) | p95 (ms) | p99 (ms) | p99 range (ms) | mean (ms) "
        "| requests/s | hits/query | errors | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.p50:
            lines.append(
                f"| {row.path} | {row.label} | - | - | - | - | - | - | - | {row.errors} | - |"
            )
            continue
        lines.append(
            f"| {row.path} | {row.label} | {med(row.p50):.2f} | {med(row.p95):.2f} "
            f"| {med(row.p99):.2f} | {min(row.p99):.1f}-{max(row.p99):.1f} | {med(row.mean):.2f} "
            f"| {med(row.qps):.0f} | {med(row.hits) / max(1, QUERIES):.1f} | {row.errors} "
            f"| {min(row.load):.2f}-{max(row.load):.2f} |"
        )
    return lines


QUERIES = 1  # set in main: timed queries per repeat (for hits/query)


def stage_table(breakdowns: dict[str, dict[str, list[float]]]) -> list[str]:
    lines = [
        "| hybrid | lexical p50 / p99 | dense p50 / p99 | fusion p50 / p99 | fetch p50 / p99 "
        "| sum p50 / p99 |",
        "|---|---|---|---|---|---|",
    ]
    for label, stages in breakdowns.items():
        total = [sum(values) for values in zip(*stages.values(), strict=True)]
        cells = [
            f"{statistics.median(v):.2f} / {percentile(v, 99):.2f}"
            for v in (*stages.values(), total)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


# --- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--chunks", type=int, default=100_000, help="passages in the index")
    parser.add_argument("--queries", type=int, default=500, help="timed queries per row and repeat")
    parser.add_argument("--warmup", type=int, default=50, help="untimed queries per row")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every row (medians)")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--words", type=int, default=150, help="words per passage")
    parser.add_argument("--noise", type=float, default=0.25, help="norm of each vector's noise")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--candidate-k", type=int, default=None, help="unset: the default")
    parser.add_argument(
        "--exact-max",
        type=int,
        default=None,
        help="exact_search_max_candidates for the core and the service (unset: the default)",
    )
    parser.add_argument("--modes", default="lexical,dense,hybrid")
    parser.add_argument("--batch", type=int, default=10_000, help="chunks per upsert (build)")
    parser.add_argument("--workdir", type=Path, default=None, help="kept; the index is reused")
    parser.add_argument("--scifact-dir", type=Path, default=SCIFACT)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "eval-cache")
    parser.add_argument(
        "--vectors",
        choices=("auto", "random"),
        default="auto",
        help="auto: real abstract vectors from --cache-dir when there, random otherwise",
    )
    parser.add_argument(
        "--grpc", action=argparse.BooleanOptionalAction, default=True, help="also via the service"
    )
    parser.add_argument(
        "--profile", action=argparse.BooleanOptionalAction, default=True, help="cProfile hybrid"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown report here")
    return parser.parse_args()


def settings_of(args: argparse.Namespace, index_dir: Path) -> RetrieverSettings:
    """The retriever's defaults, but for ``--exact-max``."""
    extra = {} if args.exact_max is None else {"exact_search_max_candidates": args.exact_max}
    return RetrieverSettings(data_dir=index_dir, dimension=DIM, **extra)


async def in_process(
    args: argparse.Namespace,
    index_dir: Path,
    rows: list[Row],
    requests: dict[tuple[str, bool], tuple[list[SearchQuery], list[SearchQuery]]],
    queries: list[Query],
    notes: dict[str, object],
) -> None:
    settings = settings_of(args, index_dir)
    core = build_core(settings)
    gc.collect()
    rss_before = rss_mb()[0]
    began = time.perf_counter()
    await core.load()
    notes["open_s"] = time.perf_counter() - began
    notes["rss_open_delta"] = rss_mb()[0] - rss_before
    try:
        mine = [Row("in-process", mode, filtered) for (mode, filtered) in requests]
        for row in mine:
            await time_core(core, requests[(row.mode, row.filtered)][0])
        for repeat in range(args.repeats):
            for row in mine:
                ms, wall, hits = await time_core(core, requests[(row.mode, row.filtered)][1])
                row.record(ms, wall, hits)
            print(f"in-process repeat {repeat + 1}/{args.repeats}:", flush=True)
            print("\n".join(latency_table(mine)[2:]), flush=True)
        rows.extend(mine)
        notes["rss_after_search"] = rss_mb()
        if "hybrid" in args.modes.split(","):
            sub_k = max(args.candidate_k or settings.default_candidate_k, args.top_k)
            sample = queries[: min(len(queries), 300)]
            breakdowns = {}
            for filtered in (False, True):
                stage_breakdown(core.backend, settings, sample[:30], filtered, args.top_k, sub_k)
                label = "with tenant filter" if filtered else "no filter"
                breakdowns[label] = stage_breakdown(
                    core.backend, settings, sample, filtered, args.top_k, sub_k
                )
            notes["stages"] = breakdowns
            if args.profile:
                notes["profile"] = profile_hybrid(
                    core.backend, settings, sample[:200], args.top_k, sub_k, 18
                )
    finally:
        await core.close()
        del core
        gc.collect()


def over_grpc(
    args: argparse.Namespace,
    index_dir: Path,
    log_dir: Path,
    rows: list[Row],
    requests: dict[tuple[str, bool], tuple[list, list]],
    notes: dict[str, object],
) -> None:
    import grpc

    from ragfleet.retriever.v1 import retriever_pb2, retriever_pb2_grpc

    service = Service(index_dir, log_dir / "retriever.log", args.exact_max)
    try:
        notes["grpc_serving_s"] = service.wait_serving(900)
        notes["grpc_rss_open"] = rss_mb(service.proc.pid)
        with grpc.insecure_channel(service.address) as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            stats = stub.GetStats(retriever_pb2.GetStatsRequest(), timeout=30)
            notes["grpc_stats"] = f"{stats.chunks} chunks, {stats.sources} sources, {stats.backend}"
            mine = [Row("gRPC", mode, filtered) for (mode, filtered) in requests]
            for row in mine:
                time_grpc(stub, requests[(row.mode, row.filtered)][0])
            for repeat in range(args.repeats):
                for row in mine:
                    ms, wall, hits, errors = time_grpc(stub, requests[(row.mode, row.filtered)][1])
                    row.errors += errors
                    if ms:
                        row.record(ms, wall, hits)
                print(f"gRPC repeat {repeat + 1}/{args.repeats}:", flush=True)
                print("\n".join(latency_table(mine)[2:]), flush=True)
            rows.extend(mine)
        notes["grpc_rss_after"] = rss_mb(service.proc.pid)
    except Exception:
        print(f"--- the retriever's log:\n{service.tail()}", file=sys.stderr)
        raise
    finally:
        service.stop()


def main() -> int:
    global QUERIES
    args = parse_args()
    QUERIES = args.queries
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    stray = sorted(k for k in os.environ if k.upper().startswith("RAGFLEET_RETRIEVER_"))
    if stray:
        raise SystemExit(f"unset {stray}: this benchmark uses the retriever's default settings")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    if not (args.scifact_dir / "corpus.jsonl").exists():
        raise SystemExit(f"SciFact not found at {args.scifact_dir}")
    load_before = os.getloadavg()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ragfleet-scale-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    index_dir = workdir / "index"
    try:
        return run(args, modes, workdir, index_dir, load_before)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


def run(
    args: argparse.Namespace,
    modes: list[str],
    workdir: Path,
    index_dir: Path,
    load_before: tuple[float, float, float],
) -> int:
    notes: dict[str, object] = {}
    print(f"reading {args.scifact_dir}", flush=True)
    abstracts = read_abstracts(args.scifact_dir)
    claims = read_claims(args.scifact_dir)
    rng = np.random.default_rng(args.seed)
    cached = (
        cached_abstract_vectors(args.cache_dir, [a.id for a in abstracts])
        if args.vectors == "auto"
        else None
    )
    if cached is not None:
        abstract_vectors, vector_source = cached
        real = True
    else:
        abstract_vectors = unit(rng.standard_normal((len(abstracts), DIM)))
        vector_source = "random unit vectors as abstract cluster centres (no cached real vectors)"
        real = False
    print(f"abstract vectors: {vector_source}", flush=True)

    # Query vectors: the real model when installed, cached in the work folder.
    claims_file = workdir / "claims.npy"
    claims_key = workdir / "claims.json"
    query_source = "real all-MiniLM-L6-v2 embeddings of the claims (encoded in a child process)"
    if not (
        claims_file.exists()
        and claims_key.exists()
        and json.loads(claims_key.read_text()) == claims
    ):
        print(f"encoding {len(claims)} claims with the real model", flush=True)
        began = time.perf_counter()
        error = encode_claims(claims, claims_file)
        if error is None:
            claims_key.write_text(json.dumps(claims))
            print(f"  done in {time.perf_counter() - began:.1f} s", flush=True)
        else:
            print(f"  cannot ({error}); synthetic query vectors", flush=True)
    if claims_file.exists() and claims_key.exists():
        claim_vectors = np.load(claims_file)
    else:
        picks = rng.integers(0, len(abstracts), size=len(claims))
        jitter = rng.standard_normal((len(claims), DIM)) * (args.noise / math.sqrt(DIM))
        claim_vectors = unit(abstract_vectors[picks] + jitter)
        query_source = "synthetic: a random abstract's vector plus noise (model not available)"

    # The index, reused when built with the same parameters.
    params = {
        "format": BUILD_FORMAT,
        "chunks": args.chunks,
        "tenants": args.tenants,
        "words": args.words,
        "noise": args.noise,
        "seed": args.seed,
        "vectors": vector_source,
    }
    built_file = workdir / "built.json"
    built = json.loads(built_file.read_text()) if built_file.exists() else {}
    if built.get("params") == params and (index_dir / "catalog.sqlite3").exists():
        print(f"reusing the index in {index_dir} (built in {built['build_s']:.0f} s)", flush=True)
        build_s, per_batch, reused = built["build_s"], built["per_batch"], True
    else:
        built_file.unlink(missing_ok=True)
        began = time.perf_counter()
        near = neighbours(abstract_vectors, 8, real, rng)
        passages = make_passages(
            abstracts, abstract_vectors, near, args.chunks, args.words, args.noise, args.seed
        )
        words = [len(t.split()) for t in passages.texts]
        generate_s = time.perf_counter() - began
        print(
            f"{args.chunks} passages generated in {generate_s:.1f} s "
            f"(words: median {statistics.median(words):.0f}, min {min(words)}, max {max(words)});"
            f" building the index in {index_dir}",
            flush=True,
        )
        build_s, per_batch = build_index(index_dir, passages, args.tenants, args.batch)
        built_file.write_text(
            json.dumps({"params": params, "build_s": build_s, "per_batch": per_batch})
        )
        reused = False
        del passages
        gc.collect()
    sizes = index_size(index_dir)

    # Requests: the same queries (and tenants) for every row.
    timed = make_queries(claims, claim_vectors, args.queries, args.tenants, 0)
    warm = make_queries(claims, claim_vectors, args.warmup, args.tenants, len(claims) // 2)
    grid = [(mode, filtered) for mode in modes for filtered in (False, True)]
    core_requests = {
        key: (
            [search_query(q, *key, args.top_k, args.candidate_k) for q in warm],
            [search_query(q, *key, args.top_k, args.candidate_k) for q in timed],
        )
        for key in grid
    }
    rows: list[Row] = []
    print("timing the retriever core in this process", flush=True)
    asyncio.run(in_process(args, index_dir, rows, core_requests, timed, notes))
    if args.grpc:
        grpc_requests = {
            key: (
                [grpc_request(q, *key, args.top_k, args.candidate_k) for q in warm],
                [grpc_request(q, *key, args.top_k, args.candidate_k) for q in timed],
            )
            for key in grid
        }
        print("timing the retriever service over gRPC", flush=True)
        (workdir / "logs").mkdir(exist_ok=True)
        over_grpc(args, index_dir, workdir / "logs", rows, grpc_requests, notes)

    # Report.
    settings = settings_of(args, index_dir)
    candidate_k = args.candidate_k or settings.default_candidate_k
    load_after = os.getloadavg()
    verdicts = []
    for row in rows:
        if row.mode == "hybrid" and row.p99:
            p99 = med(row.p99)
            verdicts.append(
                f"- {row.path}, {row.label}: p99 {p99:.1f} ms "
                f"({'meets' if p99 <= TARGET_P99_MS else 'MISSES'} <= {TARGET_P99_MS:.0f} ms; "
                f"worst repeat {max(row.p99):.1f} ms)"
            )
    batch_note = (
        f"{len(per_batch)} upserts of {args.batch} chunks; first {per_batch[0]:.1f} s, "
        f"last {per_batch[-1]:.1f} s"
        if per_batch
        else ""
    )
    lines = [
        f"# Retriever search latency at {args.chunks:,} chunks (embedded backend)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.node()}, "
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (1 min)",
        f"- corpus: {args.chunks:,} passages of ~{args.words} words recombined from the sentences "
        f"of {len(abstracts):,} SciFact abstracts, {args.tenants} tenants (chunk i in tenant "
        f"t{{i mod {args.tenants}}}, {args.chunks // args.tenants:,} each)",
        f"- passage vectors: word-weighted mean of the vectors of the abstracts a passage's "
        f"sentences come from, plus noise of norm {args.noise}, normalised; abstract vectors: "
        f"{vector_source}",
        f"- query vectors: {query_source}",
        f"- queries: {args.queries} SciFact claims timed per row and repeat after {args.warmup} "
        f"untimed, one client, {args.repeats} repeats; top_k {args.top_k}, candidate_k "
        f"{candidate_k}{'' if args.candidate_k else ' (default)'}, fusion "
        f"{settings.default_fusion} (dense_weight {settings.default_dense_weight}, default); "
        "tenant filter: the query's tenant rotates over the tenants; "
        f"exact_search_max_candidates {settings.exact_search_max_candidates}"
        f"{'' if args.exact_max is not None else ' (default)'}",
        f"- build: {build_s:.1f} s through `EmbeddedBackend.upsert` ({batch_note})"
        + (" - reused from an earlier run" if reused else ""),
        "- index on disk: "
        + ", ".join(f"{name} {mib(size)}" for name, size in sizes.items())
        + f"; total {mib(sum(sizes.values()))}",
        f"- in-process: core.load {notes['open_s']:.1f} s, RSS +{notes['rss_open_delta']:.0f} MiB "
        f"on load; process RSS after the searches {notes['rss_after_search'][0]:.0f} MiB "
        f"(peak {notes['rss_after_search'][1]:.0f} MiB, includes the benchmark's own data)",
    ]
    if args.grpc:
        lines.append(
            f"- gRPC service (`python -m ragfleet_retriever`, default settings): SERVING "
            f"{notes['grpc_serving_s']:.1f} s after start; RSS {notes['grpc_rss_open'][0]:.0f} MiB "
            f"when SERVING, {notes['grpc_rss_after'][0]:.0f} MiB after the searches (peak "
            f"{notes['grpc_rss_after'][1]:.0f} MiB); GetStats: {notes['grpc_stats']}"
        )
    lines += [
        "",
        "Latency per search, one client: the median over repeats of each repeat's p50, p95, p99 "
        "(nearest rank) and mean, and of requests/s; p99 range: best and worst repeat; load "
        "1 min: the machine's 1-minute load average at the end of the repeats:",
        "",
        *latency_table(rows),
        "",
        f"Target: hybrid p99 <= {TARGET_P99_MS:.0f} ms at 100k chunks.",
        "",
        *verdicts,
    ]
    if "stages" in notes:
        lines += [
            "",
            "Hybrid search by stage, in-process, one after the other in the calling thread (the "
            "core runs lexical and dense side by side, and adds thread hand-offs), ms per query "
            f"over {min(args.queries, 300)} queries:",
            "",
            *stage_table(notes["stages"]),  # type: ignore[arg-type]
        ]
    if "profile" in notes:
        lines += [
            "",
            f"cProfile of {min(args.queries, 200)} hybrid searches without and as many with "
            "the tenant filter (stages as above), top functions by own time:",
            "",
            "```",
            str(notes["profile"]),
            "```",
        ]
    command = shlex.join([sys.executable, *sys.argv])
    lines += ["", "Command:", "", f"    {command}", ""]
    text = "\n".join(lines)
    print()
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
        print(f"report written to {args.report}")
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
