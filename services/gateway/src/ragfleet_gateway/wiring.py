"""``build_gateway(settings)``: the one place the gateway is wired, used by ``__main__`` and by
every test that starts a gateway, so what is tested is what runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from ragfleet.runtime.server import GrpcService
from ragfleet.runtime.telemetry import tracing_requested
from ragfleet_gateway.auth import Authenticator
from ragfleet_gateway.feedback import FeedbackDesk
from ragfleet_gateway.ingest_jobs import IngestJobs
from ragfleet_gateway.pipeline import RagPipeline
from ragfleet_gateway.rest import create_app
from ragfleet_gateway.server import RestServer, build_rest_server, build_server
from ragfleet_gateway.settings import GatewaySettings
from ragfleet_gateway.upstreams import Upstreams


@dataclass
class Gateway:
    """The gateway's parts: upstream clients, the core, shared ingest jobs, and the unstarted
    gRPC and REST servers around them."""

    settings: GatewaySettings
    upstreams: Upstreams
    pipeline: RagPipeline
    jobs: IngestJobs
    grpc: GrpcService
    rest: RestServer
    feedback: FeedbackDesk | None = None
    _rest_task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start_rest(self) -> None:
        """Serves REST in the background once its port is bound."""
        self._rest_task = await self.rest.start()

    async def start_recording(self) -> None:
        """Starts moving recorded answers (an earlier run's spool first) into the store."""
        if self.feedback is not None:
            await self.feedback.start()

    async def start(self) -> None:
        """Starts both servers and reports SERVING (what ``run_service`` does, for tests)."""
        await self.start_recording()
        await self.grpc.start()
        await self.start_rest()
        await self.grpc.mark_ready()

    async def stop_rest(self) -> None:
        if self._rest_task is not None:
            self.rest.should_exit = True
            await self._rest_task
            self._rest_task = None

    async def stop(self, grace_s: float = 0) -> None:
        """Stops both servers, closes the upstream channels, then the answer store (records it
        did not take stay in the spool for the next start)."""
        await self.stop_rest()
        await self.grpc.stop(grace_s)
        await self.upstreams.close()
        if self.feedback is not None:
            await self.feedback.close()


def build_gateway(settings: GatewaySettings) -> Gateway:
    """The gateway as configured: clients for every upstream, the reranker (the embedder's
    Rerank), the fallback chain, the answer store, ingest jobs and API keys shared by gRPC and
    REST, and both servers. Refuses (``ValueError``) to build a gateway without API keys unless
    ``settings.auth_disabled`` says so."""
    authenticator = Authenticator.from_settings(settings.api_keys_file, settings.auth_disabled)
    upstreams = Upstreams.connect(settings)
    feedback = FeedbackDesk.from_settings(settings)
    pipeline = RagPipeline(
        settings,
        upstreams.embedder,
        upstreams.retriever,
        upstreams.generator,
        model_generators=upstreams.model_generators,
        reranker=upstreams.embedder,
        feedback=feedback,
    )
    jobs = IngestJobs.from_settings(settings)
    app = create_app(
        pipeline, lambda: upstreams.health(settings.health_timeout_s), jobs, authenticator
    )
    if tracing_requested():
        # REST requests get server spans (and continue a caller's traceparent) like RPCs do.
        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz")
    return Gateway(
        settings=settings,
        upstreams=upstreams,
        pipeline=pipeline,
        jobs=jobs,
        grpc=build_server(settings, pipeline, jobs, authenticator),
        rest=build_rest_server(settings, app),
        feedback=feedback,
    )
