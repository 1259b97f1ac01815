"""The local fleet's footprint and its answers: `ragfleet up` time to all SERVING, resident
memory per service, and for each question of ``tests/e2e/docs_questions.json`` the answer, whether
it is right (facts stated and supported by a cited passage; declined when the docs cannot
answer), time to first token and total time through the gateway.

Brings a fleet up on free ports under a temporary home (with its own index, so the bundled docs
are ingested), asks every question, writes a Markdown report, and brings the fleet down again.
The asks send the key the CLI would: ``--api-key``, else ``RAGFLEET_API_KEY``, else the one
``ragfleet up`` made in the temporary home.
Not a timed test: it prints numbers.

    .venv/bin/python benchmarks/fleet.py --report /tmp/fleet.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import insecure_channel
from ragfleet_tools.cli.fleet import Fleet, FleetSettings

ROOT = Path(__file__).resolve().parents[1]
RAGFLEET = str(Path(sys.executable).parent / "ragfleet")
sys.path.insert(0, str(ROOT))

from tests.e2e.docs_questions import DocsQuestion, load  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident set size of one process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


def processes() -> dict[int, str]:
    """Every process's command line, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            found[int(entry.name)] = cmd
    return found


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack.extend(children.get(pid, []))
    return found


def memory(home: Path) -> dict[str, float]:
    run = home / "run"
    result = {}
    for name in ("embedder", "retriever", "gateway"):
        result[name] = rss_mib(int((run / f"{name}.pid").read_text()))
    ray_tree = descendants(int((run / "ray.pid").read_text()))
    commands = processes()
    replicas = [p for p in ray_tree if "ServeReplica:generator" in commands.get(p, "")]
    result["generator replica"] = sum(rss_mib(p) for p in replicas)
    result["Ray (head, Serve controller and proxy, idle workers)"] = sum(
        rss_mib(p) for p in ray_tree if p not in replicas and p in commands
    )
    return result


async def ask(address: str, key: str | None, question: DocsQuestion) -> dict[str, float | str]:
    async with insecure_channel(address, key) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        start = time.perf_counter()
        first = None
        answer = None
        passages: dict[str, str] = {}
        request = gateway_pb2.AskRequest(question=question.question)
        async for event in stub.Ask(request, timeout=300):
            kind = event.WhichOneof("event")
            if kind == "sources":
                passages = {s.hit.chunk.id: s.hit.chunk.text for s in event.sources.sources}
            if kind == "token" and first is None:
                first = time.perf_counter() - start
            if kind == "answer":
                answer = event.answer
        total = time.perf_counter() - start
    assert answer is not None
    cited = [passages[c.chunk_id] for c in answer.citations]
    problems = question.problems(answer.text, answer.answered, cited)
    stages = {t.stage: t.ms for t in answer.timings}
    return {
        "question": question.question,
        "answer": " ".join(answer.text.split()),
        "verdict": "; ".join(problems) or "right",
        "answerable": "yes" if question.answerable else "no",
        "client_ttft_ms": (first or total) * 1000,
        "generator_ttft_ms": answer.usage.time_to_first_token_ms,
        "tokens_per_s": answer.usage.tokens_per_second,
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "retrieval_ms": max(
            stages.get("lexical", 0), stages.get("embed", 0) + stages.get("dense", 0)
        )
        + stages.get("fuse", 0),
        "total_ms": total * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    start = time.perf_counter()
    up = subprocess.run(
        [RAGFLEET, "up", "--no-ingest"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    up_s = time.perf_counter() - start
    try:
        if up.returncode != 0:
            sys.exit(f"ragfleet up failed:\n{up.stdout}\n{up.stderr}")
        start = time.perf_counter()
        subprocess.run(
            [RAGFLEET, "ingest", "docs"], cwd=ROOT, env=env, check=True, capture_output=True
        )
        ingest_s = time.perf_counter() - start
        address = f"127.0.0.1:{env['RAGFLEET_GATEWAY_PORT']}"
        key = args.api_key or Fleet(FleetSettings(home=home)).api_key()
        asks = [asyncio.run(ask(address, key, q)) for q in load()]
        mem = memory(home)
    finally:
        subprocess.run([RAGFLEET, "down"], cwd=ROOT, env=env, capture_output=True, check=False)

    generated = [a for a in asks if a["completion_tokens"]]

    def med(key: str) -> float:
        return statistics.median(float(a[key]) for a in generated)

    def rate(answerable: str) -> str:
        group = [a for a in asks if a["answerable"] == answerable]
        return f"{sum(a['verdict'] == 'right' for a in group)}/{len(group)}"

    lines = [
        f"`ragfleet up` to all SERVING: {up_s:.1f} s; ingesting docs/: {ingest_s:.1f} s",
        "",
        "| process | resident memory (MiB) |",
        "|---|---|",
        *(f"| {name} | {value:.0f} |" for name, value in mem.items()),
        "",
        f"Answers: right {rate('yes')} answerable, declined {rate('no')} unanswerable.",
        "",
        "| question | answer | verdict | time to first token (s) | total (s) |",
        "|---|---|---|---|---|",
        *(
            f"| {a['question']} | {str(a['answer'])[:160]} | {a['verdict']} "
            f"| {float(a['client_ttft_ms']) / 1000:.1f} | {float(a['total_ms']) / 1000:.1f} |"
            for a in asks
        ),
        "",
        f"Medians over the {len(generated)} answers a model generated (default settings):",
        "",
        "| client time to first token (ms) | generator time to first token (ms) | tokens/s "
        "| prompt tokens | completion tokens | retrieval (ms) | total (ms) |",
        "|---|---|---|---|---|---|---|",
        f"| {med('client_ttft_ms'):.0f} | {med('generator_ttft_ms'):.0f} "
        f"| {med('tokens_per_s'):.1f} | {med('prompt_tokens'):.0f} "
        f"| {med('completion_tokens'):.0f} | {med('retrieval_ms'):.0f} | {med('total_ms'):.0f} |",
    ]
    report = "\n".join(lines)
    print(report)
    if args.report:
        args.report.write_text(report + "\n")


if __name__ == "__main__":
    main()
