"""`riskalert model fit`: fit the model on the incident history, report, publish if better."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.core.auth import Principal, Role
from services.core.db import make_engine, make_sessionmaker
from services.scoring import history, modelfit, risk
from services.settings import Settings

model_app = typer.Typer(help="The risk model: fit it on the incident history.")
console = Console()
CLI = Principal(key_id=None, tenant_id=None, roles=frozenset({Role.ADMIN}))


@model_app.command("fit")
def fit_command(
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Overrides RISKALERT_DATABASE_URL.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the report; publish nothing.")] = False,
    force: Annotated[
        bool, typer.Option(help="Publish even if it does not beat the version in force.")
    ] = False,
    origins: Annotated[int, typer.Option(min=4, max=400, help="Forecast origins.")] = 40,
    folds: Annotated[int, typer.Option(min=1, max=12, help="Validation splits.")] = 4,
    places: Annotated[int, typer.Option(min=50, max=20_000, help="Places sampled.")] = 2000,
    generated: Annotated[
        int | None,
        typer.Option(
            help="Fit on a generated history of this seed (services/feeds/synth.py) instead of"
            " the database; implies --dry-run unless --write-defaults."
        ),
    ] = None,
    rows: Annotated[int, typer.Option(min=100, help="Generated rows.")] = 30_000,
    start: Annotated[str, typer.Option(help="Generated history: first day.")] = "2015-01-01",
    end: Annotated[str, typer.Option(help="Generated history: day after the last.")] = "2025-01-01",
    write_defaults: Annotated[
        bool,
        typer.Option(help="Write the result as the shipped defaults (default_model.json)."),
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the report as JSON here.")
    ] = None,
) -> None:
    """Fit the model's free parameters on rolling-origin splits; print the fit report; publish
    the result when it beats the version in force (docs/scoring.md)."""
    request = modelfit.Request(
        dry_run=dry_run or generated is not None,
        force=force,
        origins=origins,
        folds=folds,
        max_places=places,
    )
    now = datetime.now(UTC)
    if generated is not None:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
        data = modelfit.Inputs(history.generated(generated, rows, first, last), [], None)
        source = f"generated history (seed {generated}, {rows} rows, {start} to {end})"
    else:
        settings = Settings()
        if database_url:
            settings = settings.model_copy(update={"database_url": database_url})
        engine = make_engine(settings.database_url)
        factory = make_sessionmaker(engine)
        with factory() as session:
            data = modelfit.inputs(session)
        source = f"{len(data.incidents)} incidents in {settings.database_url}"
    console.print(f"fitting on {source} ...")
    try:
        result = modelfit.compute(data, request, now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    print_report(result.report)
    if report is not None:
        report.write_text(json.dumps(result.report, indent=1), encoding="utf-8")
    if write_defaults:
        document: dict[str, Any] = {
            "source": source,
            "params": result.params.to_dict(),
            "report": result.report,
        }
        risk.params.DEFAULTS_FILE.write_text(json.dumps(document, indent=1) + "\n", "utf-8")
        console.print(f"defaults written to {risk.params.DEFAULTS_FILE}")
        return
    if generated is not None:
        return
    with factory.begin() as session:
        outcome = modelfit.publish(session, result, data, request, CLI, now)
    engine.dispose()
    console.print(outcome.outcome)
    for service, moved in outcome.carried_over.items():
        console.print(f"{service}: {len(moved)} stored thresholds carried over by band")


def print_report(report: dict[str, Any]) -> None:
    """The fit report as tables: validation scores, reliability by decile, bands."""
    data = report["data"]
    console.print(
        f"{data['incidents']} incidents, {data['places']} places x {data['origins']} origins "
        f"({data['first_origin'][:10]} to {data['last_origin'][:10]}); question: violence "
        f"within {report['question']['distance_km']:g} km in "
        f"{report['question']['horizon_days']:g} days"
    )
    scores = Table(title="Validation splits (rolling origin)")
    for column in ("", "ROC AUC", "avg precision", "Brier", "Brier skill"):
        scores.add_column(column, justify="right")
    for name, key in (("model", "model"), ("decay baseline", "baseline"), ("in force", "active")):
        m = report["validation"].get(key)
        if m:
            scores.add_row(
                name,
                *(str(m[k]) for k in ("roc_auc", "average_precision", "brier", "brier_skill")),
            )
    console.print(scores)
    reliability = Table(title="Reliability by decile of the forecast")
    for column in ("decile", "mean forecast", "observed", "count"):
        reliability.add_column(column, justify="right")
    for row in report["reliability"]:
        reliability.add_row(
            str(row["decile"]),
            f"{row['mean_predicted']:.3f}",
            f"{row['observed']:.3f}",
            str(row["count"]),
        )
    console.print(reliability)
    bands = Table(title="Bands")
    for column in ("band", "share of place-times", "observed frequency"):
        bands.add_column(column, justify="right")
    for row in report["bands"]:
        observed = "-" if row["observed"] is None else f"{row['observed']:.3f}"
        bands.add_row(row["band"], f"{row['share']:.3f}", observed)
    console.print(bands)
    console.print(f"escalation gain: {report['fitted']['escalation_gain']}")
