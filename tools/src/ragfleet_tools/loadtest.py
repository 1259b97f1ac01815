"""A load driver that reads ghz's JSON configuration files and prints ghz's statistics.

``loadtest/*.json`` are ghz configurations (https://ghz.sh/docs/options): ``call``
(``package.Service/Method``), ``host``, ``data`` (the request as protobuf JSON), ``metadata``,
``total`` or ``duration``, ``concurrency``, ``timeout``, ``insecure``. ``ghz --config FILE``
runs them where ghz is installed; ``ragfleet loadtest FILE`` runs the same file with this
driver, which needs nothing but the project's own generated stubs, and prints ghz's ``summary``
text or its ``json`` report (durations in nanoseconds, as ghz writes them).

Values of the form ``${NAME}`` in ``metadata`` and ``data`` strings are replaced by the
environment variable ``NAME`` (so a file can carry ``"authorization": "Bearer
${RAGFLEET_API_KEY}"`` without the key); ghz's own template functions are not interpreted. A
streaming call counts as done when its stream ends; its latency is the whole stream.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pool import Default as default_pool
from google.protobuf.message import Message

from ragfleet.embedder.v1 import embedder_pb2 as _embedder_pb2  # noqa: F401 - registers it
from ragfleet.gateway.v1 import gateway_pb2 as _gateway_pb2  # noqa: F401 - registers it
from ragfleet.generator.v1 import generator_pb2 as _generator_pb2  # noqa: F401 - registers it
from ragfleet.retriever.v1 import retriever_pb2 as _retriever_pb2  # noqa: F401 - registers it
from ragfleet.runtime.errors import InvalidInput

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_KNOWN = {
    "call",
    "host",
    "data",
    "metadata",
    "total",
    "duration",
    "concurrency",
    "timeout",
    "insecure",
    "proto",
    "import-paths",
    "name",
}
PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


def _seconds(value: Any, key: str) -> float:
    """A ghz duration (``"20s"``, ``"500ms"``) or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise InvalidInput(f"{key}: expected a duration such as 10s or 500ms, got {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise InvalidInput(f"the environment variable {name} is not set")
            return env[name]

        return _ENV.sub(lookup, value)
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class LoadConfig:
    """One ghz configuration, checked: the method exists in the project's protos and ``data``
    parses into its request message."""

    name: str
    call: str
    host: str
    request: Message
    metadata: tuple[tuple[str, str], ...]
    total: int
    duration_s: float | None
    concurrency: int
    timeout_s: float
    method: MethodDescriptor = field(repr=False)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        host: str | None = None,
        total: int | None = None,
        concurrency: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LoadConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path}: not a readable JSON file ({exc})") from None
        if not isinstance(raw, dict):
            raise InvalidInput(f"{path}: expected a JSON object")
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            raise InvalidInput(f"{path}: unknown keys {unknown}")
        values = _expand(raw, os.environ if env is None else env)
        call = str(values.get("call", ""))
        method = _method(call, path)
        request_class = message_factory.GetMessageClass(method.input_type)
        try:
            request = json_format.ParseDict(values.get("data", {}), request_class())
        except json_format.ParseError as exc:
            raise InvalidInput(
                f"{path}: data does not fit {method.input_type.name}: {exc}"
            ) from None
        metadata = values.get("metadata", {})
        if not isinstance(metadata, dict):
            raise InvalidInput(f"{path}: metadata must be an object of strings")
        duration = values.get("duration")
        count = total if total is not None else int(values.get("total", 200))
        workers = concurrency if concurrency is not None else int(values.get("concurrency", 50))
        if count < 1 or workers < 1:
            raise InvalidInput(f"{path}: total and concurrency must be at least 1")
        return cls(
            name=str(values.get("name", path.stem)),
            call=call,
            host=host or str(values.get("host", "")),
            request=request,
            metadata=tuple((str(k).lower(), str(v)) for k, v in metadata.items()),
            total=count,
            duration_s=None if duration is None else _seconds(duration, "duration"),
            concurrency=workers,
            timeout_s=_seconds(values.get("timeout", "20s"), "timeout"),
            method=method,
        )


def _method(call: str, path: Path) -> MethodDescriptor:
    service, _, name = call.rpartition("/")
    if not service or not name:
        raise InvalidInput(f"{path}: call must be package.Service/Method, got {call!r}")
    try:
        descriptor = default_pool().FindServiceByName(service)
    except KeyError:
        raise InvalidInput(f"{path}: no service {service} in the project's protos") from None
    method = descriptor.methods_by_name.get(name)
    if method is None:
        known = ", ".join(sorted(descriptor.methods_by_name))
        raise InvalidInput(f"{path}: {service} has no method {name} (it has {known})")
    return method


@dataclass
class Report:
    """What ghz reports: one latency per finished call, status codes, error messages."""

    config: LoadConfig
    started: datetime
    total_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    end_reason: str = "normal"

    @property
    def count(self) -> int:
        return sum(self.codes.values())

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return 0.0
        rank = max(0, math.ceil(share / 100 * len(ordered)) - 1)
        return ordered[rank]

    def histogram(self, buckets: int = 10) -> list[tuple[float, int]]:
        if not self.latencies_s:
            return []
        low, high = min(self.latencies_s), max(self.latencies_s)
        width = (high - low) / buckets or 1e-9
        marks = [low + width * i for i in range(1, buckets + 1)]
        counts = [0] * buckets
        for latency in self.latencies_s:
            counts[min(buckets - 1, int((latency - low) / width))] += 1
        return list(zip(marks, counts, strict=True))

    def summary(self) -> str:
        """ghz's ``summary`` text format."""
        lat = self.latencies_s
        average = sum(lat) / len(lat) if lat else 0.0
        rps = self.count / self.total_s if self.total_s else 0.0
        lines = [
            "",
            "Summary:",
            f"  Name:\t{self.config.name}",
            f"  Count:\t{self.count}",
            f"  Total:\t{_ms(self.total_s)}",
            f"  Slowest:\t{_ms(max(lat, default=0.0))}",
            f"  Fastest:\t{_ms(min(lat, default=0.0))}",
            f"  Average:\t{_ms(average)}",
            f"  Requests/sec:\t{rps:.2f}",
            "",
            "Response time histogram:",
        ]
        peak = max((c for _, c in self.histogram()), default=0)
        for mark, count in self.histogram():
            bar = "∎" * (round(40 * count / peak) if peak else 0)
            lines.append(f"  {mark * 1000:.3f} [{count}]\t|{bar}")
        lines += ["", "Latency distribution:"]
        lines += [f"  {p} % in {_ms(self.percentile(p))} " for p in PERCENTILES if lat]
        lines += ["", "Status code distribution:"]
        lines += [f"  [{code}]\t{n} responses" for code, n in self.codes.most_common()]
        if self.errors:
            lines += ["", "Error distribution:"]
            lines += [f"  [{n}]\t{error}" for error, n in self.errors.most_common()]
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        """ghz's ``json`` format (durations in nanoseconds)."""
        lat = self.latencies_s
        average = sum(lat) / len(lat) if lat else 0.0
        return {
            "name": self.config.name,
            "endReason": self.end_reason,
            "options": {
                "call": self.config.call,
                "host": self.config.host,
                "total": self.config.total,
                "concurrency": self.config.concurrency,
                "duration": _ns(self.config.duration_s or 0.0),
                "timeout": _ns(self.config.timeout_s),
            },
            "date": self.started.isoformat(),
            "count": self.count,
            "total": _ns(self.total_s),
            "average": _ns(average),
            "fastest": _ns(min(lat, default=0.0)),
            "slowest": _ns(max(lat, default=0.0)),
            "rps": self.count / self.total_s if self.total_s else 0.0,
            "histogram": [
                {"mark": mark, "count": count, "frequency": count / len(lat)}
                for mark, count in self.histogram()
            ],
            "latencyDistribution": [
                {"percentage": p, "latency": _ns(self.percentile(p))} for p in PERCENTILES
            ]
            if lat
            else None,
            "statusCodeDistribution": dict(self.codes),
            "errorDistribution": dict(self.errors),
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


async def run(config: LoadConfig) -> Report:
    """Sends ``config.total`` calls (or calls until ``duration`` runs out) from
    ``concurrency`` workers over one channel, as ghz does by default."""
    method = config.method
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    body = config.request.SerializeToString()
    report = Report(config, datetime.now(UTC))
    counter = iter(range(config.total if config.duration_s is None else 2**62))
    started = time.perf_counter()
    stop_at = None if config.duration_s is None else started + config.duration_s
    async with grpc.aio.insecure_channel(config.host) as channel:
        if method.server_streaming:
            stream = channel.unary_stream(
                path,
                request_serializer=lambda raw: raw,
                response_deserializer=response_class.FromString,
            )
        else:
            unary = channel.unary_unary(
                path,
                request_serializer=lambda raw: raw,
                response_deserializer=response_class.FromString,
            )

        async def call() -> None:
            if method.server_streaming:
                async for _message in stream(
                    body, timeout=config.timeout_s, metadata=config.metadata
                ):
                    pass
            else:
                await unary(body, timeout=config.timeout_s, metadata=config.metadata)

        async def worker() -> None:
            for _ in counter:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                begun = time.perf_counter()
                try:
                    await call()
                except grpc.aio.AioRpcError as err:
                    report.codes[err.code().name] += 1
                    report.errors[
                        f"rpc error: code = {err.code().name} desc = {err.details()}"
                    ] += 1
                else:
                    report.codes["OK"] += 1
                report.latencies_s.append(time.perf_counter() - begun)

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    report.total_s = time.perf_counter() - started
    if stop_at is not None:
        report.end_reason = "timeout"
    return report


def run_files(
    paths: Sequence[Path], *, host: str | None, total: int | None, concurrency: int | None
) -> list[Report]:
    """Loads every file first (a bad one stops the run before any load is sent), then runs
    them one after another."""
    configs = [LoadConfig.load(p, host=host, total=total, concurrency=concurrency) for p in paths]
    return [asyncio.run(run(config)) for config in configs]
