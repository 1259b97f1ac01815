"""Embedder throughput with dynamic batching against one text per model call.

Starts the real embedder (all-MiniLM-L6-v2, CPU) on port 0 twice: once with the configured
batching, once with ``batch_size=1`` (every request its own model call). Each time, ``--clients``
concurrent gRPC clients send ``--requests`` single-text query embeddings each. Prints texts/s and
latency percentiles; not a timed test.

    .venv/bin/python benchmarks/embedder_batching.py --clients 16 --requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from ragfleet.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from ragfleet.runtime.channels import insecure_channel
from ragfleet.runtime.logging import configure_logging
from ragfleet_embedder.core import Embedder
from ragfleet_embedder.model import EmbeddingModel, SentenceTransformerEmbedder
from ragfleet_embedder.server import build_server
from ragfleet_embedder.settings import EmbedderSettings

QUESTIONS = [
    "how does the service drain in-flight requests on shutdown",
    "which port does the embedder listen on by default",
    "what happens when the generator model times out",
    "how are dense and lexical results fused into one ranking",
    "where are the limits on texts per request documented",
    "why does the health check report not serving during start-up",
]


def query(client: int, request: int) -> str:
    return f"{QUESTIONS[(client + request) % len(QUESTIONS)]} (client {client}, try {request})"


async def run(
    settings: EmbedderSettings, model: EmbeddingModel, clients: int, requests: int
) -> None:
    embedder = Embedder(settings, lambda: model)
    service = build_server(settings, embedder)
    await service.start()
    await embedder.load()
    await service.mark_ready()
    latencies: list[float] = []
    async with insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)

        async def client(index: int) -> None:
            for request in range(requests):
                began = time.perf_counter()
                await stub.Embed(
                    embedder_pb2.EmbedRequest(
                        texts=[query(index, request)], input_type=embedder_pb2.INPUT_TYPE_QUERY
                    ),
                    timeout=60,
                )
                latencies.append(time.perf_counter() - began)

        await client(0)  # warm the channel
        latencies.clear()
        began = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - began
    await service.stop(0)
    await embedder.close()
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"batch_size={settings.batch_size:>3} max_wait_ms={settings.max_batch_wait_ms:>4}: "
        f"{len(ms) / elapsed:7.1f} texts/s, p50 {statistics.median(ms):6.1f} ms, "
        f"p99 {ms[int(len(ms) * 0.99) - 1]:6.1f} ms ({clients} clients x {requests} requests)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    base = EmbedderSettings(port=0, grace_period_s=0)
    model = await asyncio.to_thread(
        SentenceTransformerEmbedder.load,
        path=base.model_path,
        name=base.model_name,
        device=base.device,
        batch_size=args.batch_size,
    )
    batched = base.model_copy(
        update={"batch_size": args.batch_size, "max_batch_wait_ms": args.max_wait_ms}
    )
    single = base.model_copy(update={"batch_size": 1, "max_batch_wait_ms": 0.0})
    for settings in (single, batched):
        await run(settings, model, args.clients, args.requests)


if __name__ == "__main__":
    asyncio.run(main())
