"""``SpooledRecorder``: answers are spooled durably, reach the store exactly once through store
outages, survive a crash of the process, and stay in the spool when the store is down at
shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from tests.flywheel_contract import make_answer

from ragfleet.flywheel.recorder import REJECTED_FILE, SpooledRecorder
from ragfleet.flywheel.records import AnswerRecord, Feedback
from ragfleet.flywheel.sqlite_store import SqliteStore
from ragfleet.flywheel.store import Export
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05}


class FlakyStore:
    """A store that is down for its first ``failures`` calls of ``record``, then works; it
    counts what it took per answer id."""

    name = "flaky test store"

    def __init__(self, failures: int = 0, *, refuse: frozenset[str] = frozenset()) -> None:
        self.failures = failures
        self.refuse = refuse
        self.taken: Counter[str] = Counter()
        self.order: list[str] = []
        self.calls = 0
        self.hang = False

    async def record(self, answer: AnswerRecord) -> None:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.failures:
            self.failures -= 1
            raise Unavailable(f"{self.name}: connection refused")
        if answer.answer_id in self.refuse:
            raise InvalidInput("question: must not contain NUL characters")
        self.taken[answer.answer_id] += 1
        self.order.append(answer.answer_id)

    async def add_feedback(self, feedback: Feedback) -> None:
        raise NotFound("unused")

    async def get_answer(self, tenant: str, answer_id: str) -> AnswerRecord:
        raise NotFound("unused")

    async def export(self, tenant: str | None = None, since: datetime | None = None) -> Export:
        return []

    async def delete_tenant(self, tenant: str) -> int:
        return 0

    async def purge(self, older_than: datetime) -> int:
        return 0

    async def close(self) -> None:
        return None


async def _until(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _segments(spool: Path) -> list[Path]:
    return sorted(spool.glob("answers-*.jsonl"))


def _spooled_ids(spool: Path) -> list[str]:
    return [
        json.loads(line)["answer_id"]
        for path in _segments(spool)
        for line in path.read_text().splitlines()
    ]


async def test_every_record_arrives_exactly_once_through_an_outage(tmp_path: Path) -> None:
    store = FlakyStore(failures=7)
    recorder = SpooledRecorder(store, tmp_path / "spool", **FAST)
    await recorder.start()
    answers = [make_answer() for _ in range(10)]
    for answer in answers[:5]:
        recorder.submit(answer)
    await asyncio.sleep(0.02)
    for answer in answers[5:]:
        recorder.submit(answer)
    await _until(lambda: len(store.taken) == 10)
    assert store.taken == Counter({a.answer_id: 1 for a in answers})
    assert store.calls == 17  # seven failures, then each record once
    await _until(lambda: not _segments(tmp_path / "spool"))
    await recorder.aclose()
    assert recorder.spooled() == 0


async def test_submit_spools_durably_without_waiting_for_the_store(tmp_path: Path) -> None:
    store = FlakyStore()
    store.hang = True
    recorder = SpooledRecorder(store, tmp_path, **FAST)
    await recorder.start()
    answer = make_answer()
    began = time.monotonic()
    recorder.submit(answer)
    assert time.monotonic() - began < 0.5
    assert _spooled_ids(tmp_path) == [answer.answer_id]
    await recorder.aclose(timeout_s=0.1)
    assert _spooled_ids(tmp_path) == [answer.answer_id]


async def test_flush_delivers_what_was_submitted_or_says_the_store_is_down(
    tmp_path: Path,
) -> None:
    store = FlakyStore(failures=1)
    recorder = SpooledRecorder(store, tmp_path, **FAST)
    answer = make_answer()
    recorder.submit(answer)
    with pytest.raises(Unavailable, match="flaky test store: connection refused"):
        await recorder.flush()
    assert recorder.spooled() == 1
    await recorder.flush()
    assert store.taken == Counter({answer.answer_id: 1})
    assert recorder.spooled() == 0
    await recorder.aclose()


async def test_flush_times_out_as_unavailable(tmp_path: Path) -> None:
    store = FlakyStore()
    store.hang = True
    recorder = SpooledRecorder(store, tmp_path, **FAST)
    recorder.submit(make_answer())
    with pytest.raises(Unavailable, match=r"did not take the spooled answers within 0\.05 s"):
        await recorder.flush(timeout_s=0.05)
    await recorder.aclose(timeout_s=0.05)
    assert recorder.spooled() == 1


async def test_aclose_with_the_store_down_leaves_the_records_for_the_next_start(
    tmp_path: Path,
) -> None:
    down = FlakyStore(failures=10**6)
    recorder = SpooledRecorder(down, tmp_path, **FAST)
    await recorder.start()
    answers = [make_answer() for _ in range(5)]
    for answer in answers:
        recorder.submit(answer)
    await _until(lambda: down.calls >= 3)
    await recorder.aclose(timeout_s=0.1)
    assert recorder.spooled() == 5
    assert sorted(_spooled_ids(tmp_path)) == sorted(a.answer_id for a in answers)

    up = FlakyStore()
    again = SpooledRecorder(up, tmp_path, **FAST)
    await again.start()
    await _until(lambda: len(up.taken) == 5)
    await again.aclose()
    assert up.taken == Counter({a.answer_id: 1 for a in answers})
    assert _segments(tmp_path) == []


_CRASHING_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from ragfleet.flywheel.recorder import SpooledRecorder
from tests.flywheel_contract import make_answer

class DownStore:
    name = "down"
    async def record(self, answer):
        raise ConnectionError("down")

async def main():
    recorder = SpooledRecorder(DownStore(), Path(sys.argv[1]))
    await recorder.start()
    for _ in range(int(sys.argv[2])):
        answer = make_answer()
        recorder.submit(answer)
        print(answer.answer_id, flush=True)
    # A write torn by the crash: half a line at the end of the segment being appended to.
    os.write(recorder._active_fd, b'{"answer_id": "torn')
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_crashed_process_leaves_its_records_for_the_next_one(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    crashed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_WRITER,
        str(spool),
        "6",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    stdout, stderr = await asyncio.wait_for(crashed.communicate(), timeout=60)
    assert crashed.returncode == -signal.SIGKILL, stderr.decode()
    written = stdout.decode().split()
    assert len(written) == 6

    store = FlakyStore()
    recorder = SpooledRecorder(store, spool, **FAST)
    await recorder.start()  # the dead process's lock is gone with it
    await _until(lambda: len(store.taken) == 6)
    await recorder.aclose()
    assert store.taken == Counter({answer_id: 1 for answer_id in written})
    rejected = [json.loads(line) for line in (spool / REJECTED_FILE).read_text().splitlines()]
    assert [r["line"] for r in rejected] == ['{"answer_id": "torn']
    assert "incomplete line" in rejected[0]["reason"]
    assert _segments(spool) == []


async def test_records_the_store_refuses_are_kept_aside_not_retried(tmp_path: Path) -> None:
    good, bad = make_answer(), make_answer()
    store = FlakyStore(refuse=frozenset({bad.answer_id}))
    recorder = SpooledRecorder(store, tmp_path, **FAST)
    recorder.submit(bad)
    recorder.submit(good)
    await recorder.flush()
    await recorder.aclose()
    assert store.taken == Counter({good.answer_id: 1})
    (rejected,) = (tmp_path / REJECTED_FILE).read_text().splitlines()
    assert json.loads(json.loads(rejected)["line"])["answer_id"] == bad.answer_id
    assert "NUL" in json.loads(rejected)["reason"]


async def test_two_recorders_cannot_share_a_spool_folder(tmp_path: Path) -> None:
    first = SpooledRecorder(FlakyStore(), tmp_path, **FAST)
    await first.start()
    second = SpooledRecorder(FlakyStore(), tmp_path, **FAST)
    with pytest.raises(FailedPrecondition, match="in use by another process"):
        await second.start()
    await first.aclose()
    await second.start()
    await second.aclose()


def test_a_spool_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    recorder = SpooledRecorder(FlakyStore(), tmp_path / "file" / "spool", **FAST)
    with pytest.raises(Unavailable, match=r"answer spool .*spool: cannot write"):
        recorder.submit(make_answer())


async def test_the_recorder_feeds_a_real_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    recorder = SpooledRecorder(store, tmp_path / "spool", **FAST)
    await recorder.start()
    answer = make_answer()
    recorder.submit(answer)
    await recorder.flush()
    assert await store.get_answer("acme", answer.answer_id) == answer
    await recorder.aclose()
    await store.close()


async def test_full_segments_are_closed_and_drained_in_order(tmp_path: Path) -> None:
    down = FlakyStore(failures=10**6)
    recorder = SpooledRecorder(down, tmp_path, max_segment_bytes=1, **FAST)
    answers = [make_answer() for _ in range(3)]
    for answer in answers:
        recorder.submit(answer)
    assert len(_segments(tmp_path)) == 3
    await recorder.aclose(timeout_s=0.1)
    up = FlakyStore()
    again = SpooledRecorder(up, tmp_path, **FAST)
    await again.flush()
    await again.aclose()
    assert up.order == [a.answer_id for a in answers]
