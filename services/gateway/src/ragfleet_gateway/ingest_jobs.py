"""Ingestion jobs: a source (path, corpus, URL, sitemap) read by the Ray Data pipeline of
``ragfleet.ingest``, run in the background and looked up by id.

Both the Ingest RPC (with ``source``) and ``POST /v1/ingest/jobs`` start jobs here; the RPC
waits for its job. Jobs run one at a time (the manifest and the index have one writer), each in
a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ragfleet.ingest import (
    EmbeddingBackend,
    IngestConfig,
    IngestSummary,
    ray_session,
    run_ingest,
)
from ragfleet.ingest.sources import ReadLimits, is_url
from ragfleet.ingest.urls import UrlPolicy
from ragfleet.runtime.errors import InvalidInput, NotFound, RagfleetError
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.validation import check_text, quote

log = get_logger(__name__)


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JobRequest:
    source: str
    tenant: str = ""
    sync: bool = False


@dataclass
class IngestJob:
    """``FAILED`` when the run itself failed (``failure`` says why) or any document failed (the
    summary's ``failures``); the summary's counts grow while the job runs."""

    id: str
    request: JobRequest
    state: JobState = JobState.RUNNING
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    failure: RagfleetError | None = None
    summary: IngestSummary = field(default_factory=IngestSummary)
    done: asyncio.Event = field(default_factory=asyncio.Event)


Runner = Callable[[JobRequest, IngestSummary], IngestSummary]


def pipeline_runner(settings: GatewaySettings) -> Runner:
    """Runs a job's request through ``ragfleet.ingest.run_ingest`` with the gateway's
    upstreams and ingestion settings. Ray is started (or joined) on the first job and kept."""

    def run(request: JobRequest, summary: IngestSummary) -> IngestSummary:
        config = IngestConfig(
            tenant=request.tenant,
            sync=request.sync,
            retriever_address=settings.retriever_address,
            embedder_address=settings.embedder_address,
            service_credential=settings.credential(),
            embedding=EmbeddingBackend(settings.ingest_embedding),
            workers=settings.ingest_workers,
            limits=ReadLimits(url_policy=url_policy(settings)),
        )
        with ray_session(settings.ingest_ray_address, keep=True):
            return run_ingest(request.source, config, settings.ingest_manifest_path, summary)

    return run


def url_policy(settings: GatewaySettings) -> UrlPolicy:
    """Which URLs the gateway's jobs fetch: callers choose them, so never an unlisted host
    when hosts are listed, and only public addresses unless private ones are allowed."""
    return UrlPolicy(
        allowed_hosts=tuple(settings.ingest_allowed_url_hosts),
        allow_private=settings.ingest_allow_private_urls,
        max_redirects=settings.ingest_max_redirects,
    )


def check_source(source: str, allowed_roots: list[Path], policy: UrlPolicy) -> str:
    """``source`` when it is an http(s) URL ``policy`` allows (checked without DNS here; every
    fetch checks again, resolved) or a path under an allowed root; else ``InvalidInput``
    naming the field and the rule."""
    check_text(source, "source")
    if not source.strip():
        raise InvalidInput("source: must not be empty")
    if is_url(source):
        try:
            policy.check(source, resolve=False)
        except InvalidInput as exc:
            raise InvalidInput(f"source: {exc}") from None
        return source
    path = Path(source).resolve()
    if not any(path.is_relative_to(root.resolve()) for root in allowed_roots):
        raise InvalidInput(
            f"source: {quote(source)} is not an http(s) URL nor under an allowed root "
            "(RAGFLEET_GATEWAY_INGEST_ALLOWED_ROOTS)"
        )
    return str(path)


class IngestJobs:
    """The registry: starts jobs, keeps the last ``kept`` finished ones for lookup."""

    def __init__(
        self,
        runner: Runner,
        allowed_roots: list[Path],
        kept: int = 100,
        policy: UrlPolicy | None = None,
    ) -> None:
        """``policy``: the URLs jobs may fetch (default: public addresses only)."""
        if kept < 1:
            raise ValueError("kept must be at least 1")
        self._runner = runner
        self._roots = list(allowed_roots)
        self._policy = policy or UrlPolicy()
        self._kept = kept
        self._jobs: OrderedDict[str, IngestJob] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._serial = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> IngestJobs:
        return cls(
            pipeline_runner(settings),
            settings.ingest_allowed_roots,
            settings.ingest_jobs_kept,
            url_policy(settings),
        )

    def start(self, request: JobRequest) -> IngestJob:
        """Validates the request (``InvalidInput``) and starts the job in the background."""
        check_text(request.tenant, "tenant")
        request = JobRequest(
            check_source(request.source, self._roots, self._policy),
            request.tenant,
            request.sync,
        )
        job = IngestJob(id=uuid.uuid4().hex, request=request)
        self._jobs[job.id] = job
        self._forget_old()
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> IngestJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job_id: no ingestion job {job_id!r}")
        return job

    async def _run(self, job: IngestJob) -> None:
        async with self._serial:
            log.info("ingest_job_started", job=job.id, source=job.request.source)
            try:
                await asyncio.to_thread(self._runner, job.request, job.summary)
                job.state = JobState.SUCCEEDED if job.summary.ok else JobState.FAILED
            except RagfleetError as exc:
                job.state, job.failure = JobState.FAILED, exc
            except Exception as exc:
                log.exception("ingest_job_crashed", job=job.id)
                job.state = JobState.FAILED
                job.failure = RagfleetError(f"internal error: {type(exc).__name__}: {exc}")
            job.finished_at = time.time()
            job.done.set()
            log.info("ingest_job_finished", job=job.id, state=job.state.value)

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.finished_at is not None]
        for job_id in finished[: max(0, len(finished) - self._kept)]:
            del self._jobs[job_id]
