"""The project's asynchronous gRPC clients behind LangChain's synchronous and asynchronous
methods.

A gRPC aio channel belongs to the event loop that made it, so ``Connection`` keeps one client
per loop: the asynchronous methods use the caller's running loop; the synchronous ones run on a
background loop of its own, in a daemon thread. That loop serves every calling thread, so the
synchronous methods are thread-safe (``batch`` calls them from a thread pool) and work even from
a thread whose own loop is running.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

_C = TypeVar("_C")
_T = TypeVar("_T")


class Connection(Generic[_C]):
    """Clients made by ``factory`` (e.g. ``lambda: EmbedderClient.connect(address)``), one per
    event loop, made on first use."""

    def __init__(self, factory: Callable[[], _C]) -> None:
        self._factory = factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _C] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._background: asyncio.AbstractEventLoop | None = None

    def client(self) -> _C:
        """The client of the running loop (call from a coroutine)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = self._factory()
            return client

    def _loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._background is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="ragfleet-langchain", daemon=True
                ).start()
                self._background = loop
            return self._background

    def _wait(self, work: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self._loop()).result()

    def run(self, call: Callable[[_C], Coroutine[Any, Any, _T]]) -> _T:
        """``call(client)`` on the background loop, waited for."""

        async def work() -> _T:
            return await call(self.client())

        return self._wait(work())

    def iterate(self, call: Callable[[_C], AsyncIterator[_T]]) -> Iterator[_T]:
        """The items of ``call(client)``, an asynchronous iterator run on the background loop,
        one at a time; closing this iterator early closes that one (cancelling its RPC)."""

        async def start() -> AsyncIterator[_T]:
            return call(self.client())

        stream = self._wait(start())
        try:
            while True:
                try:
                    yield self._wait(_next(stream))
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                self._wait(close())


async def _next(stream: AsyncIterator[_T]) -> _T:
    return await anext(stream)
