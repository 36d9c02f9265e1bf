"""The model fit: no leakage, recovery of a known process, calibration, and the job around it."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from services.alerts import rescale
from services.cli import app as cli_app
from services.feeds import synth
from services.scoring import history, jobs, risk, scores
from services.scoring.models import ModelVersion
from services.scoring.risk import fit, terms
from services.scoring.taxonomy import Category
from tests.conftest import Api, assert_problem, error_fields
from tests.test_rescoring import create_site, incident_body

DAY = timedelta(days=1)
SMALL = fit.FitOptions(origins=14, folds=2, max_places=250, escalation_gains=(0.0, 0.25))


@cache
def generated(seed: int = 3, rows: int = 4000, years: int = 5) -> tuple[risk.Incident, ...]:
    """A generated history (a self-exciting cluster process), read by the ACLED parser."""
    return tuple(history.generated(seed, rows, date(2018, 1, 1), date(2018 + years, 1, 1)))


@cache
def fitted() -> fit.FitResult:
    """A fit dense enough to see the process's short memory: 12,000 events in four years."""
    options = fit.FitOptions(origins=24, folds=3, max_places=600, escalation_gains=(0.0, 0.25))
    return fit.fit(list(generated(5, 12_000, 4)), risk.DEFAULT_PARAMS, options=options)


def places() -> fit.Places:
    lat, lon = np.meshgrid(np.arange(11.0, 17.0, 0.75), np.arange(-6.0, 3.0, 0.75))
    return fit.Places(lat=lat.ravel(), lon=lon.ravel(), n_grid=lat.size)


def later_reports_changed(
    incidents: tuple[risk.Incident, ...], cutoff: datetime
) -> list[risk.Incident]:
    """The same history up to cutoff; after it, every report dropped and others invented."""
    kept = [i for i in incidents if i.reported_at <= cutoff]
    invented = [
        dataclasses.replace(
            i,
            id=100_000 + k,
            # Occurred before the cutoff, reported after it: a late report must not leak.
            occurred_at=cutoff - (k % 40) * DAY,
            reported_at=cutoff + (1 + k % 30) * DAY,
            lat=(i.lat or 14.0) + 0.05,
        )
        for k, i in enumerate(incidents[:800])
    ]
    return kept + invented


# --------------------------------------------------------------------------------------------
# No leakage


def test_features_at_an_origin_use_only_incidents_reported_by_then() -> None:
    incidents = generated()
    origins = np.array([datetime(2020, m, 1, tzinfo=UTC).timestamp() for m in (3, 6, 9)])
    cutoff = datetime.fromtimestamp(float(origins[-1]), UTC)
    params = risk.DEFAULT_PARAMS

    whole = fit.design(risk.IncidentSet(list(incidents), params), places(), origins, params)
    changed = fit.design(
        risk.IncidentSet(later_reports_changed(incidents, cutoff), params),
        places(),
        origins,
        params,
    )

    np.testing.assert_array_equal(whole.features, changed.features)
    np.testing.assert_array_equal(whole.escalation, changed.escalation)
    np.testing.assert_array_equal(whole.baseline, changed.baseline)


def test_a_validation_split_is_the_same_whatever_was_reported_after_it_starts() -> None:
    incidents = generated()
    params = risk.DEFAULT_PARAMS
    origins = np.linspace(
        datetime(2018, 9, 1, tzinfo=UTC).timestamp(),
        datetime(2022, 6, 1, tzinfo=UTC).timestamp(),
        16,
    )
    start = float(origins[10])
    cutoff = datetime.fromtimestamp(start, UTC)

    def split(history_: list[risk.Incident]) -> fit.Fitted:
        design = fit.design(risk.IncidentSet(history_, params), places(), origins, params)
        found = fit.split_model(design, start, params, SMALL)
        assert found is not None
        return found[0]

    whole = split(list(incidents))
    changed = split(later_reports_changed(incidents, cutoff))

    np.testing.assert_array_equal(whole.beta, changed.beta)
    assert whole.mu == changed.mu
    assert whole.knots == changed.knots
    assert whole.gain == changed.gain


def test_labels_count_only_events_reported_by_the_cutoff() -> None:
    incidents = generated()
    params = risk.DEFAULT_PARAMS
    origins = np.array([datetime(2020, 6, 1, tzinfo=UTC).timestamp()])
    design = fit.design(risk.IncidentSet(list(incidents), params), places(), origins, params)

    truth = design.labels(float("inf"), params)
    at_origin = design.labels(float(origins[0]), params)

    # At the origin nothing of the next 30 days has been reported yet.
    assert truth.any()
    assert not at_origin.any()


# --------------------------------------------------------------------------------------------
# What the fit learns


def test_the_fit_beats_the_decay_baseline_on_held_back_years() -> None:
    report = fitted().report
    model, baseline = report["validation"]["model"], report["validation"]["baseline"]

    assert model["roc_auc"] > baseline["roc_auc"]
    assert model["average_precision"] > baseline["average_precision"]
    assert model["brier"] < baseline["brier"]
    assert model["brier_skill"] > 0.2


def test_the_fit_is_calibrated_within_a_few_points_per_decile() -> None:
    report = fitted().report

    gaps = [abs(r["mean_predicted"] - r["observed"]) for r in report["reliability"]]
    assert max(gaps) < 0.06, report["reliability"]
    # And the bands mean what they say: the observed frequency rises with the band (where a
    # band holds enough place-times to tell).
    observed = [b["observed"] for b in report["bands"] if b["count"] >= 200]
    assert len(observed) >= 3
    assert observed == sorted(observed), report["bands"]


def test_the_fit_recovers_the_generators_short_memory_local_reach_and_persistence() -> None:
    # The generator (services/feeds/synth.py): offspring within days (mean delay
    # OFFSPRING_DELAY_DAYS) and about OFFSPRING_SPREAD_KM away, around fixed towns and roads.
    groups = fitted().report["fitted"]["groups"]
    attack = groups["attack"]

    # Local: most of the weight within a few spreads of the event.
    assert attack["kernel"]["50km"] < 0.15
    assert attack["kernel"]["10km"] > 0.3
    # Short memory: a week later most of the triggering has passed...
    assert attack["memory"]["7d"] < 0.6
    # ...but places keep part of their weight for months (the towns' background).
    assert attack["memory"]["180d"] > 0.02
    assert synth.OFFSPRING_DELAY_DAYS < 7
    assert synth.OFFSPRING_SPREAD_KM < 25


def test_fitted_parameters_score_alike_through_the_service_path() -> None:
    incidents = list(generated(5, 12_000, 4))
    params = fitted().params
    incident_set = risk.IncidentSet(incidents, params)
    origins = np.array([datetime(2020, m, 15, tzinfo=UTC).timestamp() for m in (2, 7)])
    grid = places()
    design = fit.design(incident_set, grid, origins, params)
    tensor, _ = terms.coefficient_tensor(params)
    raw = design.features @ tensor.reshape(-1)
    total = raw * (1.0 + np.where(raw > 0, params.escalation_gain * design.escalation, 0.0))

    served = risk.intensities(
        np.repeat(grid.lat, origins.size),
        np.repeat(grid.lon, origins.size),
        np.tile(origins, grid.lat.size),
        incident_set,
        params,
    )

    np.testing.assert_allclose(served, total, rtol=1e-9, atol=1e-12)


def test_calibration_knots_rise_and_stay_below_one() -> None:
    rng = np.random.default_rng(1)
    intensity = rng.exponential(0.3, 5000)
    y = rng.random(5000) < -np.expm1(-intensity)

    knots = fit.calibration_knots(intensity, y)

    xs = [k[0] for k in knots]
    ps = [k[1] for k in knots]
    assert xs == sorted(set(xs))
    assert xs[0] == 0.0
    assert ps == sorted(ps)
    assert ps[-1] < 1.0
    assert len(knots) <= fit.MAX_KNOTS + 1
    # The fitted map reads the process's own probability back, within sampling error.
    for x in (0.1, 0.3, 0.8):
        assert abs(float(np.interp(x, xs, ps)) + np.expm1(-x)) < 0.08


def test_a_history_too_short_to_fit_is_refused_with_the_reason() -> None:
    incidents = [i for i in generated() if i.occurred_at < datetime(2018, 3, 1, tzinfo=UTC)]

    with pytest.raises(ValueError, match="not enough history"):
        fit.fit(incidents, risk.DEFAULT_PARAMS, options=SMALL)


def test_the_shipped_defaults_are_a_fit_with_its_report() -> None:
    document = json.loads(risk.params.DEFAULTS_FILE.read_text())
    assert risk.ModelParams.from_dict(document["params"]) == risk.DEFAULT_PARAMS
    report = document["report"]
    assert report["validation"]["model"]["brier"] < report["validation"]["baseline"]["brier"]
    top = next(b for b in report["bands"] if b["band"] == "critical")
    # At a realistic density, most place-times are not in the top band.
    assert top["share"] < 0.25


# --------------------------------------------------------------------------------------------
# The job, the API and the command line


def acled_csv(seed: int = 4, rows: int = 2500) -> bytes:
    events = synth.generate(seed, rows, date(2021, 1, 1), date(2024, 1, 1))
    text = io.StringIO()
    synth.write_acled_csv(events, text)
    return text.getvalue().encode()


def load_history(api: Api) -> None:
    response = api.client.post(
        "/v1/imports/acled",
        headers={**api.ingest, "Content-Type": "text/csv"},
        content=acled_csv(),
    )
    assert response.status_code in (200, 201), response.text


def flat_params() -> dict[str, Any]:
    """A version in force that says the same for every place: easy to beat."""
    params = risk.DEFAULT_PARAMS.to_dict()
    params["calibration"] = [[0.0, 0.05], [1.0, 0.05]]
    return params


def run_fits(api: Api) -> None:
    jobs.run_model_fits(api.app.state.sessions, api.settings)


def fit_body(**extra: Any) -> dict[str, Any]:
    return {"origins": 10, "folds": 2, "max_places": 150, **extra}


def test_a_fit_job_reports_and_publishes_when_it_beats_the_version_in_force(api: Api) -> None:
    load_history(api)
    published = api.client.post(
        "/v1/model/versions", headers=api.admin, json={"params": flat_params(), "note": "flat"}
    )
    assert published.status_code == 201, published.text
    flat_version = published.json()["version"]

    queued = api.client.post("/v1/model/fits", headers=api.admin, json=fit_body())
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "pending"
    run_fits(api)

    job = api.client.get(f"/v1/model/fits/{queued.json()['id']}", headers=api.admin).json()
    assert job["status"] == "done", job
    assert job["model_version"] == flat_version + 1
    assert (
        job["report"]["validation"]["active"]["brier"]
        > job["report"]["validation"]["model"]["brier"]
    )
    model = api.client.get("/v1/model", headers=api.a).json()
    assert model["version"] == flat_version + 1
    assert model["report"]["reliability"]
    entries = api.client.get("/v1/audit-log", headers=api.admin).json()["entries"]
    actions = [e["action"] for e in entries]
    assert "model.fit" in actions
    publish = [e for e in entries if e["action"] == "model.publish"][-1]
    assert publish["after"]["version"] == flat_version + 1
    assert "validation" in publish["after"]


def test_a_dry_run_fit_reports_without_publishing(api: Api) -> None:
    load_history(api)
    before = api.client.get("/v1/model", headers=api.a).json()["version"]

    queued = api.client.post("/v1/model/fits", headers=api.admin, json=fit_body(dry_run=True))
    run_fits(api)

    job = api.client.get(f"/v1/model/fits/{queued.json()['id']}", headers=api.admin).json()
    assert job["status"] == "done"
    assert job["model_version"] is None
    assert job["outcome"].startswith("dry run")
    assert job["report"]["validation"]["model"]["roc_auc"] is not None
    assert api.client.get("/v1/model", headers=api.a).json()["version"] == before


def test_a_fit_that_does_not_beat_the_version_in_force_is_not_published(api: Api) -> None:
    load_history(api)
    api.client.post("/v1/model/fits", headers=api.admin, json=fit_body())
    run_fits(api)
    first = api.client.get("/v1/model", headers=api.a).json()["version"]

    # The same fit again: the version in force was fitted on every year the splits validate
    # on, so its in-sample Brier score is at least as good.
    queued = api.client.post("/v1/model/fits", headers=api.admin, json=fit_body())
    run_fits(api)

    job = api.client.get(f"/v1/model/fits/{queued.json()['id']}", headers=api.admin).json()
    assert job["status"] == "done"
    assert job["model_version"] is None
    assert job["outcome"].startswith("not published")
    assert api.client.get("/v1/model", headers=api.a).json()["version"] == first


def test_a_fit_on_too_little_history_fails_with_its_reason(api: Api) -> None:
    queued = api.client.post("/v1/model/fits", headers=api.admin, json=fit_body())
    run_fits(api)

    job = api.client.get(f"/v1/model/fits/{queued.json()['id']}", headers=api.admin).json()
    assert job["status"] == "failed"
    assert "ValueError" in job["error"]
    # A failed fit is not taken again at the next tick.
    run_fits(api)
    again = api.client.get(f"/v1/model/fits/{queued.json()['id']}", headers=api.admin).json()
    assert again["finished_at"] == job["finished_at"]


def test_fits_are_for_admins_and_bad_options_are_named(api: Api) -> None:
    assert api.client.post("/v1/model/fits", headers=api.a, json=fit_body()).status_code == 403
    doc = assert_problem(
        api.client.post("/v1/model/fits", headers=api.admin, json=fit_body(origins=1)), 422
    )
    assert "origins" in error_fields(doc)
    assert_problem(api.client.get("/v1/model/fits/999", headers=api.admin), 404)


def test_a_fit_is_queued_on_schedule_once_enough_new_incidents_arrived(
    api_factory: Any,
) -> None:
    api = api_factory(refit_after_incidents=50)
    jobs.queue_refit(api.app.state.sessions, api.settings)
    assert api.client.get("/v1/model/fits", headers=api.admin).json() == []

    load_history(api)
    jobs.queue_refit(api.app.state.sessions, api.settings)
    jobs.queue_refit(api.app.state.sessions, api.settings)

    fits = api.client.get("/v1/model/fits", headers=api.admin).json()
    assert [(f["status"], f["requested_by"]) for f in fits] == [("pending", "schedule")]


# --------------------------------------------------------------------------------------------
# Stored thresholds keep their meaning


def threshold_subscription(api: Api, raise_at: float, clear_at: float) -> int:
    site = create_site(api, "Mine", 12.4, -1.5)
    endpoint = api.client.post(
        "/v1/endpoints",
        headers=api.a,
        json={"kind": "email", "name": "Security desk", "address": "desk@example.com"},
    )
    assert endpoint.status_code == 201, endpoint.text
    body = {
        "name": "watch",
        "scope": "target",
        "target_id": site,
        "endpoint_ids": [endpoint.json()["id"]],
        "rules": [{"kind": "threshold", "raise_at": raise_at, "clear_at": clear_at}],
    }
    created = api.client.post("/v1/subscriptions", headers=api.a, json=body)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def rule_levels(api: Api, subscription_id: int) -> tuple[float, float]:
    sub = api.client.get(f"/v1/subscriptions/{subscription_id}", headers=api.a).json()
    rule = sub["rules"][0]
    return rule["raise_at"], rule["clear_at"]


def test_new_bands_carry_score_thresholds_over_band_by_band_and_say_so(api: Api) -> None:
    sub = threshold_subscription(api, raise_at=60.0, clear_at=40.0)
    params = risk.DEFAULT_PARAMS.to_dict()
    params["band_thresholds"] = [10.0, 20.0, 40.0, 60.0]

    response = api.client.post(
        "/v1/model/versions", headers=api.admin, json={"params": params, "note": "wider bands"}
    )

    assert response.status_code == 201, response.text
    # 60 sat 10/50 of the way through critical (50-100); 40 half-way through high (30-50).
    assert rule_levels(api, sub) == (68.0, 50.0)
    [moved] = response.json()["carried_over"]["alerts.threshold_rules"]
    assert moved["subscription_id"] == sub
    assert moved["before"] == {"raise_at": 60.0, "clear_at": 40.0}
    assert moved["after"] == {"raise_at": 68.0, "clear_at": 50.0}
    entries = api.client.get("/v1/audit-log", headers=api.admin).json()["entries"]
    publish = [e for e in entries if e["action"] == "model.publish"][-1]
    assert (
        publish["after"]["carried_over"]["alerts.threshold_rules"][0]["rule_id"] == moved["rule_id"]
    )


def test_same_bands_leave_score_thresholds_alone(api: Api) -> None:
    sub = threshold_subscription(api, raise_at=35.0, clear_at=25.0)

    response = api.client.post(
        "/v1/model/versions",
        headers=api.admin,
        json={"params": risk.DEFAULT_PARAMS.to_dict(), "note": "same bands"},
    )

    assert response.status_code == 201
    assert response.json()["carried_over"] == {}
    assert rule_levels(api, sub) == (35.0, 25.0)


def test_a_publication_lists_rules_whose_alert_volume_changes_within_a_replay_budget(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = threshold_subscription(api, raise_at=0.5, clear_at=0.1)
    posted = api.client.post(
        "/v1/incidents", headers=api.ingest, json=incident_body("at-the-mine", 12.4, -1.5)
    )
    assert posted.status_code == 201, posted.text
    api.drain()
    quiet = risk.DEFAULT_PARAMS.to_dict()
    quiet["calibration"] = [[0.0, 0.0], [1000.0, 0.001]]  # never above 0.1 %

    response = api.client.post(
        "/v1/model/versions", headers=api.admin, json={"params": quiet, "note": "quiet"}
    )

    [listed] = response.json()["carried_over"]["alerts.threshold_rules"]
    assert listed["subscription_id"] == sub
    counts = listed["notifications_30d"]
    assert counts["before"] >= 1
    assert counts["after"] == 0

    monkeypatch.setattr(rescale, "BUDGET_PAIRS", 1)
    again = api.client.post(
        "/v1/model/versions",
        headers=api.admin,
        json={"params": risk.DEFAULT_PARAMS.to_dict(), "note": "back"},
    )
    [unreplayed] = again.json()["carried_over"]["alerts.threshold_rules"]
    assert unreplayed["notifications_30d"]["before"].startswith("not replayed")


def test_a_legacy_model_in_force_is_replaced_and_its_thresholds_follow_by_band(api: Api) -> None:
    sub = threshold_subscription(api, raise_at=60.0, clear_at=50.0)
    factory = api.app.state.sessions
    now = jobs.utc_now()
    with factory.begin() as session:
        scores.ensure_model(session, now)
        for row in session.execute(select(ModelVersion)).scalars():
            row.active = False
        session.flush()
        legacy = {"categories": {}, "band_thresholds": [20.0, 40.0, 60.0, 80.0], "saturation": 1.0}
        session.add(
            ModelVersion(
                params=legacy, note="legacy", active=True, created_by="system", created_at=now
            )
        )
    scores._parsed.clear()

    with factory.begin() as session:
        model = scores.ensure_model(session, now)

    assert model.params == risk.DEFAULT_PARAMS
    # 60 was the legacy high band's floor: it is the new high band's floor (30); 50 was half-way
    # through elevated (40-60): it is half-way through the new elevated (15-30).
    assert rule_levels(api, sub) == (30.0, 22.5)
    entries = api.client.get("/v1/audit-log", headers=api.admin).json()["entries"]
    publish = [e for e in entries if e["action"] == "model.publish"][-1]
    assert publish["after"]["carried_over"]["alerts.threshold_rules"]


# --------------------------------------------------------------------------------------------
# Command line


def test_model_fit_on_a_generated_history_prints_the_report() -> None:
    result = CliRunner().invoke(
        cli_app,
        [
            "model", "fit", "--generated", "2", "--rows", "3000", "--start", "2019-01-01",
            "--end", "2022-01-01", "--origins", "10", "--folds", "2", "--places", "150",
        ],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "decay baseline" in result.output
    assert "Reliability by decile" in result.output
    assert "critical" in result.output


def test_model_fit_dry_run_on_the_database_publishes_nothing(api: Api) -> None:
    load_history(api)
    before = api.client.get("/v1/model/versions", headers=api.a).json()

    result = CliRunner().invoke(
        cli_app,
        [
            "model", "fit", "--dry-run", "--database-url", api.settings.database_url,
            "--origins", "10", "--folds", "2", "--places", "150",
        ],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "dry run" in result.output
    assert api.client.get("/v1/model/versions", headers=api.a).json() == before


def test_violent_categories_are_the_ones_docs_scoring_lists() -> None:
    text = (risk.params.Path(__file__).parents[1] / "docs" / "scoring.md").read_text()
    for category in Category:
        listed = (
            f"`{category.value}`" in text.split("## What the probability counts")[1].split("##")[0]
        )
        assert listed == (category in risk.VIOLENT), category


def test_a_process_that_does_not_fit_never_imports_scipy_or_scikit_learn() -> None:
    # Every riskalert process imports the app; only a fit needs these (about a second).
    code = "import sys, services.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "'sklearn'" not in loaded
    assert "'scipy'" not in loaded
