"""What the telemetry interceptor costs one unary RPC, in process, on a toy servicer.

Three servers built the way ``create_server`` builds them, in one process on port 0, answering
an ``Embed`` without work: without the telemetry interceptor (the baseline), with it while
tracing is off (the default: metrics only, no spans), and with it while tracing is on (an SDK
tracer provider batching spans to an exporter that discards them, so the cost of the spans and
of the ``traceparent`` round trip is counted, not a collector's network). The client sends the
trace context as the fleet's clients do. Rounds alternate between the variants so a busy
machine slows them alike. Prints the median and p95 client latency per variant.

    .venv/bin/python benchmarks/telemetry_overhead.py --requests 2000 --rounds 5

Not a timed test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.runtime.server import ErrorInterceptor, TelemetryInterceptor, _Readiness
from ragfleet.runtime.telemetry import observe_rpc, outgoing_metadata

METHOD = "/ragfleet.embedder.v1.EmbedderService/Embed"


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Toy(embedder_pb2_grpc.EmbedderServiceServicer):
    async def Embed(self, request: Any, context: Any) -> embedder_pb2.EmbedResponse:
        return embedder_pb2.EmbedResponse(model="toy", dimension=1)


async def _server(telemetry: bool) -> tuple[grpc.aio.Server, int]:
    readiness = _Readiness()
    readiness.ready = True
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor(readiness)]
    if telemetry:
        interceptors.insert(0, TelemetryInterceptor())
    server = grpc.aio.server(interceptors=interceptors)
    embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(Toy(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _round(port: int, requests: int, client_spans: bool) -> list[float]:
    request = embedder_pb2.EmbedRequest(texts=["x"])
    latencies = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        await stub.Embed(request, timeout=5)
        for _ in range(requests):
            start = time.perf_counter()
            if client_spans:
                with observe_rpc(METHOD, kind=SpanKind.CLIENT):
                    await stub.Embed(request, timeout=5, metadata=outgoing_metadata())
            else:
                await stub.Embed(request, timeout=5)
            latencies.append(time.perf_counter() - start)
    return latencies


async def main(requests: int, rounds: int) -> None:
    plain, plain_port = await _server(telemetry=False)
    observed, observed_port = await _server(telemetry=True)
    results: dict[str, list[float]] = {"baseline": [], "tracing off": [], "tracing on": []}
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    for _ in range(rounds):
        results["baseline"] += await _round(plain_port, requests, client_spans=False)
        results["tracing off"] += await _round(observed_port, requests, client_spans=True)
        # The API lets a process set its provider once: on is the last variant of each round.
        trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
        results["tracing on"] += await _round(observed_port, requests, client_spans=True)
        trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    provider.shutdown()
    await plain.stop(0)
    await observed.stop(0)
    base = statistics.median(results["baseline"])
    print(f"{requests * rounds} unary RPCs per variant, in process, client latency:")
    for name, values in results.items():
        median = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[18]
        print(
            f"  {name:12} median {median * 1e6:7.0f} us  p95 {p95 * 1e6:7.0f} us  "
            f"(+{(median - base) * 1e6:5.0f} us over baseline)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
