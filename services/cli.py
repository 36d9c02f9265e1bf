"""The `riskalert` command line: serve, worker, migrate, demo, rescore, import, generate, model."""

from __future__ import annotations

import csv
import functools
import ipaddress
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Annotated, TextIO

import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from services.alerts import demo as alerts_demo
from services.alerts import jobs as alert_jobs
from services.app import create_app
from services.cli_model import model_app
from services.core import clock, logs, metrics
from services.core.db import (
    SchemaState,
    make_engine,
    make_sessionmaker,
    prepare_schema,
    schema_note,
    schema_revision_at,
    schema_state,
    upgrade_to_head,
)
from services.core.ratelimit import Limiter
from services.feeds import importer, poller, synth
from services.feeds.rows import FileError, spreadsheet_cell
from services.scoring import demo, jobs, scores
from services.settings import Settings

app = typer.Typer(help="riskalert: security-risk scores and alerts for sites and corridors.")
console = Console()

DEMO_DATABASE = "sqlite:///./riskalert-demo.db"


def _settings(database_url: str | None) -> Settings:
    settings = Settings()
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


DatabaseOption = Annotated[
    str | None, typer.Option("--database-url", help="Overrides RISKALERT_DATABASE_URL.")
]


def _logging(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)


@app.command()
def migrate(database_url: DatabaseOption = None) -> None:
    """Apply every pending database migration."""
    settings = _settings(database_url)
    at = schema_revision_at(settings.database_url)
    if schema_state(at) is SchemaState.AHEAD:
        # A rollback's migrate step: Alembic would stop on the revision it does not know, yet
        # there is nothing for this release to do.
        console.print(f"[yellow]nothing to apply[/yellow]: {schema_note(at)}")
        return
    upgrade_to_head(settings.database_url)
    console.print(f"[green]database at head[/green]: {settings.database_url}")


def load_demo(settings: Settings) -> int:
    """Migrate, load the demo data set and score it; return the demo tenant id."""
    upgrade_to_head(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_sessionmaker(engine)
    try:
        with factory.begin() as session:
            now = clock.utc_now()
            tenant_id = demo.load(session, now, scores.ensure_model(session, now))
            alerts_demo.load(session, tenant_id, now)
        jobs.drain(factory, settings)
    finally:
        engine.dispose()
    return tenant_id


@app.command("demo")
def demo_command(database_url: DatabaseOption = None) -> None:
    """Load the mid-2025 demo timeline, sites and corridors into the database."""
    settings = _settings(database_url or DEMO_DATABASE)
    tenant_id = load_demo(settings)
    console.print(f"demo tenant {tenant_id} loaded into {settings.database_url}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    with_demo: Annotated[
        bool, typer.Option("--demo", help="Use ./riskalert-demo.db loaded with the demo data.")
    ] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Run the API (and, unless disabled, the rescoring worker in the same process)."""
    settings = _settings(database_url or (DEMO_DATABASE if with_demo else None))
    if with_demo and settings.demo_as_of is None:
        # The timeline is long past: the dashboard's map opens at its story time, not at now.
        settings = settings.model_copy(update={"demo_as_of": demo.STORY_AS_OF})
    _logging(settings)
    if (
        with_demo
        and not ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).is_loopback
    ):
        # The demo's keys are printed in the README: never serve them beyond this machine.
        raise typer.BadParameter("--demo serves only on a loopback address", param_hint="--host")
    if settings.inline_worker:
        # The rescoring thread shares the interpreter with the request threads: hand the GIL
        # over every millisecond instead of every five, so requests are not held behind it.
        sys.setswitchinterval(0.001)
    if with_demo:
        load_demo(settings)
        console.print(
            "[bold]demo loaded[/bold]: tenant key "
            f"[cyan]{demo.DEMO_TENANT_KEY}[/cyan], ingest key [cyan]{demo.DEMO_INGEST_KEY}[/cyan]"
        )
        console.print(f"API docs: http://{host}:{port}/docs")
        console.print(
            f"Dashboard: http://{host}:{port}/dashboard/ (its map opens at the demo's story "
            f"time, {settings.demo_as_of:%Y-%m-%d %H:%M} UTC)"
        )
    run = functools.partial(
        uvicorn.run,
        host=host,
        port=port,
        # Logging is ours (services.core.logs): JSON lines with request ids.
        log_config=None,
        # Forwarded headers are believed only from RISKALERT_TRUSTED_PROXIES, by the app
        # itself: uvicorn's own default would trust any client on loopback.
        proxy_headers=False,
        # On SIGTERM, requests in flight get this long to finish before uvicorn closes them.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace.total_seconds()),
    )
    if workers > 1:
        # Each uvicorn worker builds its own app from the environment: migrate once, here, if
        # told to, and never in the workers.
        if settings.auto_migrate:
            prepare_schema(settings.database_url, migrate=True)
        os.environ["RISKALERT_DATABASE_URL"] = settings.database_url
        os.environ["RISKALERT_AUTO_MIGRATE"] = "false"
        if settings.demo_as_of is not None:
            os.environ["RISKALERT_DEMO_AS_OF"] = settings.demo_as_of.isoformat()
        # The workers' counters go to files in one directory, summed by whichever answers
        # /metrics; a fresh directory per start, so a restart does not add up old counts.
        os.environ[metrics.MULTIPROC_ENV] = tempfile.mkdtemp(prefix="riskalert-metrics-")
        # A worker busy importing at start (seconds on a loaded machine) is not dead.
        run("services.asgi:app", workers=workers, factory=True, timeout_worker_healthcheck=30)
        return
    run(create_app(settings))
    if settings.inline_worker:
        _exit_now()


# A worker loop that has not turned for this long is stuck: the metrics port's /healthz answers
# 503 and Kubernetes restarts the pod. Far above a loop's pass (its poll interval, one batch,
# its back-off of at most 2 s while the database is away), which a database outage never stops.
STALLED_AFTER = 120.0


@app.command()
def worker(
    database_url: DatabaseOption = None,
    role: Annotated[
        str, typer.Option(help="What to run: all, scoring (rescoring, feed polling) or alerts.")
    ] = "all",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve this process's Prometheus metrics (GET /metrics, with "
            "RISKALERT_METRICS_TOKEN if set) and its liveness (GET /healthz) on this port.",
            min=1,
            max=65535,
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run the background work (rescoring, alert pipeline and delivery, ticks) until SIGTERM.

    SIGTERM stops claiming new work; requests in flight finish and are recorded first.
    """
    if role not in ("all", "scoring", "alerts"):
        raise typer.BadParameter("use all, scoring or alerts", param_hint="--role")
    settings = _settings(database_url)
    _logging(settings)
    # Several threads share the interpreter (rescoring, the alert consumers, the dispatcher and
    # its senders): hand the GIL over every millisecond so short transactions are not held up.
    sys.setswitchinterval(0.001)
    prepare_schema(settings.database_url, migrate=settings.auto_migrate)
    engine = make_engine(
        settings.database_url,
        busy_timeout_ms=int(settings.sqlite_busy_timeout.total_seconds() * 1000),
        pool_size=settings.db_pool_size,
    )
    factory = make_sessionmaker(engine)
    loops: list[jobs.RescoreWorker | alert_jobs.AlertsWorker] = []
    port = None
    if metrics_port is not None:
        # Bound now, so a port in use fails the start; it answers once the loops run.
        port = metrics.MetricsServer(
            metrics_host,
            metrics_port,
            token=settings.metrics_token,
            limiter=Limiter(settings.rate_limit_unauthenticated, "requests without a valid key"),
            stalled=lambda: [name for loop in loops for name in loop.stalled(STALLED_AFTER)],
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    rescorer = scheduler = alerts = alert_ticks = None
    if role in ("all", "scoring"):
        rescorer = jobs.RescoreWorker(factory, settings)
        scheduler = jobs.make_scheduler(factory, settings)
        # Configured feeds are polled here (one process at a time per feed: a lease).
        poller.add_jobs(scheduler, factory, settings, clock.utc_now)
        rescorer.start()
        rescorer.wake()
        scheduler.start()
        loops.append(rescorer)
    if role in ("all", "alerts"):
        alerts = alert_jobs.AlertsWorker(factory, settings)
        alert_ticks = alert_jobs.make_scheduler(factory, settings)
        alerts.start()
        alert_ticks.start()
        loops.append(alerts)
    if port is not None:
        port.start()
    console.print(f"worker running ({role}); SIGTERM stops it after the work in hand")
    stop.wait()
    for ticks in (scheduler, alert_ticks):
        if ticks is not None:
            ticks.shutdown(wait=True)
    if alerts is not None:
        alerts.stop()
        console.print(f"alerts worker {alerts.name} stopped after {alerts.delivered} attempts")
    if rescorer is not None:
        rescorer.stop()
    engine.dispose()
    _exit_now()


def _exit_now() -> None:
    """Exit now: a request still hanging past the shutdown grace is left to its lease.

    The interpreter would otherwise join the sender threads at exit, i.e. wait out the attempt.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
def rescore(database_url: DatabaseOption = None) -> None:
    """Queue every target and rescore them all now."""
    settings = _settings(database_url)
    engine = make_engine(settings.database_url)
    factory = make_sessionmaker(engine)
    jobs.queue_decay(factory)
    count = jobs.drain(factory, settings)
    engine.dispose()
    console.print(f"rescored {count} targets")


app.add_typer(model_app, name="model")

import_app = typer.Typer(help="Import incident files: ACLED, UCDP GED, ACLED deletions.")
app.add_typer(import_app, name="import")

FileArgument = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV, or the API's JSON."),
]
ReportOption = Annotated[
    Path | None,
    typer.Option("--report", help="Write every rejected row (line, id, reason) to this CSV."),
]


class _Counted:
    """A text file read by an import, counting what was read (for the progress bar)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.done = 0

    def read(self, size: int = -1, /) -> str:
        chunk = self._stream.read(size)
        self.done += len(chunk)
        return chunk

    def __iter__(self) -> Iterator[str]:
        for line in self._stream:
            self.done += len(line)
            yield line


def _import(
    fmt: importer.Format, path: Path, database_url: str | None, report: Path | None
) -> None:
    settings = _settings(database_url)
    # As every process: migrates only when told to (RISKALERT_AUTO_MIGRATE).
    at = prepare_schema(settings.database_url, migrate=settings.auto_migrate)
    if at is SchemaState.BEHIND:
        typer.echo(
            f"error: {schema_note(schema_revision_at(settings.database_url))}; nothing was "
            "imported",
            err=True,
        )
        raise typer.Exit(1)
    engine = make_engine(settings.database_url)
    factory = make_sessionmaker(engine)
    size = max(path.stat().st_size, 1)
    summary = importer.Summary()
    unreadable: FileError | None = None
    try:
        with (
            path.open(encoding="utf-8-sig", newline="") as stream,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rows]} rows"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as bar,
        ):
            task = bar.add_task(f"{fmt} {path.name}", total=size, rows=0)
            handle = _Counted(stream)
            rows = 0

            def advance(count: int) -> None:
                nonlocal rows
                rows += count
                bar.update(task, completed=min(handle.done, size), rows=rows)

            importer.run_file(
                factory,
                fmt,
                handle,
                origin=str(path),
                clock=clock.utc_now,
                skew=settings.clock_skew,
                progress=advance,
                summary=summary,
            )
            bar.update(task, completed=size)
    except FileError as exc:
        unreadable = exc  # refused before anything was written
    except Exception as exc:
        # Recorded with the run (when one started): one line here, not a stack trace.
        summary.error = summary.error or importer.describe(exc)
    finally:
        engine.dispose()
    if summary.run_id:
        _print_summary(summary)
    if report is not None:
        _write_report(report, summary, unreadable)
    if unreadable is not None:
        typer.echo(f"error: {path}: {unreadable}; nothing was imported", err=True)
        raise typer.Exit(1)
    if summary.error is not None:
        typer.echo(
            f"error: {path}: the import stopped after {summary.read} rows (import run "
            f"{summary.run_id}): {summary.error}"
            if summary.run_id
            else f"error: {path}: {summary.error}; nothing was imported",
            err=True,
        )
        raise typer.Exit(1)


def _write_report(report: Path, summary: importer.Summary, unreadable: FileError | None) -> None:
    """The rejected rows as CSV (and why the file or the import stopped), safe to open in a
    spreadsheet."""
    rows: list[tuple[object, object, str]] = [
        (r["line"], r["source_id"], r["reason"]) for r in summary.rejections
    ]
    if unreadable is not None:
        rows.append((unreadable.line, None, f"file not imported: {unreadable.reason}"))
    if summary.error is not None:
        rows.append((None, None, f"the import stopped here: {summary.error}"))
    with report.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["line", "source_id", "reason"])
        for row in rows:
            writer.writerow([spreadsheet_cell(cell) for cell in row])
    console.print(f"rejected rows written to {report}")


def _print_summary(summary: importer.Summary) -> None:
    table = Table(title="Import summary")
    for name in ("read", "inserted", "updated", "unchanged", "merged", "retracted", "rejected",
                 "warned"):  # fmt: skip
        table.add_column(name, justify="right")
    table.add_row(
        *(str(getattr(summary, n)) for n in ("read", "inserted", "updated", "unchanged",
                                             "merged", "retracted", "rejected", "warned"))
    )  # fmt: skip
    console.print(table)
    for title, entries, key in (
        ("Rejected rows", summary.rejections, "reason"),
        ("Kept, with warnings", summary.warnings, "warning"),
    ):
        if not entries:
            continue
        listing = Table(title=title)
        listing.add_column("line", justify="right")
        listing.add_column("source id")
        listing.add_column(key)
        for entry in entries[:50]:
            listing.add_row(str(entry["line"]), str(entry["source_id"] or ""), entry[key])
        console.print(listing)
        hidden = (summary.rejected if key == "reason" else summary.warned) - min(len(entries), 50)
        if hidden > 0:
            console.print(f"... and {hidden} more")


@import_app.command("acled")
def import_acled(
    file: FileArgument, database_url: DatabaseOption = None, report: ReportOption = None
) -> None:
    """Import ACLED events: a CSV export (HXL row and long dates read), or API JSON pages."""
    _import("acled", file, database_url, report)


@import_app.command("acled-deleted")
def import_acled_deleted(
    file: FileArgument, database_url: DatabaseOption = None, report: ReportOption = None
) -> None:
    """Retract ACLED events listed as deleted (event_id_cnty, deleted_timestamp)."""
    _import("acled-deleted", file, database_url, report)


@import_app.command("ucdp")
def import_ucdp(
    file: FileArgument, database_url: DatabaseOption = None, report: ReportOption = None
) -> None:
    """Import UCDP GED events: an annual or candidate CSV, or API JSON pages."""
    _import("ucdp", file, database_url, report)


@app.command()
def generate(
    acled_file: Annotated[Path, typer.Argument(help="Where to write the ACLED CSV.")],
    ucdp_file: Annotated[
        Path | None, typer.Option("--ucdp", help="Also write UCDP GED rows of the same events.")
    ] = None,
    rows: Annotated[int, typer.Option(min=1, max=10_000_000, help="ACLED rows.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 1,
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")] = "2016-01-01",
    end: Annotated[str, typer.Option(help="Day after the last (YYYY-MM-DD).")] = "2026-01-01",
    hxl: Annotated[bool, typer.Option(help="Add the HXL tag row of the data portals.")] = False,
) -> None:
    """Write a synthetic, seeded incident stream in ACLED (and UCDP) format, for trials."""
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError as exc:
        raise typer.BadParameter(f"dates are YYYY-MM-DD: {exc}") from None
    if last <= first:
        raise typer.BadParameter("--end must be after --start")
    events = synth.generate(seed, rows, first, last)
    with acled_file.open("w", newline="", encoding="utf-8") as out:
        synth.write_acled_csv(events, out, hxl=hxl)
    console.print(f"{len(events)} ACLED rows written to {acled_file}")
    if ucdp_file is not None:
        lethal = synth.ucdp_events(events, seed)
        with ucdp_file.open("w", newline="", encoding="utf-8") as out:
            synth.write_ucdp_csv(lethal, out)
        console.print(f"{len(lethal)} UCDP rows written to {ucdp_file}")


@app.command()
def check(
    database_url: DatabaseOption = None,
    wait: Annotated[
        float,
        typer.Option(
            help="Look again every 2 s for up to this many seconds before giving up (an init "
            "container waiting for this release's `riskalert migrate`).",
            min=0,
        ),
    ] = 0,
) -> None:
    """Exit 0 when the database answers at this release's schema (or a later release's), 1
    otherwise (after --wait seconds): a probe, or an init container's wait for the migration."""
    settings = _settings(database_url)

    def look() -> tuple[bool, str]:
        try:
            at = schema_revision_at(settings.database_url)
        except SQLAlchemyError as exc:
            return False, f"database unavailable: {type(exc).__name__}"
        return schema_state(at) is not SchemaState.BEHIND, schema_note(at)

    deadline = time.monotonic() + wait
    ready, note = look()
    if not ready and wait > 0:
        console.print(f"waiting up to {wait:g} s: {note}")
    while not ready and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(2.0, left))
        ready, note = look()
    if not ready:
        console.print(f"[red]{note}[/red]")
        raise typer.Exit(1)
    console.print(f"database answers: {note}")
