"""The backtest's computation against its factorised numpy floor, timed in the same process.

    .venv/bin/python -m benchmarks.backtest                  # 5 interleaved rounds, text
    .venv/bin/python -m benchmarks.backtest --rounds 3 --json
    .venv/bin/python -m benchmarks.backtest --server         # also POST /v1/backtests (SQLite)

The sizes are those of the backtest phase of benchmarks/run.py: 10,000 incidents over a year
(benchmarks/data.py, read as the service reads a report), 300 bare points x 100 times spread
over the year, the shipped model (risk.DEFAULT_PARAMS). The service is `risk.score_points` on
the flattened (point, time) pairs, as `scores.backtest` calls it; the floor is `floor_values`
below, the straightforward dense computation of the same values, which is checked against the
service before anything is timed. Both run in this process, interleaved, one BLAS thread each.

`--server` also measures the HTTP path: a scratch SQLite database, `riskalert serve` with the
incidents posted in batches, then run.py's own backtest phase (its requests and its timing).
That figure includes the database read, the incident set's construction and JSON; the ratio
of the computation to its floor is the one this script is about.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine

from benchmarks import data, run
from services.scoring import incidents, risk, schemas
from services.scoring.geo import FloatArray, haversine_km
from services.scoring.risk import terms

# The floor builds (points x incidents x scales) arrays for this many cells at most at once.
FLOOR_CHUNK_CELLS = 2_000_000
# Values are rounded to 0.1 percent point; two computations that agree to this many percent
# points can still round apart when they straddle a rounding boundary (a float tie).
TIE_PERCENT = 1e-9


@dataclass(frozen=True, slots=True)
class Case:
    """One backtest: its incidents, points and times, and the model."""

    incident_set: risk.IncidentSet
    lats: FloatArray
    lons: FloatArray
    times: FloatArray
    params: risk.ModelParams


def build_case(n_incidents: int, n_points: int, n_times: int, end: datetime, seed: int) -> Case:
    """The backtest phase's data (run.py's seeds), as model incidents in an IncidentSet."""
    bodies = data.incidents(n_incidents, end, seed=seed + 2)
    models = [
        incidents.from_report(schemas.IncidentIn.model_validate(body), k + 1, end)
        for k, body in enumerate(bodies)
    ]
    points = data.backtest_points(n_points, seed=seed)
    times = [end - timedelta(days=365 * (1 - k / n_times)) for k in range(n_times)]
    params = risk.DEFAULT_PARAMS
    return Case(
        incident_set=risk.IncidentSet(models, params),
        lats=np.array([p["lat"] for p in points], dtype=np.float64),
        lons=np.array([p["lon"] for p in points], dtype=np.float64),
        times=np.array([t.timestamp() for t in times], dtype=np.float64),
        params=params,
    )


def service_values(case: Case) -> FloatArray:
    """The service's scores of every (point, time), as scores.backtest computes them."""
    n, m = case.lats.shape[0], case.times.shape[0]
    values = risk.score_points(
        np.repeat(case.lats, m),
        np.repeat(case.lons, m),
        np.tile(case.times, n),
        case.incident_set,
        case.params,
    )
    return np.asarray(values.reshape(n, m))


def floor_intensities(case: Case) -> FloatArray:
    """The fitted intensity x (1 + escalation) of every (point, time), dense: (points, times).

    The decay and the escalation windows depend on (incident, time) only, the kernels on
    (point, incident) only, so both sums are matrix products over all incidents."""
    incident_set, params = case.incident_set, case.params
    located = np.flatnonzero(incident_set.fitted[: incident_set.n_point])
    idx = np.concatenate((located, incident_set.bare_area))
    n_inc, n_located = idx.shape[0], located.shape[0]
    n_h = incident_set.half_lives.shape[0]
    n_t = case.times.shape[0]

    t = case.times[:, None]
    age = (t - incident_set.occurred_s[idx]) / terms.DAY_S
    valid = (incident_set.reported_s[idx] <= t) & (age >= 0.0) & (age <= params.lookback_days)
    decay = incident_set.decay_basis(np.where(valid, age, -1.0)).reshape(n_t, n_inc * n_h)
    recent, baseline = terms.windows(age, valid, params)
    windows = np.concatenate((recent, baseline)).T

    static = incident_set.static[idx]
    weighted_coef = incident_set.coef[idx].reshape(n_inc, -1, n_h) * static[:, None, None]
    regional = np.concatenate((incident_set.forecast[located], np.zeros(n_inc - n_located, bool)))
    # The fitted scales and the escalation kernel's scale in one basis share one taper.
    scales = np.append(incident_set.scales, params.escalation_scale_km)
    step = max(1, FLOOR_CHUNK_CELLS // max(1, n_inc * scales.shape[0]))
    out = np.empty((case.lats.shape[0], n_t))
    for start in range(0, case.lats.shape[0], step):
        lat, lon = case.lats[start : start + step, None], case.lons[start : start + step, None]
        distance = haversine_km(lat, lon, incident_set.lat[located], incident_set.lon[located])
        d_eff = np.concatenate(
            (
                terms.effective_distance(distance, incident_set.sigma_km[located]),
                np.full((lat.shape[0], n_inc - n_located), params.area_distance_km),
            ),
            axis=1,
        )
        basis = terms.spatial_basis(d_eff, params, scales)
        spatial = np.einsum("pis,ish->pih", basis[..., :-1], weighted_coef, optimize=True)
        raw = spatial.reshape(lat.shape[0], n_inc * n_h) @ decay.T
        local_w = static * basis[..., -1]
        regional_w = static * (regional & (d_eff <= params.escalation_regional_km))
        sums = np.concatenate((local_w, regional_w)) @ windows
        n_p = lat.shape[0]
        _, _, e = terms.escalation(
            sums[:n_p, :n_t], sums[:n_p, n_t:], sums[n_p:, :n_t], sums[n_p:, n_t:], params
        )
        out[start : start + n_p] = raw * (1.0 + np.where(raw > 0.0, e, 0.0))
    return out


def floor_values(case: Case) -> FloatArray:
    """The floor's scores of every (point, time): its intensities, calibrated and rounded."""
    return floor_values_of(floor_intensities(case), case)


def floor_values_of(intensities: FloatArray, case: Case) -> FloatArray:
    """Scores (percent, one decimal) of intensities, as the service rounds them."""
    return terms.percent(terms.calibrate(intensities, case.params))


def check_same(case: Case) -> dict[str, Any]:
    """Assert the floor computes the service's values; the figures of the comparison."""
    n, m = case.lats.shape[0], case.times.shape[0]
    served = risk.intensities(
        np.repeat(case.lats, m),
        np.repeat(case.lons, m),
        np.tile(case.times, n),
        case.incident_set,
        case.params,
    ).reshape(n, m)
    floor = floor_intensities(case)
    np.testing.assert_allclose(floor, served, rtol=1e-12, atol=0.0)
    served_p = terms.calibrate(served, case.params)
    apart = np.flatnonzero(terms.percent(served_p) != floor_values_of(floor, case))
    # Rounding apart is a tie only when both sit on a boundary k x 0.1 + 0.05 (to a hair).
    percent = 100.0 * served_p.flat[apart]
    boundary = (np.floor(percent * 10.0) + 0.5) / 10.0
    ties = np.abs(percent - boundary) <= TIE_PERCENT
    assert ties.all(), f"{int((~ties).sum())} scores differ beyond a float tie"
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.abs(floor - served) / np.abs(served)
    return {
        "pairs": n * m,
        "max_relative_difference": float(np.nanmax(np.where(served == 0.0, 0.0, relative))),
        "zero_intensity_pairs": int(np.count_nonzero(served == 0.0)),
        "rounded_ties": int(apart.shape[0]),
    }


def timed(fn: Callable[[], FloatArray]) -> tuple[float, float, FloatArray]:
    """(CPU seconds, wall seconds, result) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def compare(case: Case, rounds: int) -> dict[str, Any]:
    """The service and the floor, alternately `rounds` times each: medians and their ratios."""
    seen: dict[str, dict[str, list[float]]] = {
        name: {"cpu_s": [], "wall_s": []} for name in ("service", "floor")
    }
    runs: dict[str, Callable[[], FloatArray]] = {
        "service": lambda: service_values(case),
        "floor": lambda: floor_values(case),
    }
    for k in range(rounds):
        # Alternate which goes first, so neither always follows the other's allocations.
        order = ("service", "floor") if k % 2 == 0 else ("floor", "service")
        results = {}
        for name in order:
            cpu, wall, results[name] = timed(runs[name])
            seen[name]["cpu_s"].append(cpu)
            seen[name]["wall_s"].append(wall)
        apart = int(np.count_nonzero(results["service"] != results["floor"]))
        run.log(
            f"round {k + 1}: service {seen['service']['wall_s'][-1]:.3f} s, "
            f"floor {seen['floor']['wall_s'][-1]:.3f} s, scores apart {apart}"
        )
    out: dict[str, Any] = {"rounds": rounds}
    for name, figures in seen.items():
        out[name] = {
            "cpu_s": [round(x, 4) for x in figures["cpu_s"]],
            "wall_s": [round(x, 4) for x in figures["wall_s"]],
            "median_cpu_s": statistics.median(figures["cpu_s"]),
            "median_wall_s": statistics.median(figures["wall_s"]),
        }
    for clock in ("cpu", "wall"):
        key = f"median_{clock}_s"
        out[f"ratio_{clock}"] = out["service"][key] / out["floor"][key]
    return out


def server_backtest(
    n_incidents: int, n_points: int, n_times: int, requests: int, end: datetime, seed: int
) -> dict[str, Any]:
    """POST /v1/backtests to `riskalert serve` on scratch SQLite holding the same incidents."""
    bodies = data.incidents(n_incidents, end, seed=seed + 2)
    with (
        tempfile.TemporaryDirectory(prefix="riskalert-backtest-") as logs,
        run.scratch_database("sqlite", keep=False) as db,
    ):
        keys, _ = run.preload(db, 0, 0, seed)
        api = run.start_api(db, "inline", Path(logs))
        engine = create_engine(db.url)
        try:
            run.log(f"server: posting {len(bodies)} incidents")
            run.bulk_ingest(api, engine, keys, bodies, 1_000)
            run.log(f"server: {requests} backtests of {n_points} x {n_times}")
            return run.backtest(api, keys, n_points, n_times, requests, end, seed)
        finally:
            run.stop_server(api)
            engine.dispose()


def git(*command: str) -> str:
    """Output of a read-only git command in the repository."""
    done = subprocess.run(
        ["git", *command], cwd=run.ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def main() -> None:
    """Parse the options, check the floor, time both, print text or JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--times", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each")
    parser.add_argument("--seed", type=int, default=1, help="run.py's --seed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--server", action="store_true", help="also time POST /v1/backtests on a real server"
    )
    parser.add_argument("--requests", type=int, default=3, help="with --server: requests")
    args = parser.parse_args()

    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    run.log(f"building {args.incidents} incidents, {args.points} points x {args.times} times")
    case = build_case(args.incidents, args.points, args.times, end, args.seed)
    results: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "services", "benchmarks")),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "incidents_kept": len(case.incident_set),
        "check": check_same(case),
    }
    results["computation"] = compare(case, args.rounds)
    if args.server:
        served = server_backtest(
            args.incidents, args.points, args.times, args.requests, end, args.seed
        )
        served["ratio_to_floor_wall"] = (
            served["median_s"] / results["computation"]["floor"]["median_wall_s"]
        )
        results["server"] = served

    if args.json:
        print(json.dumps(results, indent=2))
        return
    check, timing = results["check"], results["computation"]
    changes = " with uncommitted changes" if results["uncommitted_changes"] else ""
    print(
        f"commit {results['commit']}{changes}, {results['measured_at']}, "
        f"Python {results['python']}, numpy {results['numpy']}"
    )
    print(
        f"{check['pairs']} pairs, {results['incidents_kept']} incidents: floor = service within "
        f"{check['max_relative_difference']:.1e} relative, {check['rounded_ties']} rounding ties"
    )
    for name in ("service", "floor"):
        print(
            f"{name:8s} median of {timing['rounds']}: {timing[name]['median_wall_s']:.3f} s wall, "
            f"{timing[name]['median_cpu_s']:.3f} s CPU"
        )
    print(f"service/floor: {timing['ratio_wall']:.2f} wall, {timing['ratio_cpu']:.2f} CPU")
    if "server" in results:
        served = results["server"]
        print(
            f"server: POST /v1/backtests median of {served['requests']}: "
            f"{served['median_s']:.3f} s, {served['ratio_to_floor_wall']:.2f} x the floor"
        )


if __name__ == "__main__":
    main()
