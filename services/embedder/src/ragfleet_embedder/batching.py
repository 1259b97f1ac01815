"""Dynamic batching: texts from concurrent requests share one model call."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from prometheus_client import Counter, Gauge, Histogram

from ragfleet.runtime.errors import Unavailable

EncodeFn = Callable[[Sequence[str]], NDArray[np.float32]]
_T = TypeVar("_T")

BATCH_TEXTS = Histogram(
    "ragfleet_embedder_batch_texts",
    "Texts per model call of the dynamic batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUED_TEXTS = Gauge(
    "ragfleet_embedder_queued_texts", "Texts waiting for the next batch of the dynamic batcher"
)
DROPPED_REQUESTS = Counter(
    "ragfleet_embedder_dropped_requests",
    "Requests whose caller gave up (cancelled, deadline) before their batch was encoded",
)


def model_thread() -> ThreadPoolExecutor:
    """The one thread that runs a process's model calls.

    Not ``asyncio.to_thread``: its pool hands each call to whichever of its threads is idle,
    and torch starts a team of OpenMP threads for every thread that calls it. With calls
    spread over several threads, idle teams spin on the cores the working one needs: on two
    cores the gateway's retrieve path served 77 requests/s at 16 clients that way, 94 with
    every model call on one thread."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")


async def run_in(executor: Executor, fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)`` in ``executor``, in a copy of the caller's context (as ``to_thread``)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


@dataclass
class _Request:
    texts: Sequence[str]
    future: asyncio.Future[NDArray[np.float32]]
    enqueued_at: float


class DynamicBatcher:
    """Gathers the texts of concurrent ``submit`` calls into batches and encodes each batch once.

    A batch closes when it holds ``max_batch_size`` texts or when its oldest request has waited
    ``max_wait_s``. Requests are never split: one larger than ``max_batch_size`` is encoded
    alone. Batches are encoded one at a time in ``executor`` (default: a ``model_thread`` of
    the batcher's own), so ``encode`` never runs concurrently with itself and the event loop
    stays free. An ``encode`` failure is raised to every caller whose texts were in that
    batch; later batches are unaffected.

    Use ``start()`` inside the running event loop before ``submit``, and ``close()`` to stop.
    """

    def __init__(
        self,
        encode: EncodeFn,
        max_batch_size: int,
        max_wait_s: float,
        executor: Executor | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self._encode = encode
        self._own_executor = executor is None
        self._executor = model_thread() if executor is None else executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._pending: deque[_Request] = deque()
        self._pending_texts = 0
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError("the batcher is already started")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def close(self) -> None:
        """Stops the worker; requests still queued or in a running batch fail with Unavailable."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._fail_pending(Unavailable("the embedder is shutting down"))
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Encodes ``texts`` (at least one) as part of some batch; returns their rows in order."""
        if not texts:
            raise ValueError("submit needs at least one text")
        if self._closed or self._worker is None or self._worker.done():
            raise Unavailable("the embedder's batcher is not running")
        loop = asyncio.get_running_loop()
        request = _Request(texts, loop.create_future(), loop.time())
        self._pending.append(request)
        self._pending_texts += len(texts)
        QUEUED_TEXTS.inc(len(texts))
        self._arrived.set()
        return await request.future

    async def _run(self) -> None:
        try:
            while True:
                while not self._pending:
                    self._arrived.clear()
                    await self._arrived.wait()
                await self._wait_for_more()
                batch = self._take_batch()
                if batch:
                    await self._encode_batch(batch)
        finally:
            self._fail_pending(Unavailable("the embedder's batcher stopped"))

    async def _wait_for_more(self) -> None:
        loop = asyncio.get_running_loop()
        # The clock starts when the oldest request arrived, so requests that queued up while
        # the previous batch was encoding do not wait a second time.
        deadline = self._pending[0].enqueued_at + self._max_wait_s
        while self._pending_texts < self._max_batch_size:
            timeout = deadline - loop.time()
            if timeout <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        while self._pending:
            request = self._pending[0]
            if batch and size + len(request.texts) > self._max_batch_size:
                break
            self._pending.popleft()
            self._pending_texts -= len(request.texts)
            QUEUED_TEXTS.dec(len(request.texts))
            # A caller that gave up (cancelled, deadline) is dropped before it costs model time.
            if not request.future.done():
                batch.append(request)
                size += len(request.texts)
            else:
                DROPPED_REQUESTS.inc()
        if batch:
            BATCH_TEXTS.observe(size)
        return batch

    async def _encode_batch(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            vectors = await run_in(self._executor, self._encode, texts)
            if vectors.shape[0] != len(texts):
                raise RuntimeError(
                    f"the model returned {vectors.shape[0]} embeddings for {len(texts)} texts"
                )
        except asyncio.CancelledError:
            for request in batch:
                _settle(request, Unavailable("the embedder is shutting down"))
            raise
        except Exception as exc:
            for request in batch:
                _settle(request, exc)
            return
        offset = 0
        for request in batch:
            _settle(request, vectors[offset : offset + len(request.texts)])
            offset += len(request.texts)

    def _fail_pending(self, error: Exception) -> None:
        while self._pending:
            _settle(self._pending.popleft(), error)
        QUEUED_TEXTS.dec(self._pending_texts)
        self._pending_texts = 0


def _settle(request: _Request, outcome: NDArray[np.float32] | BaseException) -> None:
    if request.future.done():
        return
    if isinstance(outcome, BaseException):
        request.future.set_exception(outcome)
    else:
        request.future.set_result(outcome)
