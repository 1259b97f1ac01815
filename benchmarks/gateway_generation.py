"""Time to first token and tokens/s through the gateway against the raw generator, same run.

Brings a fleet up with ``ragfleet up`` on free ports under a temporary home, ingests docs/,
then asks each question twice, interleaved: ``GatewayService.Ask`` (retrieval, prompt,
generation through the fallback chain, streamed back) and ``GeneratorService.Generate`` sent
straight to the Ray Serve gRPC proxy with the very prompt the gateway builds (the passages of
``GatewayService.Retrieve`` through the gateway's own ``PromptBuilder``). The calls alternate
between the two paths and never repeat the previous prompt (see ``schedule``), so neither side
profits from llama.cpp's cache of the prompt before it.

Gateway TTFT is measured from the client: nothing is subtracted. The time to the ``sources``
event (retrieval, included in that TTFT) is reported on its own. Tokens/s is counted by the
client from the streamed deltas after the first one. The gateway's calls send the key the CLI
would: ``--api-key``, else ``RAGFLEET_API_KEY``, else the one ``ragfleet up`` made in the
temporary home. Not a timed test: it prints numbers and writes a Markdown report.

    .venv/bin/python benchmarks/gateway_generation.py --questions 6 --report /tmp/gen.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import Chunk, Hit
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.runtime.channels import insecure_channel
from ragfleet_gateway.domain import Source
from ragfleet_gateway.prompt import PromptBuilder
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_tools.cli.fleet import Fleet, FleetSettings

ROOT = Path(__file__).resolve().parents[1]
RAGFLEET = str(Path(sys.executable).parent / "ragfleet")
QUESTIONS = [
    "Which port does the gateway listen on for gRPC?",
    "How long may in-flight calls finish after SIGTERM?",
    "Which embedding model does the embedder use?",
    "What does the gateway do when the embedder fails?",
    "Where do the services write their logs under ragfleet up?",
    "What does a service report before its models are loaded?",
    "How does the retriever keep its indexes consistent after a crash?",
    "What does ragfleet down do?",
]
TIMEOUT_S = 300


@dataclass(frozen=True)
class Sample:
    ttft_ms: float
    tokens_per_s: float
    deltas: int
    prompt_tokens: int
    retrieval_ms: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(first: float, last: float, deltas: int) -> float:
    return (deltas - 1) / (last - first) if deltas > 1 and last > first else 0.0


async def through_gateway(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub, question: str, max_tokens: int
) -> Sample:
    request = gateway_pb2.AskRequest(question=question, max_tokens=max_tokens, temperature=0.0)
    start = time.perf_counter()
    sources_at = first = last = 0.0
    deltas = 0
    answer = None
    async for event in stub.Ask(request, timeout=TIMEOUT_S):
        now = time.perf_counter()
        kind = event.WhichOneof("event")
        if kind == "sources":
            sources_at = now
        elif kind == "token":
            first = first or now
            last, deltas = now, deltas + 1
        elif kind == "answer":
            answer = event.answer
    assert answer is not None and answer.model, f"no generated answer: {answer}"
    return Sample(
        ttft_ms=(first - start) * 1000,
        tokens_per_s=rate(first, last, deltas),
        deltas=deltas,
        prompt_tokens=answer.usage.prompt_tokens,
        retrieval_ms=(sources_at - start) * 1000,
    )


async def prompt_of(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub, builder: PromptBuilder, question: str
) -> list[common_pb2.ChatMessage]:
    """The messages the gateway sends for ``question`` (same passages, same template)."""
    reply = await stub.Retrieve(gateway_pb2.RetrieveRequest(query=question), timeout=60)
    sources = [
        Source(
            number,
            Hit(
                Chunk(
                    id=h.chunk.id,
                    text=h.chunk.text,
                    source=h.chunk.source,
                    title=h.chunk.title,
                    section=h.chunk.section,
                ),
                h.score,
            ),
        )
        for number, h in enumerate(reply.hits, start=1)
    ]
    return [
        common_pb2.ChatMessage(role=m.role, content=m.content)
        for m in builder.messages(question, sources)
    ]


async def raw(
    stub: generator_pb2_grpc.GeneratorServiceAsyncStub,
    messages: list[common_pb2.ChatMessage],
    max_tokens: int,
) -> Sample:
    request = generator_pb2.GenerateRequest(
        messages=messages, max_tokens=max_tokens, temperature=0.0
    )
    start = time.perf_counter()
    first = last = 0.0
    deltas = prompt_tokens = 0
    metadata = (("application", "generator"),)
    async for reply in stub.Generate(request, timeout=TIMEOUT_S, metadata=metadata):
        now = time.perf_counter()
        if reply.WhichOneof("event") == "token":
            first = first or now
            last, deltas = now, deltas + 1
        else:
            prompt_tokens = reply.done.usage.prompt_tokens
    return Sample((first - start) * 1000, rate(first, last, deltas), deltas, prompt_tokens)


def schedule(count: int) -> list[tuple[bool, int]]:
    """(through the gateway?, question index) in the order to run them: each question once per
    side, and never the same prompt twice in a row. llama.cpp reuses the cached prefix of the
    previous prompt, so a repeat would skip its prefill (about 90 ms instead of seconds)."""
    first = [(i % 2 == 0, i) for i in range(count)]
    return first + [(not via_gateway, i) for via_gateway, i in first]


async def measure(
    gateway_address: str,
    api_key: str | None,
    generator_address: str,
    questions: list[str],
    max_tokens: int,
) -> tuple[list[Sample], list[Sample]]:
    settings = GatewaySettings()
    builder = PromptBuilder(
        settings.user_prompt_template(), settings.system_prompt, settings.source_max_chars
    )
    async with (
        insecure_channel(gateway_address, api_key) as g_channel,
        insecure_channel(generator_address) as r_channel,
    ):
        g_stub: gateway_pb2_grpc.GatewayServiceAsyncStub = gateway_pb2_grpc.GatewayServiceStub(
            g_channel
        )
        r_stub: generator_pb2_grpc.GeneratorServiceAsyncStub = (
            generator_pb2_grpc.GeneratorServiceStub(r_channel)
        )
        prompts = [await prompt_of(g_stub, builder, q) for q in questions]
        await through_gateway(g_stub, "warm-up: what is ragfleet?", 8)
        gateway: dict[int, Sample] = {}
        direct: dict[int, Sample] = {}
        for via_gateway, i in schedule(len(questions)):
            if via_gateway:
                gateway[i] = await through_gateway(g_stub, questions[i], max_tokens)
            else:
                direct[i] = await raw(r_stub, prompts[i], max_tokens)
            sample = gateway[i] if via_gateway else direct[i]
            print(
                f"{'gateway' if via_gateway else 'raw':8s} {questions[i][:48]:48s} {sample}",
                flush=True,
            )
    return [gateway[i] for i in sorted(gateway)], [direct[i] for i in sorted(direct)]


def report(gateway: list[Sample], direct: list[Sample], max_tokens: int) -> str:
    def row(name: str, samples: list[Sample], retrieval: bool) -> str:
        ttft = [s.ttft_ms for s in samples]
        return (
            f"| {name} | {statistics.median(ttft):.0f} | {statistics.mean(ttft):.0f} "
            f"| {statistics.median(s.tokens_per_s for s in samples):.1f} "
            f"| {statistics.median(s.prompt_tokens for s in samples):.0f} "
            f"| {statistics.median(s.retrieval_ms for s in samples):.0f} |"
            if retrieval
            else f"| {name} | {statistics.median(ttft):.0f} | {statistics.mean(ttft):.0f} "
            f"| {statistics.median(s.tokens_per_s for s in samples):.1f} "
            f"| {statistics.median(s.prompt_tokens for s in samples):.0f} | - |"
        )

    ratios = [g.ttft_ms / d.ttft_ms for g, d in zip(gateway, direct, strict=True)]
    same_prompt = sum(
        g.prompt_tokens == d.prompt_tokens for g, d in zip(gateway, direct, strict=True)
    )
    return "\n".join(
        [
            f"{len(gateway)} asks per side, interleaved, max_tokens {max_tokens}, temperature 0:",
            "",
            "| path | TTFT p50 (ms) | TTFT mean (ms) | tokens/s p50 | prompt tokens p50 "
            "| retrieval p50 (ms) |",
            "|---|---|---|---|---|---|",
            row("through the gateway (Ask)", gateway, True),
            row("raw generator (Generate on the Serve proxy)", direct, False),
            "",
            f"gateway/raw TTFT ratio per pair: median {statistics.median(ratios):.2f}, "
            f"max {max(ratios):.2f}; identical prompt token counts in {same_prompt}/"
            f"{len(gateway)} pairs",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument(
        "--api-key", default="", help="default: RAGFLEET_API_KEY, else the fleet's own"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ragfleet-bench-"))
    env = {**os.environ, "RAGFLEET_HOME": str(home)}
    for var in (
        "GATEWAY_PORT",
        "GATEWAY_REST_PORT",
        "EMBEDDER_PORT",
        "RETRIEVER_PORT",
        "GENERATOR_PORT",
        "GENERATOR_HTTP_PORT",
        "RAY_PORT",
    ):
        env[f"RAGFLEET_{var}"] = str(free_port())
    try:
        up = subprocess.run(
            [RAGFLEET, "up", "--corpus", "docs"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if up.returncode != 0:
            sys.exit(f"ragfleet up failed:\n{up.stdout}\n{up.stderr}")
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]
        gateway, direct = asyncio.run(
            measure(
                f"127.0.0.1:{env['RAGFLEET_GATEWAY_PORT']}",
                args.api_key or Fleet(FleetSettings(home=home)).api_key(),
                f"127.0.0.1:{env['RAGFLEET_GENERATOR_PORT']}",
                questions,
                args.max_tokens,
            )
        )
    finally:
        subprocess.run([RAGFLEET, "down"], cwd=ROOT, env=env, capture_output=True, check=False)
    text = report(gateway, direct, args.max_tokens)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
