"""The whole test session runs as on a fresh machine: ``HOME`` is an empty folder made for it,
and no variable points at caches or credentials elsewhere. Nothing a developer's machine
accumulated in ``~`` (Ray's token, model caches, configs) can make a test pass."""

from __future__ import annotations

import os
import tempfile

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


def pytest_configure() -> None:
    home = tempfile.mkdtemp(prefix="ragfleet-test-home-")
    os.environ["HOME"] = home
    for name in _ELSEWHERE:
        os.environ.pop(name, None)
