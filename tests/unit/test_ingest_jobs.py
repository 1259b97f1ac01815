"""The gateway's ingestion job registry with a fake runner: states, lookup, source checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet.ingest import IngestSummary, Outcome
from ragfleet.ingest.urls import UrlPolicy
from ragfleet.runtime.errors import InvalidInput, NotFound, Unavailable
from ragfleet_gateway.ingest_jobs import IngestJobs, JobRequest, JobState

pytestmark = pytest.mark.unit


def fake_runner(request: JobRequest, summary: IngestSummary) -> IngestSummary:
    if "down" in request.source:
        raise Unavailable("retriever at x: connection refused")
    summary.documents = 2
    summary.count(Outcome.ADDED, "a")
    if "bad" in request.source:
        summary.count(Outcome.FAILED, "b", "HTTP 500 Internal Server Error")
    else:
        summary.count(Outcome.UNCHANGED, "b")
    return summary


@pytest.mark.parametrize(
    ("source", "state"),
    [
        ("https://example.org/ok", JobState.SUCCEEDED),
        ("https://example.org/bad", JobState.FAILED),
        ("https://example.org/down", JobState.FAILED),
    ],
)
async def test_job_runs_to_its_state(source: str, state: JobState) -> None:
    jobs = IngestJobs(fake_runner, [])
    job = jobs.start(JobRequest(source, tenant="t"))
    assert job.state is JobState.RUNNING and jobs.get(job.id) is job
    await job.done.wait()
    assert job.state is state and job.finished_at is not None
    if "down" in source:
        assert isinstance(job.failure, Unavailable)
    else:
        assert job.failure is None and job.summary.documents == 2


async def test_unknown_job_is_not_found() -> None:
    with pytest.raises(NotFound, match="job_id"):
        IngestJobs(fake_runner, []).get("nope")


async def test_paths_must_lie_under_an_allowed_root(tmp_path: Path) -> None:
    jobs = IngestJobs(fake_runner, [tmp_path / "allowed"])
    with pytest.raises(InvalidInput, match=r"source: .* allowed root"):
        jobs.start(JobRequest(str(tmp_path / "elsewhere")))
    with pytest.raises(InvalidInput, match="source: must not be empty"):
        jobs.start(JobRequest(" "))
    job = jobs.start(JobRequest(str(tmp_path / "allowed" / "docs")))
    assert job.request.source == str((tmp_path / "allowed" / "docs").resolve())
    await job.done.wait()


async def test_only_the_last_finished_jobs_are_kept() -> None:
    jobs = IngestJobs(fake_runner, [], kept=1)
    first = jobs.start(JobRequest("https://example.org/1"))
    await first.done.wait()
    second = jobs.start(JobRequest("https://example.org/2"))
    await second.done.wait()
    third = jobs.start(JobRequest("https://example.org/3"))
    with pytest.raises(NotFound):
        jobs.get(first.id)
    assert jobs.get(second.id) is second
    await third.done.wait()


async def test_urls_the_policy_refuses_are_refused_before_a_job_starts() -> None:
    jobs = IngestJobs(
        fake_runner, [], policy=UrlPolicy(allowed_hosts=(".example.org",), max_redirects=2)
    )
    for url, rule in (
        ("http://127.0.0.1:8080/admin", "not among the allowed hosts"),
        ("https://evil.test/", "not among the allowed hosts"),
        ("ftp://example.org/a", "not an http\\(s\\) URL"),
    ):
        with pytest.raises(InvalidInput, match=rule):
            jobs.start(JobRequest(url))
    open_policy = IngestJobs(fake_runner, [])
    for url, rule in (
        ("http://127.0.0.1:8080/admin", "127.0.0.1, a loopback address"),
        ("http://[fd00::1]/", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
    ):
        with pytest.raises(InvalidInput, match=rf"source: url .*{rule}"):
            open_policy.start(JobRequest(url))
    job = jobs.start(JobRequest("https://docs.example.org/guide"))
    await job.done.wait()
    assert job.state is JobState.SUCCEEDED
