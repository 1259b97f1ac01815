"""``ragfleet up | down | status | ingest | ask | keys | loadtest``."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import grpc
import typer

from ragfleet.clients import RetrieverClient, gateway_channel
from ragfleet.common.v1 import common_pb2
from ragfleet.domain import SearchMode, search_mode_to_proto
from ragfleet.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ragfleet.runtime.channels import Deadline, insecure_channel
from ragfleet.runtime.errors import RagfleetError
from ragfleet_tools.cli import ingestion
from ragfleet_tools.cli.fleet import (
    MAX_REPLICAS,
    REPLICA_PORT_STEP,
    Fleet,
    FleetSettings,
    ServiceExited,
    health_status,
    wait_serving,
)
from ragfleet_tools.eval.cli import eval_app
from ragfleet_tools.flywheel.cli import flywheel_app
from ragfleet_tools.training.cli import train_app

if TYPE_CHECKING:
    from ragfleet.ingest import IngestSummary

app = typer.Typer(
    help="ragfleet: retrieval-augmented generation as gRPC microservices.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(flywheel_app, name="flywheel")
keys_app = typer.Typer(help="API keys of the gateway.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _rpc_error(err: grpc.aio.AioRpcError) -> typer.Exit:
    return _fail(f"{err.code().name}: {err.details()}", code=2)


class _StartupFailed(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@app.command()
def up(
    corpus: Annotated[Path, typer.Option(help="ingested when the index is empty")] = Path("docs"),
    ingest_corpus: Annotated[bool, typer.Option("--ingest/--no-ingest")] = True,
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_REPLICAS,
            help="processes of the embedder and of the gateway, and Ray Serve replicas of the "
            f"model (default: RAGFLEET_REPLICAS, else 1); replica i listens on the port + "
            f"{REPLICA_PORT_STEP}*i. The retriever stays one process: its embedded index is "
            "single-writer (scale it on OpenSearch)",
        ),
    ] = None,
) -> None:
    """Start local Ray and the four services, wait until all are SERVING, ingest the corpus
    when the index is empty, and print the addresses. When a step fails, everything this run
    started is stopped again and the step, its log and the fix are printed.

    With --replicas N the embedder and the gateway run N processes each and the generator's
    model N Serve replicas; clients balance over the replicas and retry idempotent calls on
    another one (docs/operations.md, "High availability"). The retriever is always one
    process: two processes must never open the same embedded index."""
    settings = FleetSettings()
    fleet = Fleet(settings)
    running = any(fleet.running_pid(n) is not None for n in ("ray", "retriever"))
    # A running fleet keeps its replica count unless --replicas asks for another one.
    fleet = Fleet(settings, replicas or (None if running else settings.replicas))
    recorded = fleet.recorded_replicas()
    if running and recorded is not None and recorded != fleet.replicas:
        raise _fail(
            f"the running fleet has {recorded} replicas, not {fleet.replicas}: "
            "run `ragfleet down` first",
            code=2,
        )
    if conflicts := fleet.port_conflicts():
        raise _fail(
            "ports collide: " + "; ".join(conflicts) + " (set RAGFLEET_<SERVICE>_PORT)", code=2
        )
    begun = time.monotonic()
    started: list[str] = []
    step = ""

    def start(name: str, launch: Callable[[], object]) -> None:
        if fleet.running_pid(name) is None:
            started.append(name)
        launch()

    try:
        step = "creating the fleet's credentials"
        new_key = fleet.ensure_credentials()
        fleet.record_replicas()
        step = "starting Ray"
        typer.echo(
            f"starting Ray on {settings.ray_address} and the services (logs: {fleet.log_dir})"
        )
        start("ray", fleet.start_ray)
        for service in fleet.services():
            argv = [sys.executable, "-m", service.module]
            start(service.name, partial(fleet.spawn, service.name, argv, service.env))
        step = "deploying the generator on Ray Serve"
        processes = ["ray", *(service.name for service in fleet.services())]
        generator = settings.address(settings.generator_port)
        try:
            if "ray" in started or asyncio.run(health_status(generator)) != "SERVING":
                typer.echo("deploying the generator on Ray Serve (loads the model)...")
                fleet.deploy_generator(settings.startup_timeout_s, watch=processes)
        except ServiceExited as err:
            raise _StartupFailed(
                str(err), f"fix what {err.name}'s log says (a setting, a taken port), then retry"
            ) from err
        except (RuntimeError, TimeoutError) as err:
            raise _StartupFailed(
                str(err), f"see {fleet.log_dir / 'generator.log'} and {fleet.log_dir / 'ray.log'}"
            ) from err
        step = "waiting for every service to be SERVING"
        try:
            statuses = asyncio.run(
                wait_serving(
                    fleet.health_targets(),
                    settings.startup_timeout_s,
                    partial(fleet.check_alive, processes),
                )
            )
        except ServiceExited as err:
            raise _StartupFailed(
                str(err), f"fix what {err.name}'s log says (a setting, a taken port), then retry"
            ) from err
        not_ready = [name for name, status in statuses.items() if status != "SERVING"]
        if not_ready:
            tails = "\n".join(
                f"--- {name}: {statuses[name]}; last lines of {fleet.log_dir / (name + '.log')}:"
                f"\n{fleet.log_tail(name, lines=10)}"
                for name in not_ready
            )
            raise _StartupFailed(
                f"not SERVING after {settings.startup_timeout_s:.0f} s: {', '.join(not_ready)}\n"
                + tails,
                "a port may be taken (set RAGFLEET_<SERVICE>_PORT) or a model failed to load",
            )
        typer.echo(f"all services SERVING after {time.monotonic() - begun:.1f}s")
        if ingest_corpus and asyncio.run(_index_is_empty(settings)):
            step = f"ingesting {corpus}"
            if not corpus.exists():
                raise _StartupFailed(
                    f"the index is empty and the corpus {corpus} does not exist",
                    "pass --corpus DIR, or --no-ingest to start with an empty index",
                )
            typer.echo(f"ingesting {corpus} into the empty index...")
            summary = _run_ingest(settings, ingestion.IngestOptions(str(corpus), progress=False))
            typer.echo(summary.describe())
            if not summary.ok:
                raise _StartupFailed(
                    f"{summary.failed} documents of {corpus} failed to ingest",
                    f"see {fleet.log_dir}",
                )
    except (_StartupFailed, typer.Exit, KeyboardInterrupt) as err:
        typer.secho(f"ragfleet up failed while {step}", err=True, fg=typer.colors.RED)
        if isinstance(err, _StartupFailed):
            typer.secho(f"{err}\nfix: {err.hint}", err=True, fg=typer.colors.RED)
        if stopped := fleet.stop(started):
            typer.secho(f"stopped what this run started: {', '.join(stopped)}", err=True)
        if "ray" in started:
            fleet.forget_replicas()  # this run began the fleet, and nothing of it runs now
        raise typer.Exit(1) from None
    for name, address in fleet.health_targets().items():
        typer.echo(f"{name:<10} grpc://{address}")
    for port in fleet.replica_ports(settings.gateway_rest_port):
        typer.echo(f"{'rest':<10} http://{settings.host}:{port}/docs")
    typer.echo(f"{'logs':<10} {fleet.log_dir}")
    if new_key is not None:
        typer.echo(
            f"{'api key':<10} {new_key}\n{'':<10} (tenant {settings.tenant}, roles query and "
            f"ingest; shown once, kept for the CLI in {fleet.cli_key_path})"
        )
    else:
        typer.echo(f"{'api key':<10} in {fleet.cli_key_path} (the CLI uses it)")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts in")],
    role: Annotated[list[str], typer.Option(help="query, ingest or admin; repeat for several")],
    keys_file: Annotated[
        Path | None, typer.Option(help="default: the local fleet's ($RAGFLEET_HOME/auth)")
    ] = None,
    label: Annotated[str, typer.Option(help="a note for people reading the file")] = "",
) -> None:
    """Make an API key: prints it once and adds only its SHA-256 to the keys file, which the
    gateway re-reads (no restart). Revoke a key by deleting its entry from the file."""
    from ragfleet_gateway.auth import Role, add_key
    from ragfleet_gateway.auth import new_key as make_key

    try:
        roles = frozenset(Role(r) for r in role)
        key, entry = make_key(tenant, roles, label)
    except ValueError as err:
        raise _fail(str(err), code=2) from None
    path = keys_file or Fleet(FleetSettings()).keys_file
    add_key(path, entry)
    typer.echo(key)
    typer.secho(
        f"key {entry.id} of tenant {tenant} ({', '.join(sorted(roles))}) added to {path}; "
        "the key is not stored anywhere: keep it now",
        err=True,
    )


@app.command()
def down() -> None:
    """Stop the services, every replica of them, and local Ray (SIGTERM, then SIGKILL after a
    grace period)."""
    fleet = Fleet(FleetSettings())
    # The gateways first, so the calls they drain can still reach the services behind them.
    gateways = fleet.stop(fleet.process_names("gateway"))
    backends = fleet.stop([*fleet.process_names("embedder"), "retriever", "ray"])
    fleet.forget_replicas()
    for name in [*gateways, *backends]:
        typer.echo(f"stopped {name}")


@app.command()
def loadtest(
    files: Annotated[
        list[Path], typer.Argument(help="ghz configuration files, e.g. loadtest/*.json")
    ],
    host: Annotated[str | None, typer.Option(help="host:port instead of the files' host")] = None,
    total: Annotated[int | None, typer.Option(help="calls per file instead of its total")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="concurrent workers instead of the files' concurrency")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="summary (ghz's text) or json (ghz's JSON)")
    ] = "summary",
) -> None:
    """Load a service as ghz would, from ghz's own configuration files; prints ghz's report.
    ${NAME} in metadata and data is read from the environment (e.g. RAGFLEET_API_KEY)."""
    import json

    from ragfleet_tools.loadtest import run_files

    if output_format not in ("summary", "json"):
        raise _fail(f"--format: expected summary or json, got {output_format!r}", code=2)
    try:
        reports = run_files(files, host=host, total=total, concurrency=concurrency)
    except RagfleetError as exc:
        raise _fail(str(exc), code=2) from None
    for report in reports:
        if output_format == "json":
            typer.echo(json.dumps(report.as_json()))
        else:
            typer.echo(report.summary())
    if any(code != "OK" for report in reports for code in report.codes):
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """Health of each service and each replica of it (grpc.health.v1)."""
    fleet = Fleet(FleetSettings())

    async def check() -> dict[str, str]:
        targets = fleet.health_targets()
        results = await asyncio.gather(*(health_status(a) for a in targets.values()))
        return dict(zip(targets, results, strict=True))

    statuses = asyncio.run(check())
    for name, address in fleet.health_targets().items():
        typer.echo(f"{name:<10} {address:<22} {statuses[name]}")
    typer.echo(f"logs: {fleet.log_dir}")
    if any(s != "SERVING" for s in statuses.values()):
        raise typer.Exit(1)


@app.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="a directory (Markdown, text, HTML, PDF), a file, a JSONL or BEIR corpus.jsonl, "
            "a *.urls file listing URLs, a URL, or a sitemap URL (*.xml)"
        ),
    ],
    sync: Annotated[
        bool, typer.Option("--sync", help="delete documents that vanished from the source")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    tenant: Annotated[str, typer.Option(help="empty: RAGFLEET_TENANT (default: default)")] = "",
    ray_address: Annotated[
        str, typer.Option(help="Ray cluster address; default: the fleet's Ray, else local")
    ] = "",
    kind: Annotated[
        str, typer.Option(help="auto, directory, file, jsonl, urls or sitemap")
    ] = "auto",
    embedding: Annotated[
        str, typer.Option(help="service (the embedder) or local (model in Ray actors)")
    ] = "service",
    workers: Annotated[int, typer.Option(min=1, help="embedding actors")] = 1,
    worker_cpus: Annotated[
        float, typer.Option(min=0, help="CPUs per embedding actor; 0 shares the free CPUs")
    ] = 0.0,
    manifest: Annotated[
        Path | None, typer.Option(help="default: $RAGFLEET_HOME/ingest/manifest.sqlite")
    ] = None,
    max_document_mb: Annotated[
        float, typer.Option(min=0.001, help="larger documents are reported and skipped")
    ] = 16.0,
) -> None:
    """Load, parse, chunk, embed and index SOURCE on Ray Data. Re-running is a no-op for
    unchanged documents; changed ones replace their chunks. Exits 1 when any document failed."""
    options = ingestion.IngestOptions(
        source=source,
        tenant=tenant,
        sync=sync,
        kind=kind,
        embedding=embedding,
        workers=workers,
        worker_cpus=worker_cpus,
        ray_address=ray_address,
        manifest=manifest,
        max_document_mb=max_document_mb,
        progress=not as_json,
    )
    summary = _run_ingest(FleetSettings(), options)
    typer.echo(summary.to_json() if as_json else summary.describe())
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def ask(
    question: str,
    top_k: Annotated[int | None, typer.Option(help="passages given to the model")] = None,
    mode: Annotated[str, typer.Option(help="hybrid, lexical or dense")] = "hybrid",
    tenant: Annotated[str, typer.Option(help="empty: the API key's tenant")] = "",
    max_tokens: Annotated[int | None, typer.Option(help="unset: the server default")] = None,
    timeout: Annotated[float, typer.Option(help="seconds")] = 120.0,
) -> None:
    """Ask a question: streams the answer, then prints its citations."""
    if mode not in set(SearchMode):
        raise _fail(f"--mode must be one of {', '.join(SearchMode)}", code=2)
    request = gateway_pb2.AskRequest(
        question=question,
        retrieval=gateway_pb2.RetrievalOptions(
            top_k=top_k,
            mode=search_mode_to_proto(SearchMode(mode)),
            filter=common_pb2.Filter(tenant=tenant),
        ),
        max_tokens=max_tokens,
    )
    asyncio.run(_ask(FleetSettings(), request, timeout))


@app.command()
def feedback(
    answer_id: str,
    rating: Annotated[
        int, typer.Option(help="1 (wrong or useless) to 5 (right and well supported)")
    ],
    comment: Annotated[str, typer.Option(help="what was wrong or right")] = "",
    correction: Annotated[
        str, typer.Option(help="the right answer: the reference answer of exported evaluation sets")
    ] = "",
) -> None:
    """Rate an answer by the id `ragfleet ask` printed."""
    request = gateway_pb2.FeedbackRequest(
        answer_id=answer_id, rating=rating, comment=comment, correction=correction
    )
    feedback_id = asyncio.run(_feedback(FleetSettings(), request))
    typer.echo(f"recorded feedback {feedback_id}")


async def _feedback(settings: FleetSettings, request: gateway_pb2.FeedbackRequest) -> str:
    fleet = Fleet(settings)
    # Not retried: a second Feedback would record the rating twice.
    async with insecure_channel(fleet.gateway_addresses, fleet.api_key()) as channel:
        try:
            reply = await gateway_pb2_grpc.GatewayServiceStub(channel).Feedback(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            raise _rpc_error(err) from err
    return reply.feedback_id


async def _index_is_empty(settings: FleetSettings) -> bool:
    client = RetrieverClient.connect(
        settings.address(settings.retriever_port),
        credential=Fleet(settings).service_credential(),
    )
    try:
        stats = await client.stats(Deadline.after(10))
    finally:
        await client.close()
    return stats.chunks == 0


def _run_ingest(settings: FleetSettings, options: ingestion.IngestOptions) -> IngestSummary:
    try:
        return ingestion.run(settings, options)
    except RagfleetError as err:
        raise _fail(f"{err.grpc_code.name}: {err.message}", code=2) from err


async def _ask(settings: FleetSettings, request: gateway_pb2.AskRequest, timeout_s: float) -> None:
    fleet = Fleet(settings)
    async with gateway_channel(fleet.gateway_addresses, fleet.api_key()) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            streamed = False
            async for event in stub.Ask(request, timeout=timeout_s):
                kind = event.WhichOneof("event")
                if kind == "token":
                    streamed = True
                    typer.echo(event.token, nl=False)
                elif kind == "restart":
                    # The text so far is discarded: another model answers from the start.
                    typer.secho(
                        f"\n({event.restart.reason}; answering again)\n", fg=typer.colors.YELLOW
                    )
                elif kind == "answer":
                    _print_answer(event.answer, streamed)
        except grpc.aio.AioRpcError as err:
            raise _rpc_error(err) from err


def _print_answer(answer: gateway_pb2.Answer, streamed: bool) -> None:
    if not streamed:
        typer.echo(answer.text, nl=False)
    if answer.degraded:
        typer.secho(f"\n\n(degraded: {'; '.join(answer.degraded_reasons)})", fg=typer.colors.YELLOW)
    typer.echo("\n")
    if answer.citations:
        typer.echo("Citations:")
        for c in answer.citations:
            where = f" > {c.section}" if c.section else ""
            typer.echo(f"  [{c.number}] {c.source}{where}  (chunk {c.chunk_id})")
    else:
        typer.echo("Citations: none")
    timings = ", ".join(f"{t.stage} {t.ms:.0f} ms" for t in answer.timings)
    typer.echo(
        f"model {answer.model}; {answer.usage.completion_tokens} tokens; "
        f"first token {answer.usage.time_to_first_token_ms:.0f} ms; "
        f"{answer.usage.tokens_per_second:.1f} tok/s; {timings}"
    )
    if answer.route.policy not in ("", "none"):
        typer.echo(
            f"route: {answer.route.policy} chose {answer.route.model} ({answer.route.reason})"
        )
    if answer.answer_id:
        typer.echo(
            f"answer id {answer.answer_id} (rate it: ragfleet feedback {answer.answer_id} "
            "--rating 1..5)"
        )
