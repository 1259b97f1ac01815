"""A running gateway as the system under evaluation (``ragfleet eval answers --gateway``): each
question is one streaming ``Ask`` over gRPC, as any client sends it; the time to the first token
is when the first token (or restart) event arrives. With an API key every call carries it as
``authorization: Bearer <key>`` metadata.

The answers depend on however that gateway is configured, which this side cannot see: the cache
key is the address (or a ``--label`` naming the configuration) and the corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from types import TracebackType
from typing import Self

import grpc

from ragfleet.clients import credential_metadata
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import insecure_channel
from ragfleet.runtime.errors import from_rpc_error
from ragfleet_tools.eval.answers import AnswerRecorder, AnswerSet, Question, Result

_INGEST_BATCH = 64


def remote_key(address: str, label: str | None, fingerprint: str) -> str:
    """What a running gateway's answers are cached under: its ``label`` (the configuration, as
    the person running it names it) or else its address, and the corpus."""
    what = {"label": label} if label else {"gateway": address}
    blob = json.dumps({**what, "corpus": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class GatewayAsker:
    """Asks the gateway at ``address``; use as an async context manager (it closes the
    channel). Failures become domain errors naming the gateway."""

    def __init__(self, address: str, api_key: str | None = None) -> None:
        self.address = address
        self._metadata = credential_metadata(api_key)
        self._channel = insecure_channel(address)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._channel.close()

    async def ingest(self, answer_set: AnswerSet, progress: Callable[[str], None]) -> None:
        """The corpus through the gateway's ``Ingest`` (each passage replaces its earlier
        copy), in batches."""
        documents = list(answer_set.corpus.values())
        for start in range(0, len(documents), _INGEST_BATCH):
            batch = documents[start : start + _INGEST_BATCH]
            request = gateway_pb2.IngestRequest(
                documents=[
                    gateway_pb2.Document(
                        source=d.source, title=d.title, text=d.text, content_type="text/plain"
                    )
                    for d in batch
                ]
            )
            try:
                await self._stub.Ingest(request, timeout=600, metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err, f"gateway {self.address}") from None
            progress(f"ingested {min(start + _INGEST_BATCH, len(documents))}/{len(documents)}")

    async def ask(self, question: Question, timeout_s: float) -> Result:
        recorder = AnswerRecorder(question)
        call = self._stub.Ask(
            gateway_pb2.AskRequest(question=question.text),
            timeout=timeout_s,
            metadata=self._metadata,
        )
        try:
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "sources":
                    recorder.sources(
                        (s.number, s.hit.chunk.source, s.hit.chunk.text, s.hit.score)
                        for s in event.sources.sources
                    )
                elif kind in ("token", "restart"):
                    recorder.token()
                elif kind == "answer":
                    answer = event.answer
                    return recorder.finish(
                        answer.text,
                        answer.answered,
                        ((c.number, c.source) for c in answer.citations),
                        answer.model,
                        (answer.usage.prompt_tokens, answer.usage.completion_tokens),
                        answer.degraded_reasons,
                        answer.cost_usd if answer.HasField("cost_usd") else None,
                    )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, f"gateway {self.address}") from None
        raise RuntimeError(f"gateway {self.address}: the answer stream ended without an answer")
