"""``ragfleet ingest``: runs the Ray Data ingestion pipeline from the CLI.

Ray: ``--ray-address`` (or ``RAGFLEET_RAY_ADDRESS``) names a cluster; without one, the local
fleet's Ray (``ragfleet up``) is joined when it runs, else a local Ray is started for the run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ragfleet_tools.cli.fleet import Fleet, FleetSettings

if TYPE_CHECKING:
    from ragfleet.ingest import IngestSummary


@dataclass(frozen=True)
class IngestOptions:
    source: str
    tenant: str = ""
    sync: bool = False
    kind: str = "auto"
    embedding: str = "service"
    workers: int = 1
    worker_cpus: float = 0.0
    ray_address: str = ""
    manifest: Path | None = None
    max_document_mb: float = 16.0
    progress: bool = True


def manifest_path(settings: FleetSettings, override: Path | None) -> Path:
    """``--manifest``, else ``$RAGFLEET_HOME/ingest/manifest.sqlite`` beside the fleet's index."""
    return override or settings.home / "ingest" / "manifest.sqlite"


def ray_address(settings: FleetSettings, given: str) -> str:
    """Where the driver's Ray lives: the given address, ``RAGFLEET_RAY_ADDRESS``, the running
    fleet's head (token auth), or ``local``."""
    address = given or os.environ.get("RAGFLEET_RAY_ADDRESS", "")
    if address:
        return address
    fleet = Fleet(settings)
    if fleet.running_pid("ray") is not None:
        # The CLI is a client process of the fleet, not serving code: joining the fleet's
        # token-authenticated head needs its token in this process's environment.
        for key, value in fleet.ray_env().items():
            os.environ.setdefault(key, value)
        return settings.ray_address
    return "local"


def run(settings: FleetSettings, options: IngestOptions) -> IngestSummary:
    """Runs one ingestion and returns its ``IngestSummary``. Raises ``InvalidInput`` for an
    unusable source and ``Unavailable`` when the retriever cannot be reached."""
    address = ray_address(settings, options.ray_address)
    if address == "local":
        # A Ray of this run's own: on loopback only, as the fleet's (Fleet.ray_env). Ray reads
        # the switch when it is imported, below.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ragfleet.chunking import ChunkingConfig
    from ragfleet.ingest import (
        EmbeddingBackend,
        IngestConfig,
        ReadLimits,
        SourceKind,
        ray_session,
        run_ingest,
    )
    from ragfleet.runtime.errors import InvalidInput

    try:
        embedding = EmbeddingBackend(options.embedding)
        kind = SourceKind(options.kind)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    fleet = Fleet(settings)
    config = IngestConfig(
        tenant=options.tenant or settings.tenant,
        service_credential=fleet.service_credential(),
        sync=options.sync,
        kind=kind,
        retriever_address=settings.address(settings.retriever_port),
        embedder_address=fleet.embedder_addresses,
        embedding=embedding,
        chunking=ChunkingConfig(),
        limits=ReadLimits(max_document_bytes=int(options.max_document_mb * 1024 * 1024)),
        workers=options.workers,
        worker_cpus=options.worker_cpus,
        progress=options.progress,
    )
    log = fleet.log_dir / "ingest.log"
    with native_stderr_to(log), ray_session(address):
        return run_ingest(options.source, config, manifest_path(settings, options.manifest))


@contextlib.contextmanager
def native_stderr_to(log: Path) -> Iterator[None]:
    """Ray's C++ core writes its warnings straight to file descriptor 2, the user's console
    here. For the block, descriptor 2 goes to ``log``, while ``sys.stderr`` (the progress bar,
    error messages) keeps writing to the console."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    previous = sys.stderr
    console = os.fdopen(os.dup(saved), "w", buffering=1, errors="backslashreplace")
    with open(log, "ab") as target:
        os.dup2(target.fileno(), 2)
    sys.stderr = console
    try:
        yield
    finally:
        console.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = previous
        console.close()
