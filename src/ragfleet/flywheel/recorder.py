"""``SpooledRecorder``: records answers on the gateway's hot path without waiting for the store.

``submit`` appends the record as one JSON line to a spool file and makes it durable (flush and
``fsync``) before it returns, so an answer the user saw is never lost, whatever happens next. A
background task moves spooled records into the store and deletes a spool file only once the
store took every record in it. When the store is down the task retries with capped exponential
backoff and the spool grows on disk; when the process dies, the next recorder on the same
folder replays what is left.

Spool layout, in ``spool_dir``:

- ``answers-<sequence>.jsonl``: segments, drained oldest first. The newest is the one being
  appended to; it is closed (rotated) when everything older has reached the store (so a long
  outage grows one file rather than one per attempt) or when it reaches its size limit. A
  process never appends to a segment an earlier process left: its last line may be torn;
- ``rejected.jsonl``: lines that do not parse (a write torn by a crash) or that the store
  refused as invalid, with the reason: kept for a person to look at, never dropped;
- ``.lock``: held (``flock``) while a recorder uses the folder, so two processes never drain
  each other's segments. The kernel releases it when a process dies.

Delivery is at least once: a crash between the store taking a record and the spool forgetting
it replays that record, and ``FeedbackStore.record`` is idempotent by ``answer_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from pathlib import Path

from prometheus_client import Counter

from ragfleet.flywheel.records import AnswerRecord
from ragfleet.flywheel.store import FeedbackStore
from ragfleet.runtime.errors import FailedPrecondition, InvalidInput, RagfleetError, Unavailable
from ragfleet.runtime.logging import get_logger

log = get_logger(__name__)

SPOOLED = Counter("ragfleet_flywheel_spooled_records", "Answer records written to the spool")
STORED = Counter("ragfleet_flywheel_stored_records", "Spooled answer records the store took")
REJECTED = Counter(
    "ragfleet_flywheel_rejected_records",
    "Spooled lines that did not parse or that the store refused (kept in rejected.jsonl)",
)
STORE_FAILURES = Counter(
    "ragfleet_flywheel_store_failures", "Attempts to move the spool into the store that failed"
)

_PREFIX, _SUFFIX = "answers-", ".jsonl"
REJECTED_FILE = "rejected.jsonl"


def _segment_name(sequence: int) -> str:
    return f"{_PREFIX}{sequence:012d}{_SUFFIX}"


def _sequence(path: Path) -> int | None:
    digits = path.name.removeprefix(_PREFIX).removesuffix(_SUFFIX)
    return int(digits) if path.name.startswith(_PREFIX) and digits.isdigit() else None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    """Makes a file's creation or removal in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpooledRecorder:
    """Answer records into ``store`` through the spool folder ``spool_dir`` (created).

    ``retry_initial_s`` and ``retry_max_s`` bound the backoff between attempts while the store
    is down; a segment is closed once it holds ``max_segment_bytes`` (a drain reads a whole
    segment into memory, and a long outage must not make one huge file).

    Use: ``await start()``, ``submit`` per answer, ``await aclose()`` at shutdown."""

    def __init__(
        self,
        store: FeedbackStore,
        spool_dir: Path,
        *,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_segment_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if not 0 < retry_initial_s <= retry_max_s:
            raise InvalidInput(
                f"retry_initial_s: must be positive and at most retry_max_s ({retry_max_s}), "
                f"got {retry_initial_s}"
            )
        if max_segment_bytes < 1:
            raise InvalidInput(f"max_segment_bytes: must be positive, got {max_segment_bytes}")
        self.store = store
        self.spool_dir = spool_dir
        self._max_segment_bytes = max_segment_bytes
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._lock_fd: int | None = None
        self._next_sequence = 0
        self._active_fd: int | None = None
        self._active: Path | None = None
        self._active_records = 0
        self._active_bytes = 0
        # Segment name -> its records the store already took (this process's retries resume
        # there, so a record is not sent twice after a failure in the middle of a segment).
        self._progress: dict[str, int] = {}
        self._wake = asyncio.Event()
        # One drain at a time: the background task's and flush()'s.
        self._draining = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # --- the hot path ---------------------------------------------------------------------------

    def submit(self, record: AnswerRecord) -> None:
        """Spools ``record`` durably and returns; never waits for the store and never fails
        because of it. Raises ``Unavailable`` only when the spool itself cannot be written (a
        full or read-only disk): then the record could not be kept."""
        # ASCII JSON: a lone surrogate in user text is escaped, not an encoding error here
        # (the store refuses it later, and it lands in rejected.jsonl).
        line = (json.dumps(record.to_json(), ensure_ascii=True) + "\n").encode("ascii")
        try:
            fd = self._active_segment()
            _write_all(fd, line)
            os.fsync(fd)
            self._active_records += 1
            self._active_bytes += len(line)
            if self._active_bytes >= self._max_segment_bytes:
                self._close_active()
        except OSError as exc:
            # A new segment for the next record: this one may end in a partial line (kept
            # aside as torn when drained; the caller is told this record was not kept).
            with contextlib.suppress(OSError):
                self._close_active()
            raise Unavailable(f"answer spool {self.spool_dir}: cannot write: {exc}") from exc
        SPOOLED.inc()
        self._wake.set()

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Takes the spool folder (``FailedPrecondition`` when another process holds it) and
        starts the background task, which first replays what an earlier process left."""
        try:
            self._open()
        except OSError as exc:
            raise Unavailable(f"answer spool {self.spool_dir}: {exc}") from exc
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="flywheel-spool-drain")
        self._wake.set()

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Returns once every record submitted before the call is in the store. Raises the
        store's ``Unavailable`` when it is down, and ``Unavailable`` when it has not taken them
        within ``timeout_s``; the records stay in the spool either way."""
        try:
            async with asyncio.timeout(timeout_s), self._draining:
                await self._drain_once()
        except TimeoutError:
            raise Unavailable(
                f"{self.store.name} did not take the spooled answers within {timeout_s:g} s"
            ) from None
        except RagfleetError:
            raise
        except Exception as exc:
            # A store that fails with something else (a driver's own error) is still down.
            raise Unavailable(f"{self.store.name}: {exc!r}") from exc

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stops the background task, moves what the store takes within ``timeout_s`` and
        leaves the rest in the spool for the next start; releases the folder."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush(timeout_s)
        except (RagfleetError, OSError) as exc:
            log.warning(
                "answer records left in the spool", spool=str(self.spool_dir), reason=str(exc)
            )
        finally:
            self._close_active()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def spooled(self) -> int:
        """Records in the spool that the store has not taken yet (whole lines only)."""
        total = 0
        for path in self._segments(include_active=True):
            with contextlib.suppress(FileNotFoundError):
                total += path.read_bytes().count(b"\n") - self._progress.get(path.name, 0)
        return total

    # --- the spool ------------------------------------------------------------------------------

    def _open(self) -> None:
        """Creates and locks the folder (once), and numbers this process's segments after any
        an earlier process left."""
        if self._lock_fd is not None:
            return
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.spool_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FailedPrecondition(
                f"answer spool {self.spool_dir} is in use by another process; give each "
                "gateway process a spool folder of its own"
            ) from None
        self._lock_fd = fd
        sequences = [_sequence(p) or 0 for p in self._segments(include_active=True)]
        self._next_sequence = max(sequences, default=0) + 1

    def _active_segment(self) -> int:
        if self._active_fd is None:
            self._open()
            path = self.spool_dir / _segment_name(self._next_sequence)
            self._next_sequence += 1
            self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._active, self._active_records, self._active_bytes = path, 0, 0
            _fsync_dir(self.spool_dir)
        return self._active_fd

    def _close_active(self) -> None:
        """Closes the segment being appended to; the next submit starts a new one. An empty
        segment is removed."""
        if self._active_fd is None or self._active is None:
            return
        os.close(self._active_fd)
        if self._active_records == 0:
            self._active.unlink(missing_ok=True)
        self._active_fd, self._active = None, None
        self._active_records = self._active_bytes = 0

    def _segments(self, *, include_active: bool = False) -> list[Path]:
        """Segment files, oldest first; the one being appended to only with ``include_active``."""
        if not self.spool_dir.is_dir():
            return []
        found = {
            sequence: path
            for path in self.spool_dir.glob(f"{_PREFIX}*{_SUFFIX}")
            if (sequence := _sequence(path)) is not None
            and (include_active or path != self._active)
        }
        return [found[sequence] for sequence in sorted(found)]

    # --- draining -------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._retry_initial_s
        while True:
            self._wake.clear()
            try:
                async with self._draining:
                    await self._drain_once()
            except Exception as exc:
                # Anything from the store, a driver bug included: the records are safe on disk,
                # so the only sane reaction is to log, wait and try again.
                STORE_FAILURES.inc()
                log.warning(
                    "answer store did not take the spool; retrying",
                    store=self.store.name,
                    error=exc.message if isinstance(exc, RagfleetError) else repr(exc),
                    segments=len(self._segments(include_active=True)),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = self._retry_initial_s
            await self._wake.wait()

    async def _drain_once(self) -> None:
        """Delivers the closed segments, then closes the active one and delivers it too. A
        failure stops the pass before the active segment is closed, so an outage appends to
        one segment instead of making a new one per attempt."""
        self._open()
        for path in self._segments():
            await self._deliver(path)
        if self._active_records:
            self._close_active()
            for path in self._segments():
                await self._deliver(path)

    async def _deliver(self, path: Path) -> None:
        """Moves every record of the closed segment ``path`` into the store, then removes it."""
        lines = (await asyncio.to_thread(path.read_bytes)).split(b"\n")
        # After the final newline comes b"": anything else there is a write torn by a crash.
        torn = lines.pop()
        rejected: list[tuple[bytes, str]] = []
        if torn:
            rejected.append((torn, "incomplete line (the process died while writing it)"))
        done = self._progress.get(path.name, 0)
        for number, raw in enumerate(lines):
            if number < done or not raw.strip():
                continue
            try:
                record = AnswerRecord.from_json(json.loads(raw))
                await self.store.record(record)
                STORED.inc()
            except (json.JSONDecodeError, UnicodeDecodeError, InvalidInput) as exc:
                rejected.append((raw, str(exc)))
            self._progress[path.name] = number + 1
        await asyncio.to_thread(self._remove, path, rejected)
        self._progress.pop(path.name, None)

    def _remove(self, segment: Path, rejected: list[tuple[bytes, str]]) -> None:
        """Removes a delivered segment, its ``rejected`` lines kept first."""
        if rejected:
            self._reject(segment, rejected)
        segment.unlink()
        _fsync_dir(self.spool_dir)

    def _reject(self, segment: Path, lines: list[tuple[bytes, str]]) -> None:
        """Keeps ``lines`` in ``rejected.jsonl`` with the reason, for a person to look at."""
        with (self.spool_dir / REJECTED_FILE).open("a", encoding="utf-8") as out:
            for raw, reason in lines:
                entry = {
                    "segment": segment.name,
                    "reason": reason,
                    "line": raw.decode("utf-8", "replace"),
                }
                out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())
        REJECTED.inc(len(lines))
        log.error(
            "answer records rejected",
            spool=str(self.spool_dir),
            segment=segment.name,
            count=len(lines),
            kept_in=REJECTED_FILE,
        )
