"""The whole test session runs as on a fresh machine: ``HOME`` is an empty folder made for it,
and no variable points at caches or credentials elsewhere. Nothing a developer's machine
accumulated in ``~`` (Ray's token, model caches, configs) can make a test pass."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

# Variables that would let a process find state outside the fresh HOME.
_ELSEWHERE = (
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "HF_HOME",
    "HF_TOKEN",
    "TRANSFORMERS_CACHE",
    "SENTENCE_TRANSFORMERS_HOME",
    "TORCH_HOME",
    "MPLCONFIGDIR",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_ADDRESS",
    "RAGFLEET_HOME",
)


_FRESH_HOME: list[str] = []


def pytest_configure() -> None:
    home = tempfile.mkdtemp(prefix="ragfleet-test-home-")
    _FRESH_HOME.append(home)
    os.environ["HOME"] = home
    for name in _ELSEWHERE:
        os.environ.pop(name, None)


def pytest_unconfigure() -> None:
    for home in _FRESH_HOME:
        shutil.rmtree(home, ignore_errors=True)


def _reset_tracer_provider() -> None:
    # The API lets a process set its provider once; tests that record spans undo it after.
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@pytest.fixture
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process for one test, its finished spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_tracer_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_tracer_provider()
