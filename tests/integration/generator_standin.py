"""A stand-in GeneratorService for fault-injection tests (a test fixture, not product code).

Run as its own process so a test can SIGKILL or SIGSTOP it:
``python generator_standin.py --port P --mode ok --token-delay 0.1 --calls-file F``.
Modes: ``ok`` streams ``--tokens`` canned words then a final message; ``hang`` accepts the call
and never answers; ``unavailable`` / ``invalid`` abort every call with UNAVAILABLE /
INVALID_ARGUMENT. Every Generate call appends its model name to ``--calls-file``; a call the
client cancels (or whose deadline runs out) appends ``<unix time> <tokens sent>`` to
``--calls-file`` with the suffix ``.cancelled`` as it notices, i.e. as it stops. Prints
``READY`` once it listens. Its RPCs are traced and measured like a service's (the runtime's
telemetry interceptor), so a trace through it reaches the generator's place in the fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from ragfleet.common.v1 import common_pb2
from ragfleet.generator.v1 import generator_pb2, generator_pb2_grpc
from ragfleet.runtime.server import TelemetryInterceptor
from ragfleet.runtime.telemetry import configure_tracing, flush_traces

Context = grpc.aio.ServicerContext[Any, Any]


def canned_answer(name: str, count: int) -> list[str]:
    """The tokens ``name`` streams: ``count`` numbered words, then a citation."""
    return [f"{name}-{i} " for i in range(count)] + ["[1]."]


class StandInGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, name: str, mode: str, tokens: int, delay_s: float, calls: Path) -> None:
        self._name, self._mode, self._delay_s, self._calls = name, mode, delay_s, calls
        self._tokens = canned_answer(name, tokens)

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        with self._calls.open("a") as calls:
            calls.write(f"{request.model}\n")
        if self._mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._name} is overloaded")
        if self._mode == "invalid":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "max_tokens: must be between 1 and 8"
            )
        sent = 0
        try:
            if self._mode == "hang":
                await asyncio.sleep(3600)
            for token in self._tokens:
                await asyncio.sleep(self._delay_s)
                yield generator_pb2.GenerateResponse(token=generator_pb2.TokenDelta(text=token))
                sent += 1
        except asyncio.CancelledError:
            with self._calls.with_suffix(".cancelled").open("a") as cancelled:
                cancelled.write(f"{time.time()} {sent}\n")
            raise
        yield generator_pb2.GenerateResponse(
            done=generator_pb2.GenerationDone(
                model=request.model or self._name,
                finish_reason="stop",
                usage=common_pb2.Usage(prompt_tokens=10, completion_tokens=len(self._tokens)),
            )
        )

    async def ListModels(
        self, request: generator_pb2.ListModelsRequest, context: Context
    ) -> generator_pb2.ListModelsResponse:
        return generator_pb2.ListModelsResponse(
            models=[generator_pb2.ModelCard(name=self._name)], default_model=self._name
        )


async def serve(args: argparse.Namespace) -> None:
    configure_tracing("ragfleet-generator-standin")
    server = grpc.aio.server(interceptors=[TelemetryInterceptor()])
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(
        StandInGenerator(args.name, args.mode, args.tokens, args.token_delay, args.calls_file),
        server,
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print("READY", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        flush_traces()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="standin")
    parser.add_argument("--mode", choices=["ok", "hang", "unavailable", "invalid"], default="ok")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--calls-file", type=Path, required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
