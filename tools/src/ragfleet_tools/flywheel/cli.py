"""``ragfleet flywheel export | purge | delete-tenant``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from ragfleet.flywheel.store import FeedbackStore, open_store
from ragfleet.runtime.errors import InvalidInput, RagfleetError

T = TypeVar("T")

flywheel_app = typer.Typer(
    help="Rated answers into evaluation and training data; retention and deletion of the "
    "feedback store.",
    no_args_is_help=True,
)

STORE_ENV = "RAGFLEET_GATEWAY_FEEDBACK_STORE"
StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar=STORE_ENV,
        show_envvar=True,
        help="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB (prefer the variable: "
        "a password on the command line is visible to other users); default: the local "
        "fleet's store",
    ),
]


def local_store_url() -> str:
    """The store ``ragfleet up`` gives the gateway: ``$RAGFLEET_HOME/feedback/feedback.sqlite3``."""
    from ragfleet_tools.cli.fleet import FleetSettings

    return f"sqlite:///{(FleetSettings().home / 'feedback' / 'feedback.sqlite3').resolve()}"


def parse_since(value: str) -> datetime:
    """An ISO 8601 date or date-time; one without an offset is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"--since: expected an ISO 8601 date or date-time (2026-03-01, "
            f"2026-03-01T12:00:00+02:00), got {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _with_store(url: str, work: Callable[[FeedbackStore], Awaitable[T]]) -> T:
    """Runs ``work`` on the store ``url`` names, then closes it; a store error exits 2 with
    its message (the password masked)."""

    async def run() -> T:
        store = open_store(url or local_store_url())
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except RagfleetError as err:
        typer.secho(f"{type(err).__name__}: {err.message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


@flywheel_app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="the folder to write (replaced if an earlier export)")],
    store: StoreOption = "",
    tenant: Annotated[str | None, typer.Option(help="only this tenant's answers")] = None,
    since: Annotated[
        str | None, typer.Option(help="only answers given at or after this ISO date (UTC)")
    ] = None,
    cheap_model: Annotated[
        str | None,
        typer.Option(help="the cheap model's name: labels routing examples (router.jsonl)"),
    ] = None,
    no_answer_text: Annotated[
        str | None,
        typer.Option(
            help="the gateway's no_answer_text, if not the default: a correction "
            "saying it marks the question unanswerable"
        ),
    ] = None,
) -> None:
    """Write the rated answers as one folder for `ragfleet eval answers`, `ragfleet train
    embedder --split train` and `ragfleet train router` (the rules are in its README.md)."""
    from ragfleet_tools.flywheel.export import export_store

    try:
        since_at = parse_since(since) if since else None
    except InvalidInput as err:
        typer.secho(err.message, err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    summary = _with_store(
        store,
        lambda s: export_store(
            s,
            out,
            tenant=tenant,
            since=since_at,
            cheap_model=cheap_model,
            no_answer_text=no_answer_text,
        ),
    )
    typer.echo(summary.describe())


@flywheel_app.command("purge")
def purge(
    older_than: Annotated[
        float, typer.Option(min=0, help="days: answers older than this go, with their feedback")
    ],
    store: StoreOption = "",
) -> None:
    """Retention: delete the answers older than --older-than days, with their feedback."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than)
    removed = _with_store(store, lambda s: s.purge(cutoff))
    typer.echo(
        f"removed {removed} rows (answers and their feedback) given before "
        f"{cutoff:%Y-%m-%d %H:%M} UTC"
    )


@flywheel_app.command("delete-tenant")
def delete_tenant(
    tenant: Annotated[str, typer.Option(help="the tenant whose answers and feedback go")],
    store: StoreOption = "",
) -> None:
    """Delete every answer and feedback of one tenant."""
    if not tenant:
        typer.secho("--tenant: must not be empty", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    removed = _with_store(store, lambda s: s.delete_tenant(tenant))
    typer.echo(f"removed {removed} rows (answers and feedback) of tenant {tenant}")
