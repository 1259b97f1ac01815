"""``ragfleet eval answers`` against real servers: a gateway over gRPC (a stand-in GatewayService
on port 0 that records what it receives: ingested documents and every call's metadata), and an
LLM judge through llama-cpp-python's own OpenAI-compatible server (``python -m
llama_cpp.server``) serving the packaged Qwen2.5-Coder-0.5B GGUF."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from typer.testing import CliRunner

from ragfleet.common.v1 import common_pb2
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.errors import Unavailable
from ragfleet_generator.models import QWEN25_CODER_05B, assemble_model
from ragfleet_tools.cli.main import app
from ragfleet_tools.eval.judge import Judge

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 120
DECLINE = "The documents do not say."


class StandInGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Answers a question from the first ingested document sharing a word with it, citing it;
    declines otherwise. Keeps the documents and every call's metadata."""

    def __init__(self) -> None:
        self.documents: list[gateway_pb2.Document] = []
        self.metadata: list[dict[str, str]] = []

    def _record(self, context: grpc.ServicerContext) -> None:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})

    def Ingest(
        self, request: gateway_pb2.IngestRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.IngestResponse:
        self._record(context)
        self.documents.extend(request.documents)
        return gateway_pb2.IngestResponse(documents=len(request.documents))

    def Ask(
        self, request: gateway_pb2.AskRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.AskEvent]:
        self._record(context)
        words = set(request.question.lower().split())
        match = next(
            (d for d in self.documents if words & set(d.text.lower().rstrip(".").split())), None
        )
        if match is None:
            yield gateway_pb2.AskEvent(token=DECLINE)
            yield gateway_pb2.AskEvent(
                answer=gateway_pb2.Answer(text=DECLINE, answered=False, model="stand-in")
            )
            return
        chunk = common_pb2.Chunk(id=f"{match.source}#0", text=match.text, source=match.source)
        yield gateway_pb2.AskEvent(
            sources=gateway_pb2.Sources(
                sources=[gateway_pb2.Source(number=1, hit=common_pb2.ScoredChunk(chunk=chunk))]
            )
        )
        text = f"{match.text} [1]"
        for token in text.split(" "):
            yield gateway_pb2.AskEvent(token=token + " ")
        yield gateway_pb2.AskEvent(
            answer=gateway_pb2.Answer(
                text=text,
                answered=True,
                model="stand-in",
                citations=[gateway_pb2.Citation(number=1, source=match.source)],
                usage=common_pb2.Usage(prompt_tokens=30, completion_tokens=8),
            )
        )


@pytest.fixture
def gateway() -> Iterator[tuple[str, StandInGateway]]:
    servicer = StandInGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def write_clapnq(folder: Path) -> Path:
    """ClapNQ's own layout: two files, each row with its own passages."""
    folder.mkdir()
    answerable = [
        (
            "a1",
            "what do koalas eat",
            "Koalas",
            "Koalas eat eucalyptus leaves.",
            "Eucalyptus leaves.",
        ),
        ("a2", "where do penguins live", "Penguins", "Penguins live in Antarctica.", "Antarctica."),
    ]
    rows = [
        {
            "id": qid,
            "input": question,
            "passages": [{"title": title, "text": text, "sentences": [text]}],
            "output": [{"answer": answer, "selected_sentences": [text], "meta": {}}],
        }
        for qid, question, title, text, answer in answerable
    ]
    (folder / "clapnq_dev_answerable.jsonl").write_text("\n".join(map(json.dumps, rows)))
    unanswerable = {
        "id": "u1",
        "input": "who painted the mona lisa",
        "passages": [{"title": "Owls", "text": "Owls hunt at night.", "sentences": []}],
        "output": [{"answer": "", "selected_sentences": [], "meta": {}}],
    }
    (folder / "clapnq_dev_unanswerable.jsonl").write_text(json.dumps(unanswerable))
    return folder


def test_a_running_gateway_is_asked_with_the_key_and_its_answers_are_cached(
    gateway: tuple[str, StandInGateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, servicer = gateway
    dataset = write_clapnq(tmp_path / "dev")
    monkeypatch.setenv("RAGFLEET_API_KEY", "rfk_test_secret")
    command = ["eval", "answers", "--dataset", str(dataset), "--gateway", address]
    command += ["--cache-dir", str(tmp_path / "cache"), "--label", "stand-in"]
    result = CliRunner().invoke(app, [*command, "--ingest", "--report", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output
    # Every call carried the key; the corpus is the union of the rows' passages.
    assert len(servicer.metadata) == 1 + 3
    assert {m.get("authorization") for m in servicer.metadata} == {"Bearer rfk_test_secret"}
    assert sorted(d.title for d in servicer.documents) == ["Koalas", "Owls", "Penguins"]
    table = result.stdout
    assert "configuration stand-in" in table and "model stand-in" in table
    assert "| citation precision | 1.000 |" in table
    assert "| answerable refused | 0.000 |" in table
    assert "| unanswerable declined | 1.000 |" in table
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    # A rerun without --ingest asks nothing: every answer comes from the cache.
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert len(servicer.metadata) == 4 and "0 answers to make" in again.output


def test_an_unreachable_gateway_is_a_clear_error(tmp_path: Path) -> None:
    dataset = write_clapnq(tmp_path / "dev")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    command = ["eval", "answers", "--dataset", str(dataset), "--gateway", address]
    result = CliRunner().invoke(app, [*command, "--cache-dir", str(tmp_path), "--timeout", "5"])
    assert result.exit_code == 2
    assert f"gateway {address} failed (UNAVAILABLE)" in result.output


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = assemble_model(QWEN25_CODER_05B, Path("var/models").resolve())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("judge") / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model), "--model_alias", "judge",
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "2048", "--n_threads", "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_judge_grades_every_answered_question_and_counts_what_does_not_parse(
    gateway: tuple[str, StandInGateway], judge_url: str, tmp_path: Path
) -> None:
    address, _ = gateway
    dataset = write_clapnq(tmp_path / "dev")
    command = ["eval", "answers", "--dataset", str(dataset), "--gateway", address, "--ingest"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--judge-url", judge_url]
    command += ["--judge-model", "judge"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    [verdicts] = (tmp_path / "cache").glob("answers/*/judge/*.jsonl")
    rows = [json.loads(line) for line in verdicts.read_text().splitlines()]
    # Both answerable questions were answered and judged; the unanswerable one was not.
    assert sorted(r["id"] for r in rows) == ["a1", "a2"]
    assert all(r["raw"] for r in rows)
    parsed = [r for r in rows if r["scores"] is not None]
    for row in parsed:
        assert set(row["scores"]) == {"faithfulness", "correctness"}
        assert all(1 <= v <= 5 for v in row["scores"].values())
    unparseable = (len(rows) - len(parsed)) / len(rows)
    assert f"| judge unparseable | {unparseable:.3f} |" in result.stdout
    assert "| judge correctness (1-5) | " in result.stdout
    # Cached per question, configuration and judge model: a rerun asks the judge nothing.
    mtime = verdicts.stat().st_mtime_ns
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0 and verdicts.stat().st_mtime_ns == mtime


def test_a_judge_that_is_down_or_unknown_is_named(judge_url: str) -> None:
    async def verdict(url: str, model: str) -> Any:
        judge = Judge(url, model, timeout_s=10)
        try:
            return await judge.judge("q", "question", "reference", "sources", "answer")
        finally:
            await judge.close()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(Unavailable, match=f"judge {down} is unreachable"):
        asyncio.run(verdict(down, "judge"))
    with pytest.raises(Unavailable, match=r"answered 404"):
        asyncio.run(verdict(f"{judge_url}/nope", "judge"))
