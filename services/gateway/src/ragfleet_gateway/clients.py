"""Typed clients of the embedder, retriever and generator, and the set of them (``Upstreams``).

Every call takes the request's ``Deadline`` and sends the time left as its gRPC timeout. Failures
become domain errors naming the upstream (``from_rpc_error``). Idempotent unary calls are retried
on UNAVAILABLE only, a few times with a short backoff and never past the deadline; the streaming
``Generate`` is never retried here: ``ragfleet_gateway.fallback`` decides, from the error kind
``generation_error`` keeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from ragfleet.common.v1 import common_pb2
from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragfleet.runtime.clients import Deadline, insecure_channel
from ragfleet.runtime.errors import (
    DeadlineExceeded,
    RagfleetError,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from ragfleet_gateway.domain import (
    Chunk,
    GenerationDone,
    GenerationEvent,
    GenerationParams,
    Hit,
    InputType,
    SearchMode,
    TokenEvent,
    Usage,
)
from ragfleet_gateway.settings import GatewaySettings

_T = TypeVar("_T")

_INPUT_TYPES = {
    InputType.QUERY: embedder_pb2.INPUT_TYPE_QUERY,
    InputType.PASSAGE: embedder_pb2.INPUT_TYPE_PASSAGE,
}
_MODES = {
    SearchMode.LEXICAL: common_pb2.SEARCH_MODE_LEXICAL,
    SearchMode.DENSE: common_pb2.SEARCH_MODE_DENSE,
    SearchMode.HYBRID: common_pb2.SEARCH_MODE_HYBRID,
}


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.UNAVAILABLE


class _Upstream:
    """What the three clients share: a name for errors and the bounded retry of unary calls."""

    service_name: str = ""

    def __init__(self, channel: grpc.aio.Channel, address: str, attempts: int) -> None:
        self._channel = channel
        self.label = f"{type(self).__name__.removesuffix('Client').lower()} at {address}"
        self._attempts = attempts

    async def _unary(
        self, stage: str, deadline: Deadline, call: Callable[[float], Awaitable[_T]]
    ) -> _T:
        async def attempt() -> _T:
            return await call(deadline.timeout(stage))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception(_is_unavailable),
            reraise=True,
        )
        try:
            return await retrying(attempt)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, self.label) from err

    async def probe(self, timeout_s: float) -> str | None:
        """None when the upstream reports SERVING, otherwise why not."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=self.service_name), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            return f"{self.label}: {err.code().name}: {err.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return f"{self.label}: {status}"
        return None


class EmbedderClient(_Upstream):
    service_name = "ragfleet.embedder.v1.EmbedderService"

    def __init__(self, channel: grpc.aio.Channel, address: str, attempts: int = 3) -> None:
        super().__init__(channel, address, attempts)
        self._stub = embedder_pb2_grpc.EmbedderServiceStub(channel)

    async def embed(
        self, texts: Sequence[str], input_type: InputType, deadline: Deadline
    ) -> list[tuple[float, ...]]:
        """One vector per text, in order."""
        request = embedder_pb2.EmbedRequest(texts=list(texts), input_type=_INPUT_TYPES[input_type])
        reply = await self._unary(
            "embedding", deadline, lambda t: self._stub.Embed(request, timeout=t)
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
            "reranking", deadline, lambda t: self._stub.Rerank(request, timeout=t)
        )
        if len(reply.scores) != len(passages):
            raise RagfleetError(
                f"{self.label} returned {len(reply.scores)} scores for {len(passages)} passages"
            )
        return list(reply.scores)


def _chunk_from_proto(c: common_pb2.Chunk) -> Chunk:
    return Chunk(
        id=c.id,
        text=c.text,
        source=c.source,
        title=c.title,
        section=c.section,
        tenant=c.tenant,
        metadata=dict(c.metadata),
    )


def chunk_to_proto(c: Chunk) -> common_pb2.Chunk:
    """The proto of ``c``; an empty vector stays empty (text-only chunks, search results)."""
    return common_pb2.Chunk(
        id=c.id,
        text=c.text,
        source=c.source,
        title=c.title,
        section=c.section,
        tenant=c.tenant,
        metadata=dict(c.metadata),
        vector=list(c.vector),
    )


class RetrieverClient(_Upstream):
    service_name = "ragfleet.retriever.v1.RetrieverService"

    def __init__(self, channel: grpc.aio.Channel, address: str, attempts: int = 3) -> None:
        super().__init__(channel, address, attempts)
        self._stub = retriever_pb2_grpc.RetrieverServiceStub(channel)

    async def search(
        self,
        mode: SearchMode,
        top_k: int,
        deadline: Deadline,
        *,
        query: str = "",
        vector: Sequence[float] = (),
        tenant: str = "",
        equals: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        """One ranked list (lexical or dense); ranks in the hits are set for that list."""
        request = retriever_pb2.SearchRequest(
            query=query,
            query_vector=list(vector),
            mode=_MODES[mode],
            top_k=top_k,
            filter=common_pb2.Filter(tenant=tenant, equals=dict(equals or {})),
        )
        reply = await self._unary(
            f"the {mode.value} search", deadline, lambda t: self._stub.Search(request, timeout=t)
        )
        return [
            Hit(
                chunk=_chunk_from_proto(h.chunk),
                score=h.score,
                lexical_rank=rank if mode is SearchMode.LEXICAL else 0,
                dense_rank=rank if mode is SearchMode.DENSE else 0,
            )
            for rank, h in enumerate(reply.hits, start=1)
        ]

    async def upsert(self, chunks: Sequence[Chunk], deadline: Deadline) -> int:
        request = retriever_pb2.UpsertRequest(chunks=[chunk_to_proto(c) for c in chunks])
        reply = await self._unary(
            "upsert", deadline, lambda t: self._stub.Upsert(request, timeout=t)
        )
        return reply.upserted

    async def delete_source(self, tenant: str, source: str, deadline: Deadline) -> int:
        """Deletes every chunk of ``source`` within ``tenant``; returns how many there were."""
        request = retriever_pb2.DeleteRequest(
            filter=common_pb2.Filter(tenant=tenant), source=source
        )
        reply = await self._unary(
            "delete", deadline, lambda t: self._stub.Delete(request, timeout=t)
        )
        return reply.deleted


def generation_error(err: grpc.aio.AioRpcError, upstream: str) -> RagfleetError:
    """Like ``from_rpc_error``, but keeps RESOURCE_EXHAUSTED retryable and reports codes other
    than the retryable, deadline and client-mistake ones as a plain ``RagfleetError``, so the
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


class GeneratorClient(_Upstream):
    """Calls the generator through the Ray Serve gRPC proxy, which routes on the
    ``application`` metadata key."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str,
        application: str = "generator",
        attempts: int = 3,
    ) -> None:
        super().__init__(channel, address, attempts)
        self._stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        self._metadata = (("application", application),)

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
        call = self._stub.Generate(request, timeout=max(timeout, 0.001), metadata=self._metadata)
        try:
            async for reply in call:
                kind = reply.WhichOneof("event")
                if kind == "token":
                    yield TokenEvent(reply.token.text)
                elif kind == "done":
                    u = reply.done.usage
                    yield GenerationDone(
                        model=reply.done.model,
                        finish_reason=reply.done.finish_reason,
                        usage=Usage(
                            prompt_tokens=u.prompt_tokens,
                            completion_tokens=u.completion_tokens,
                            time_to_first_token_ms=u.time_to_first_token_ms,
                            total_ms=u.total_ms,
                            tokens_per_second=u.tokens_per_second,
                        ),
                    )
        except grpc.aio.AioRpcError as err:
            raise generation_error(err, self.label) from err
        finally:
            call.cancel()

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


@dataclass
class Upstreams:
    """The three clients and their channels; ``connect`` creates the channels (no I/O).

    ``generator`` is the default generator; ``model_generators`` maps each model of the
    fallback chain (``settings.models``) to the client of its own generator, one client per
    distinct address and application.
    """

    embedder: EmbedderClient
    retriever: RetrieverClient
    generator: GeneratorClient
    channels: list[grpc.aio.Channel]
    model_generators: dict[str, GeneratorClient] = field(default_factory=dict)

    @classmethod
    def connect(cls, settings: GatewaySettings) -> Upstreams:
        attempts = settings.upstream_retry_attempts
        channels = [
            insecure_channel(a)
            for a in (
                settings.embedder_address,
                settings.retriever_address,
                settings.generator_address,
            )
        ]
        default = GeneratorClient(
            channels[2], settings.generator_address, settings.generator_application, attempts
        )
        clients = {(settings.generator_address, settings.generator_application): default}
        model_generators: dict[str, GeneratorClient] = {}
        for link in settings.models:
            key = (
                link.address or settings.generator_address,
                link.application or settings.generator_application,
            )
            if key not in clients:
                channels.append(insecure_channel(key[0]))
                clients[key] = GeneratorClient(channels[-1], key[0], key[1], attempts)
            model_generators[link.name] = clients[key]
        return cls(
            embedder=EmbedderClient(channels[0], settings.embedder_address, attempts),
            retriever=RetrieverClient(channels[1], settings.retriever_address, attempts),
            generator=default,
            channels=channels,
            model_generators=model_generators,
        )

    async def health(self, timeout_s: float) -> dict[str, str | None]:
        """Per upstream name: None when it is SERVING, otherwise the reason."""
        names = ("embedder", "retriever", "generator")
        results = await asyncio.gather(
            self.embedder.probe(timeout_s),
            self.retriever.probe(timeout_s),
            self.generator.probe(timeout_s),
        )
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))
