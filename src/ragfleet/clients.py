"""One typed client per service: the embedder, the retriever and the generator, as the gateway,
the ingestion pipeline, evaluation and the CLI call them.

Every call takes a ``Deadline`` and sends the time left as its gRPC timeout. Failures become
domain errors naming the upstream (``from_rpc_error``). Idempotent unary calls are retried on
UNAVAILABLE only, a few times with a short backoff and never past the deadline; the streaming
``Generate`` is never retried here: the caller decides, from the error kind ``generation_error``
keeps. A client's address may list several replicas (``ragfleet.runtime.channels``): its
channel balances over them and a retried call goes to a connected one. The clients are
asynchronous; ``Blocking`` runs them from synchronous code (Ray Data
actors, the ingest driver) on an event loop of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from ragfleet.common.v1 import common_pb2
from ragfleet.domain import (
    Chunk,
    GenerationDone,
    GenerationEvent,
    GenerationParams,
    InputType,
    SearchMode,
    SearchQuery,
    SearchResult,
    TokenEvent,
    chunk_to_proto,
    fusion_to_proto,
    hit_from_proto,
    search_mode_to_proto,
    usage_from_proto,
)
from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragfleet.runtime.channels import Deadline, RetryPolicy, insecure_channel
from ragfleet.runtime.errors import (
    DeadlineExceeded,
    InvalidInput,
    RagfleetError,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from ragfleet.runtime.telemetry import Metadata, observe_rpc, outgoing_metadata

_T = TypeVar("_T")

_INPUT_TYPES = {
    InputType.QUERY: embedder_pb2.INPUT_TYPE_QUERY,
    InputType.PASSAGE: embedder_pb2.INPUT_TYPE_PASSAGE,
}
DEFAULT_ATTEMPTS = 3


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.UNAVAILABLE


def credential_metadata(credential: str | None) -> Metadata:
    """The metadata that carries a bearer credential (none without one)."""
    return () if not credential else (("authorization", f"Bearer {credential}"),)


class _Client:
    """What the clients share: a name for errors, the service credential every call carries
    (``credential``: the fleet's service credential, or None when the services need none),
    and the bounded retry of unary calls."""

    service_name: str = ""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str,
        attempts: int,
        credential: str | None = None,
    ) -> None:
        self._channel = channel
        self.label = f"{type(self).__name__.removesuffix('Client').lower()} at {address}"
        self._attempts = attempts
        self._credential = credential_metadata(credential)

    @classmethod
    def connect(
        cls, address: str, attempts: int = DEFAULT_ATTEMPTS, credential: str | None = None
    ) -> Self:
        """A client on a channel of its own (no I/O until the first call); ``close`` it."""
        return cls(insecure_channel(address), address, attempts, credential)

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(
        self,
        rpc: str,
        stage: str,
        deadline: Deadline,
        call: Callable[[float, Metadata], Awaitable[_T]],
    ) -> _T:
        """``call(timeout, metadata)`` under a client span and the client metrics of ``rpc``
        (a method of ``service_name``), retried on UNAVAILABLE within ``deadline``."""

        async def attempt() -> _T:
            return await call(deadline.timeout(stage), outgoing_metadata(self._credential))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception(_is_unavailable),
            reraise=True,
        )
        with observe_rpc(f"/{self.service_name}/{rpc}", kind=SpanKind.CLIENT):
            try:
                return await retrying(attempt)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err, self.label) from err

    async def probe(self, timeout_s: float) -> str | None:
        """None when the service reports SERVING, otherwise why not."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=self.service_name),
                timeout=timeout_s,
                metadata=self._credential,
            )
        except grpc.aio.AioRpcError as err:
            return f"{self.label}: {err.code().name}: {err.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return f"{self.label}: {status}"
        return None


class EmbedderClient(_Client):
    service_name = "ragfleet.embedder.v1.EmbedderService"

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str,
        attempts: int = DEFAULT_ATTEMPTS,
        credential: str | None = None,
    ) -> None:
        super().__init__(channel, address, attempts, credential)
        self._stub = embedder_pb2_grpc.EmbedderServiceStub(channel)

    async def embed(
        self, texts: Sequence[str], input_type: InputType, deadline: Deadline
    ) -> list[tuple[float, ...]]:
        """One vector per text, in order."""
        request = embedder_pb2.EmbedRequest(texts=list(texts), input_type=_INPUT_TYPES[input_type])
        reply = await self._unary(
            "Embed",
            "embedding",
            deadline,
            lambda t, m: self._stub.Embed(request, timeout=t, metadata=m),
        )
        if len(reply.embeddings) != len(texts):
            raise RagfleetError(
                f"{self.label} returned {len(reply.embeddings)} vectors for {len(texts)} texts"
            )
        return [tuple(e.values) for e in reply.embeddings]

    async def rerank(self, query: str, passages: Sequence[str], deadline: Deadline) -> list[float]:
        """One relevance score per passage, in order (the embedder's cross-encoder)."""
        request = embedder_pb2.RerankRequest(query=query, passages=list(passages))
        reply = await self._unary(
            "Rerank",
            "reranking",
            deadline,
            lambda t, m: self._stub.Rerank(request, timeout=t, metadata=m),
        )
        if len(reply.scores) != len(passages):
            raise RagfleetError(
                f"{self.label} returned {len(reply.scores)} scores for {len(passages)} passages"
            )
        return list(reply.scores)


@dataclass(frozen=True)
class IndexStats:
    chunks: int
    sources: int
    dimension: int
    backend: str


class RetrieverClient(_Client):
    service_name = "ragfleet.retriever.v1.RetrieverService"

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str,
        attempts: int = DEFAULT_ATTEMPTS,
        credential: str | None = None,
    ) -> None:
        super().__init__(channel, address, attempts, credential)
        self._stub = retriever_pb2_grpc.RetrieverServiceStub(channel)

    async def search(self, search: SearchQuery, deadline: Deadline) -> SearchResult:
        if search.filter.source:
            raise InvalidInput("filter.source: the Search RPC filters by tenant and metadata only")
        request = retriever_pb2.SearchRequest(
            query=search.query,
            query_vector=list(search.vector),
            mode=search_mode_to_proto(search.mode),
            candidate_k=search.candidate_k or 0,
            fusion=common_pb2.Fusion(
                method=fusion_to_proto(search.fusion),
                rrf_k=search.rrf_k or 0,
                dense_weight=search.dense_weight,
            ),
            filter=common_pb2.Filter(
                tenant=search.filter.tenant, equals=dict(search.filter.equals)
            ),
        )
        if search.top_k is not None:
            request.top_k = search.top_k
        reply = await self._unary(
            "Search",
            "search",
            deadline,
            lambda t, m: self._stub.Search(request, timeout=t, metadata=m),
        )
        return SearchResult(
            hits=[hit_from_proto(h) for h in reply.hits],
            mode=SearchMode.HYBRID if search.mode is None else search.mode,
            best_dense_score=(
                reply.best_dense_score if reply.HasField("best_dense_score") else None
            ),
        )

    async def upsert(self, chunks: Sequence[Chunk], deadline: Deadline) -> int:
        """Upserts ``chunks`` (durable on return); returns how many distinct ids there were."""
        request = retriever_pb2.UpsertRequest(chunks=[chunk_to_proto(c) for c in chunks])
        reply = await self._unary(
            "Upsert",
            "upsert",
            deadline,
            lambda t, m: self._stub.Upsert(request, timeout=t, metadata=m),
        )
        return reply.upserted

    async def delete_source(
        self, tenant: str, source: str, deadline: Deadline, *, keep_ids: Sequence[str] = ()
    ) -> int:
        """Deletes every chunk of ``source`` within ``tenant`` except those with ``keep_ids``
        (at most the retriever's ``max_keep_ids``); returns how many were deleted. Replacing a
        source upserts its new chunks first, then calls this with their ids, so a failure in
        between leaves old and new chunks, never neither."""
        request = retriever_pb2.DeleteRequest(
            filter=common_pb2.Filter(tenant=tenant), source=source, keep_ids=list(keep_ids)
        )
        reply = await self._unary(
            "Delete",
            "delete",
            deadline,
            lambda t, m: self._stub.Delete(request, timeout=t, metadata=m),
        )
        return reply.deleted

    async def delete_ids(self, ids: Sequence[str], deadline: Deadline) -> int:
        """Deletes the chunks with ``ids`` (at most the retriever's ``max_delete_ids``)."""
        request = retriever_pb2.DeleteRequest(ids=list(ids))
        reply = await self._unary(
            "Delete",
            "delete",
            deadline,
            lambda t, m: self._stub.Delete(request, timeout=t, metadata=m),
        )
        return reply.deleted

    async def stats(self, deadline: Deadline) -> IndexStats:
        reply = await self._unary(
            "GetStats",
            "stats",
            deadline,
            lambda t, m: self._stub.GetStats(
                retriever_pb2.GetStatsRequest(), timeout=t, metadata=m
            ),
        )
        return IndexStats(reply.chunks, reply.sources, reply.dimension, reply.backend)


def generation_error(err: grpc.aio.AioRpcError, upstream: str) -> RagfleetError:
    """Like ``from_rpc_error``, but keeps RESOURCE_EXHAUSTED retryable and reports codes other
    than the retryable, deadline and client-mistake ones as a plain ``RagfleetError``, so a
    fallback chain retries exactly UNAVAILABLE and RESOURCE_EXHAUSTED."""
    code, details = err.code(), err.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"{upstream} failed (UNAVAILABLE): {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{upstream} is overloaded (RESOURCE_EXHAUSTED): {details}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{upstream} did not answer within the deadline: {details}")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return from_rpc_error(err, upstream)
    return RagfleetError(f"{upstream} failed ({code.name}): {details}")


class GeneratorClient(_Client):
    """Calls the generator through the Ray Serve gRPC proxy, which routes on the
    ``application`` metadata key (and forwards the trace context to the replica)."""

    service_name = "ragfleet.generator.v1.GeneratorService"

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str,
        application: str = "generator",
        attempts: int = DEFAULT_ATTEMPTS,
        credential: str | None = None,
    ) -> None:
        super().__init__(channel, address, attempts, credential)
        self._stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        self._metadata = (("application", application), *self._credential)

    @classmethod
    def connect(
        cls,
        address: str,
        attempts: int = DEFAULT_ATTEMPTS,
        credential: str | None = None,
        application: str = "generator",
    ) -> GeneratorClient:
        return cls(insecure_channel(address), address, application, attempts, credential)

    async def generate(
        self, params: GenerationParams, deadline: Deadline, reserve_s: float = 0.0
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Token deltas as they arrive, then one ``GenerationDone``. Stops ``reserve_s`` before
        the deadline so the caller still has time to answer otherwise."""
        request = generator_pb2.GenerateRequest(
            model=params.model,
            messages=[
                common_pb2.ChatMessage(role=m.role, content=m.content) for m in params.messages
            ],
            max_tokens=params.max_tokens,
            stop=params.stop,
        )
        if params.temperature is not None:
            request.temperature = params.temperature
        timeout = deadline.timeout("generation") - reserve_s
        with observe_rpc(f"/{self.service_name}/Generate", kind=SpanKind.CLIENT) as rpc:
            call = self._stub.Generate(
                request, timeout=max(timeout, 0.001), metadata=outgoing_metadata(self._metadata)
            )
            try:
                async for reply in call:
                    kind = reply.WhichOneof("event")
                    if kind == "token":
                        yield TokenEvent(reply.token.text)
                    elif kind == "done":
                        # Complete: a caller that stops reading here has not cancelled it.
                        rpc.code = grpc.StatusCode.OK
                        yield GenerationDone(
                            model=reply.done.model,
                            finish_reason=reply.done.finish_reason,
                            usage=usage_from_proto(reply.done.usage),
                        )
            except grpc.aio.AioRpcError as err:
                raise generation_error(err, self.label) from err
            finally:
                call.cancel()

    async def complete(self, params: GenerationParams, deadline: Deadline) -> str:
        """The whole generated text (``generate`` collected)."""
        parts = [
            event.text
            async for event in self.generate(params, deadline)
            if isinstance(event, TokenEvent)
        ]
        return "".join(parts)

    async def probe(self, timeout_s: float) -> str | None:
        """The Ray Serve proxy has no grpc.health.v1 for an application: a ListModels call that
        reaches the generator application is its readiness."""
        try:
            await self._stub.ListModels(
                generator_pb2.ListModelsRequest(), timeout=timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as err:
            return f"{self.label}: {err.code().name}: {err.details()}"
        return None


GATEWAY_RETRY = RetryPolicy("ragfleet.gateway.v1.GatewayService", ("Retrieve", "Ask"))
"""The gateway calls a client may repeat on another replica: Retrieve only reads, and gRPC
repeats an Ask only while no event of it has arrived. Ingest and Feedback write: never."""


def gateway_channel(address: str, api_key: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway replicas at ``address`` (``host:port[,host:port...]``),
    balanced round-robin, with ``GATEWAY_RETRY``, carrying ``api_key`` as a bearer token."""
    return insecure_channel(address, api_key, retry=[GATEWAY_RETRY])


class Blocking:
    """Runs the asynchronous clients from synchronous code, on an event loop of its own (gRPC
    channels belong to the loop they were made on, so clients are made through ``run`` too).

        runner = Blocking()
        retriever = runner.connect(lambda: RetrieverClient.connect(address))
        runner.run(retriever.upsert(chunks, Deadline.after(30)))
        runner.run(retriever.close())
        runner.close()
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()

    def run(self, work: Coroutine[Any, Any, _T]) -> _T:
        return self._loop.run_until_complete(work)

    def connect(self, factory: Callable[[], _T]) -> _T:
        """``factory()`` (e.g. ``lambda: RetrieverClient.connect(address)``) on this loop."""

        async def make() -> _T:
            return factory()

        return self.run(make())

    def close(self) -> None:
        self._loop.close()
