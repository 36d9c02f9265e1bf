"""Learning the model from the incident history: features, rolling-origin fit, calibration, report.

The question (a model version's forecast_*): will a violent incident happen within
forecast_distance_km of this place in the next forecast_horizon_days? The fit answers it for
places where incidents happen and where they do not (a grid over the area with incidents, plus
the registered targets), at many origins in time, and learns:

- the non-negative coefficients of every (group, spatial scale, half-life) term, which are the
  category weights, the distance scales and reach, the half-lives and the persistence, and
  whether the regional (wide-scale) terms earn their place;
- the escalation gain (the best of a few, on the training rows);
- a monotone calibration map from the intensity to the probability (isotonic regression).

The intensity is that of a Poisson process, P(event) = 1 - exp(-(mu + x)), so the likelihood is
convex in the coefficients and the fit is one bounded L-BFGS problem per split.

No leakage, by construction: features at an origin use only incidents *reported* by then
(`reported_s <= origin`), and the training labels of a split starting at T count only events
reported by T, from origins whose horizon ends by T. tests/test_model_fit.py proves it by
changing everything reported after T and getting the same split model.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, sparse
from scipy.spatial import cKDTree
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from services.scoring.geo import FloatArray, haversine_km
from services.scoring.risk import terms
from services.scoring.risk.incidentset import IncidentSet
from services.scoring.risk.params import ModelParams
from services.scoring.risk.scoring import probabilities
from services.scoring.risk.types import Incident
from services.scoring.taxonomy import Band

EARTH_RADIUS_KM = 6371.0088
BASELINE_SCALE_KM = 50.0
BASELINE_HALF_LIFE_DAYS = 30.0
MAX_KNOTS = 48
PRIOR_ROWS = 2.0


@dataclass(frozen=True, slots=True)
class FitOptions:
    """How a fit samples places and times."""

    origins: int = 40
    folds: int = 4
    # Share of the origins, at the end, that the validation splits cover.
    validation_share: float = 0.5
    max_places: int = 2000
    grid_degrees: float = 0.5
    escalation_gains: tuple[float, ...] = (0.0, 0.25, 0.5)
    ridge: float = 1e-4
    max_iterations: int = 400
    # Origins start this long after the first incident, so every origin has history behind it.
    warmup_days: float = 180.0


@dataclass(frozen=True, slots=True)
class Places:
    """Where the fit asks its question: grid cells over the incidents, plus targets."""

    lat: FloatArray
    lon: FloatArray
    n_grid: int


@dataclass
class FitResult:
    """The fitted parameters and the report stored with them."""

    params: ModelParams
    report: dict[str, Any]
    beats_active: bool | None = None


# --------------------------------------------------------------------------------------------
# Places and times


def grid_places(
    incident_lats: FloatArray,
    incident_lons: FloatArray,
    target_points: Sequence[tuple[float, float]],
    options: FitOptions,
) -> Places:
    """Cell centres over the area with incidents (coarser if needed to fit max_places), plus
    the targets' points (lat, lon)."""
    targets = list(target_points)[: max(0, options.max_places // 4)]
    budget = max(1, options.max_places - len(targets))
    lat0, lat1 = float(np.min(incident_lats)), float(np.max(incident_lats))
    lon0, lon1 = float(np.min(incident_lons)), float(np.max(incident_lons))
    cell = options.grid_degrees
    while True:
        lats = np.arange(lat0 + cell / 2, lat1 + cell / 2, cell)
        lons = np.arange(lon0 + cell / 2, lon1 + cell / 2, cell)
        if lats.size * lons.size <= budget:
            break
        cell *= math.sqrt(lats.size * lons.size / budget) * 1.01
    glat, glon = np.meshgrid(lats, lons, indexing="ij")
    lat = np.concatenate((glat.ravel(), np.array([t[0] for t in targets], dtype=np.float64)))
    lon = np.concatenate((glon.ravel(), np.array([t[1] for t in targets], dtype=np.float64)))
    return Places(lat=lat, lon=lon, n_grid=int(glat.size))


def origin_times(
    occurred_s: FloatArray, reported_s: FloatArray, options: FitOptions, params: ModelParams
) -> FloatArray:
    """Evenly spaced origins, from warmup after the first incident to a horizon before the last
    report."""
    first = float(np.min(occurred_s)) + options.warmup_days * terms.DAY_S
    last = float(np.max(reported_s)) - params.forecast_horizon_days * terms.DAY_S
    if last <= first:
        raise ValueError(
            "not enough history to fit: need more than warmup + horizon days between the first"
            " incident and the last report"
        )
    return np.linspace(first, last, options.origins)


# --------------------------------------------------------------------------------------------
# Features


def _xyz(lat: FloatArray, lon: FloatArray) -> FloatArray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack((np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)), axis=1)


def _pairs(
    places: Places, lat: FloatArray, lon: FloatArray, max_km: float
) -> tuple[NDArray[np.intp], NDArray[np.intp], FloatArray]:
    """(place, incident, great-circle km) for every pair closer than max_km."""
    if lat.size == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0)
    chord = 2.0 * math.sin(min(math.pi / 2, max_km / EARTH_RADIUS_KM / 2.0))
    near: list[list[int]] = cKDTree(_xyz(places.lat, places.lon)).query_ball_tree(
        cKDTree(_xyz(lat, lon)), r=chord
    )
    counts = np.fromiter((len(n) for n in near), dtype=np.intp, count=len(near))
    rows = np.repeat(np.arange(len(near), dtype=np.intp), counts)
    cols = np.fromiter(itertools.chain.from_iterable(near), dtype=np.intp, count=int(counts.sum()))
    km = np.asarray(haversine_km(places.lat[rows], places.lon[rows], lat[cols], lon[cols]))
    keep = km <= max_km
    return rows[keep], cols[keep], km[keep]


@dataclass
class Design:
    """Everything the fit needs at (place, origin) rows: features, tempo, labels."""

    places: Places
    origins: FloatArray
    features: FloatArray  # (P*O, Q): group x scale x half-life
    feature_names: list[tuple[str, int, int]]
    escalation: FloatArray  # (P*O,) esc before the gain (0 where no intensity)
    baseline: FloatArray  # (P*O,) the decay baseline's raw sum
    # Labels: per forecast incident the place rows within the distance, for any cutoff.
    label_place: NDArray[np.intp]
    label_incident_occurred: FloatArray
    label_incident_reported: FloatArray
    n_incidents: int = 0
    n_fitted: int = 0

    def labels(self, cutoff_s: float, params: ModelParams) -> NDArray[np.bool_]:
        """Whether a forecast event occurred in (o, o + horizon] near each row's place, counting
        only events reported by cutoff_s."""
        n_p, n_o = self.places.lat.size, self.origins.size
        horizon = params.forecast_horizon_days * terms.DAY_S
        known = self.label_incident_reported <= cutoff_s
        occ = self.label_incident_occurred[known]
        place = self.label_place[known]
        out = np.zeros((n_p, n_o), dtype=np.bool_)
        for k, o in enumerate(self.origins):
            hit = (occ > o) & (occ <= o + horizon)
            out[place[hit], k] = True
        return out.reshape(-1)


def _temporal(
    occurred: FloatArray, reported: FloatArray, origins: FloatArray, params: ModelParams
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
    """age (I, O) in days, and which (incident, origin) count: reported by the origin, not older
    than the lookback."""
    age = (origins[None, :] - occurred[:, None]) / terms.DAY_S
    valid = (reported[:, None] <= origins[None, :]) & (age >= 0.0) & (age <= params.lookback_days)
    return age, np.where(valid, 1.0, 0.0), valid


def design(
    incidents: IncidentSet, places: Places, origins: FloatArray, params: ModelParams
) -> Design:
    """Features, tempo, the baseline and labels at every (place, origin)."""
    point = np.arange(incidents.n_point)
    fitted = point[incidents.fitted[point]]
    n_p, n_o = places.lat.size, origins.size
    n_s, n_h = len(params.spatial_scales_km), len(params.half_lives_days)
    groups = params.group_names
    n_g = len(groups)

    reach = params.reach_km + max(params.location_sigma_km.values())
    rows, cols, km = _pairs(places, incidents.lat[fitted], incidents.lon[fitted], reach)
    inc = fitted[cols]
    d_eff = terms.effective_distance(km, incidents.sigma_km[inc])
    static = incidents.static[inc]
    kernel = terms.spatial_basis(d_eff, params) * static[:, None]  # (nnz, S)

    age, _, valid = _temporal(
        incidents.occurred_s[fitted], incidents.reported_s[fitted], origins, params
    )
    decay = terms.temporal_basis(np.where(valid, age, -1.0), params)  # (I, O, H)
    group = incidents.group[fitted]
    # T: (I, G*H*O), each incident's decay in its group's columns only.
    n_i = fitted.size
    t_cols = (group[:, None, None] * n_h + np.arange(n_h)[None, None, :]) * n_o + np.arange(n_o)[
        None, :, None
    ]
    t_rows = np.broadcast_to(np.arange(n_i)[:, None, None], decay.shape)
    nz = decay > 0.0
    t_matrix = sparse.csr_matrix(
        (decay[nz], (t_rows[nz], t_cols[nz])), shape=(n_i, n_g * n_h * n_o)
    )
    features = np.zeros((n_p, n_o, n_g, n_s, n_h), dtype=np.float64)
    for s in range(n_s):
        k_matrix = sparse.csr_matrix((kernel[:, s], (rows, cols)), shape=(n_p, n_i))
        product = (k_matrix @ t_matrix).toarray().reshape(n_p, n_g, n_h, n_o)
        features[:, :, :, s, :] = product.transpose(0, 3, 1, 2)
    names = [(g, s, h) for g in groups for s in range(n_s) for h in range(n_h)]

    # Tempo, with the same windows as terms.windows.
    recent = valid & (age <= params.escalation_recent_days)
    base = (
        valid
        & (age > params.escalation_recent_days)
        & (age <= params.escalation_recent_days + params.escalation_baseline_days)
    )
    windows = sparse.csr_matrix(np.concatenate((recent, base), axis=1).astype(np.float64))
    local = sparse.csr_matrix(
        (static * terms.escalation_kernel(d_eff, params), (rows, cols)), shape=(n_p, n_i)
    )
    local_sums = (local @ windows).toarray()
    regional_mask = incidents.forecast[inc] & (d_eff <= params.escalation_regional_km)
    regional = sparse.csr_matrix((static * regional_mask, (rows, cols)), shape=(n_p, n_i))
    regional_sums = (regional @ windows).toarray()
    unit = dataclasses.replace(params, escalation_gain=1.0)
    _, _, esc = terms.escalation(
        local_sums[:, :n_o],
        local_sums[:, n_o:],
        regional_sums[:, :n_o],
        regional_sums[:, n_o:],
        unit,
    )

    # The decay baseline: violent events, exp(-(d/50 km)^2), 30-day half-life.
    forecast = point[incidents.forecast[point]]
    b_rows, b_cols, b_km = _pairs(
        places, incidents.lat[forecast], incidents.lon[forecast], 4.0 * BASELINE_SCALE_KM
    )
    b_kernel = sparse.csr_matrix(
        (np.exp(-((b_km / BASELINE_SCALE_KM) ** 2)), (b_rows, b_cols)),
        shape=(n_p, forecast.size),
    )
    b_age, _, b_valid = _temporal(
        incidents.occurred_s[forecast], incidents.reported_s[forecast], origins, params
    )
    b_decay = np.where(b_valid, 0.5 ** (np.maximum(b_age, 0.0) / BASELINE_HALF_LIFE_DAYS), 0.0)
    baseline = np.asarray(b_kernel @ b_decay)

    l_rows, l_cols, _ = _pairs(
        places, incidents.lat[forecast], incidents.lon[forecast], params.forecast_distance_km
    )
    return Design(
        places=places,
        origins=origins,
        features=features.reshape(n_p * n_o, -1),
        feature_names=names,
        escalation=esc.reshape(-1),
        baseline=baseline.reshape(-1),
        label_place=l_rows,
        label_incident_occurred=incidents.occurred_s[forecast][l_cols],
        label_incident_reported=incidents.reported_s[forecast][l_cols],
        n_incidents=len(incidents),
        n_fitted=int(n_i),
    )


# --------------------------------------------------------------------------------------------
# Fitting


@dataclass
class Fitted:
    """One split's fitted coefficients, gain, background and calibration."""

    beta: FloatArray
    mu: float
    gain: float
    knots: tuple[tuple[float, float], ...]
    train_rows: int = 0
    base_rate: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def intensity(self, features: FloatArray, esc: FloatArray) -> FloatArray:
        """x (1 + gain esc), the intensity the calibration reads (no background)."""
        raw = features @ self.beta
        return np.asarray(raw * (1.0 + np.where(raw > 0.0, self.gain * esc, 0.0)))

    def predict(self, features: FloatArray, esc: FloatArray) -> FloatArray:
        """Calibrated probabilities."""
        xs = np.array([k[0] for k in self.knots])
        ys = np.array([k[1] for k in self.knots])
        return np.asarray(np.interp(self.intensity(features, esc), xs, ys))


def _poisson_fit(
    x: FloatArray, y: NDArray[np.bool_], options: FitOptions, start: FloatArray | None = None
) -> tuple[FloatArray, float, float, FloatArray]:
    """Non-negative beta and background mu maximising the Bernoulli likelihood of
    P = 1 - exp(-(mu + x beta)); returns (beta, mu, negative log-likelihood per row, the
    optimiser's solution to warm-start the next fit from)."""
    n, q = x.shape
    scale = np.maximum(x.mean(axis=0), 1e-12)
    # Rows without any intensity depend on mu alone: they enter as two counts.
    active = x.any(axis=1)
    xs = x[active] / scale
    yf = y[active].astype(np.float64)
    zero_events = float(np.count_nonzero(y[~active]))
    zero_quiet = float(np.count_nonzero(~active)) - zero_events
    rate = min(max(float(y.mean()), 1e-6), 1 - 1e-6)

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        b, mu = theta[:q], float(theta[q])
        lam = np.maximum(mu + xs @ b, 1e-12)
        # -log(1 - exp(-lam)) for events, lam for the rest.
        events = yf > 0
        nll = np.where(events, -np.log(-np.expm1(-lam)), lam)
        d = np.where(events, -1.0 / np.expm1(np.minimum(lam, 700.0)), 1.0)
        m = max(mu, 1e-12)
        value = (
            float(nll.sum()) - zero_events * math.log(-math.expm1(-m)) + zero_quiet * m
        ) / n + options.ridge * float(b @ b)
        grad = np.empty(q + 1)
        grad[:q] = (xs.T @ d) / n + 2.0 * options.ridge * b
        grad[q] = (float(d.sum()) - zero_events / math.expm1(m) + zero_quiet) / n
        return value, grad

    if start is None:
        start = np.full(q + 1, 1e-3)
        start[q] = -math.log(1.0 - rate)
    result = optimize.minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * q + [(1e-9, None)],
        options={"maxiter": options.max_iterations},
    )
    theta = np.asarray(result.x)
    value, _ = objective(theta)
    return theta[:q] / scale, float(theta[q]), value, theta


def calibration_knots(
    intensity: FloatArray, y: NDArray[np.bool_], max_knots: int = MAX_KNOTS
) -> tuple[tuple[float, float], ...]:
    """A monotone map from intensity to probability: isotonic regression, one knot per block at
    the block's mean intensity (so the map rises strictly between blocks), at most max_knots,
    each block's rate shrunk toward the base rate by PRIOR_ROWS pseudo-rows."""
    order = np.argsort(intensity, kind="stable")
    xs, ys = intensity[order], y[order].astype(np.float64)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    fitted = iso.fit_transform(xs, ys)
    # Blocks of equal fitted value, with their sizes.
    edges = np.flatnonzero(np.diff(fitted)) + 1
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [xs.size]))
    blocks = [
        (float(xs[a:b].mean()), float(fitted[a]), int(b - a))
        for a, b in zip(starts, ends, strict=True)
    ]
    # Merge neighbouring blocks (the smallest pair first) down to max_knots; means stay monotone.
    while len(blocks) > max_knots:
        sizes = [blocks[i][2] + blocks[i + 1][2] for i in range(len(blocks) - 1)]
        i = int(np.argmin(sizes))
        (x1, p1, n1), (x2, p2, n2) = blocks[i], blocks[i + 1]
        n12 = n1 + n2
        blocks[i : i + 2] = [((x1 * n1 + x2 * n2) / n12, (p1 * n1 + p2 * n2) / n12, n12)]
    # Each block is shrunk toward the base rate by PRIOR_ROWS pseudo-rows: a block without any
    # event reads a small probability, not an impossible 0, and a small block cannot claim 1.
    base = float(ys.mean()) if ys.size else 0.0
    knots: list[tuple[float, float]] = []
    for x, p, n in blocks:
        p = min((p * n + PRIOR_ROWS * base) / (n + PRIOR_ROWS), 0.999)
        if knots and x <= knots[-1][0]:
            continue
        knots.append((x, max(p, knots[-1][1]) if knots else p))
    if knots[0][0] > 0.0:
        knots.insert(0, (0.0, knots[0][1]))
    if len(knots) < 2:
        knots.append((knots[-1][0] + 1.0, knots[-1][1]))
    return tuple((round(x, 9), round(p, 6)) for x, p in knots)


def fit_split(
    features: FloatArray, esc: FloatArray, y: NDArray[np.bool_], options: FitOptions
) -> Fitted:
    """The coefficients for the best escalation gain (training likelihood), and calibration."""
    best: Fitted | None = None
    best_value = math.inf
    warm: FloatArray | None = None
    for gain in options.escalation_gains:
        factor = 1.0 + gain * esc
        beta, mu, value, warm = _poisson_fit(features * factor[:, None], y, options, warm)
        if value < best_value - 1e-9:
            best_value = value
            best = Fitted(beta=beta, mu=mu, gain=gain, knots=((0.0, 0.0), (1.0, 0.0)))
    assert best is not None
    best.knots = calibration_knots(best.intensity(features, esc), y)
    best.train_rows = int(y.size)
    best.base_rate = float(y.mean()) if y.size else 0.0
    best.extra["nll"] = best_value
    return best


def split_model(
    d: Design, start: float, params: ModelParams, options: FitOptions
) -> tuple[Fitted, IsotonicRegression] | None:
    """The model (and the calibrated decay baseline) of a validation split starting at `start`:
    trained on origins whose horizon ends by then, on events reported by then. None when those
    rows do not have both outcomes."""
    row_origin = np.tile(d.origins, d.places.lat.size)
    train = row_origin + params.forecast_horizon_days * terms.DAY_S <= start
    if not train.any():
        return None
    y_train = d.labels(start, params)[train]
    if not y_train.any() or y_train.all():
        return None
    model = fit_split(d.features[train], d.escalation[train], y_train, options)
    baseline = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        d.baseline[train], y_train
    )
    return model, baseline


# --------------------------------------------------------------------------------------------
# Scores of a prediction


def metrics(
    p: FloatArray, y: NDArray[np.bool_], climatology: FloatArray
) -> dict[str, float | None]:
    """ROC AUC, average precision, Brier score and Brier skill score against climatology."""
    if y.size == 0:
        return {"roc_auc": None, "average_precision": None, "brier": None, "brier_skill": None}
    both = 0 < int(y.sum()) < y.size
    brier = float(brier_score_loss(y, np.clip(p, 0.0, 1.0)))
    brier_clim = float(np.mean((climatology - y) ** 2))
    return {
        "roc_auc": round(float(roc_auc_score(y, p)), 4) if both else None,
        "average_precision": round(float(average_precision_score(y, p)), 4) if both else None,
        "brier": round(brier, 5),
        "brier_skill": round(1.0 - brier / brier_clim, 4) if brier_clim > 0 else None,
    }


def reliability(p: FloatArray, y: NDArray[np.bool_], bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted probability against observed frequency, by decile of the prediction."""
    order = np.argsort(p, kind="stable")
    out = []
    for k, part in enumerate(np.array_split(order, bins)):
        if part.size == 0:
            continue
        out.append(
            {
                "decile": k + 1,
                "mean_predicted": round(float(p[part].mean()), 4),
                "observed": round(float(y[part].mean()), 4),
                "count": int(part.size),
            }
        )
    return out


def band_table(p: FloatArray, y: NDArray[np.bool_], params: ModelParams) -> list[dict[str, Any]]:
    """Each band's share of the place-times and the observed frequency of the event in it."""
    values = terms.percent(p)
    bands = np.array([terms.band_for(float(v), params).value for v in values])
    out = []
    for band in Band:
        mask = bands == band.value
        out.append(
            {
                "band": band.value,
                "share": round(float(mask.mean()), 4) if p.size else 0.0,
                "observed": round(float(y[mask].mean()), 4) if mask.any() else None,
                "count": int(mask.sum()),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# The whole fit


def _params_from(
    fitted: Fitted, base: ModelParams, names: list[tuple[str, int, int]]
) -> ModelParams:
    n_s, n_h = len(base.spatial_scales_km), len(base.half_lives_days)
    coefficients: dict[str, list[list[float]]] = {
        g: [[0.0] * n_h for _ in range(n_s)] for g in base.group_names
    }
    for value, (g, s, h) in zip(fitted.beta, names, strict=True):
        coefficients[g][s][h] = float(f"{value:.6g}")
    return dataclasses.replace(
        base,
        coefficients={g: tuple(tuple(r) for r in m) for g, m in coefficients.items()},
        escalation_gain=fitted.gain,
        calibration=fitted.knots,
    )


def summary(params: ModelParams) -> dict[str, Any]:
    """What the fitted coefficients say, in the model's own terms: per group, its weight (the
    intensity of a fresh event at 0 km), the kernel at a few distances and the memory at a few
    ages, both relative to their value at 0."""
    tensor, names = terms.coefficient_tensor(params)
    distances = np.array([0.0, 10.0, 25.0, 50.0, 100.0, 200.0])
    ages = np.array([0.0, 7.0, 30.0, 90.0, 180.0, 365.0])
    kb = terms.spatial_basis(distances, params)
    tb = terms.temporal_basis(ages, params)
    out: dict[str, Any] = {"escalation_gain": params.escalation_gain, "groups": {}}
    for g, name in enumerate(names):
        b = tensor[g]
        peak = float(kb[0] @ b @ tb[0])
        kernel = kb @ b.sum(axis=1)
        memory = tb @ (kb[0] @ b)
        out["groups"][name] = {
            "weight": round(peak, 6),
            "kernel": {
                f"{int(d)}km": round(float(k / kernel[0]), 4) if kernel[0] > 0 else 0.0
                for d, k in zip(distances, kernel, strict=True)
            },
            "memory": {
                f"{int(a)}d": round(float(m / memory[0]), 4) if memory[0] > 0 else 0.0
                for a, m in zip(ages, memory, strict=True)
            },
            "regional_share": round(
                float(b[np.asarray(params.spatial_scales_km) >= 100.0].sum() / b.sum()), 4
            )
            if b.sum() > 0
            else 0.0,
        }
    return out


def fit(
    incidents: Sequence[Incident],
    base: ModelParams,
    *,
    target_points: Sequence[tuple[float, float]] = (),
    options: FitOptions | None = None,
    active: ModelParams | None = None,
    now: datetime | None = None,
) -> FitResult:
    """Fit base's free parameters on the history, with a report on rolling-origin validation
    splits; compares with `active` (a model version in force) on the same splits."""
    options = options or FitOptions()
    # One BLAS thread: the fit's products are small, and several threads fighting over two
    # shared cores made it fifteen times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit(incidents, base, target_points, options, active, now)


def _fit(
    incidents: Sequence[Incident],
    base: ModelParams,
    target_points: Sequence[tuple[float, float]],
    options: FitOptions,
    active: ModelParams | None,
    now: datetime | None,
) -> FitResult:
    incident_set = IncidentSet(incidents, base)
    point = np.arange(incident_set.n_point)
    if not (incident_set.fitted[point].any() and incident_set.forecast[point].any()):
        raise ValueError("no located incidents of the fitted and forecast categories to fit on")
    places = grid_places(incident_set.lat[point], incident_set.lon[point], target_points, options)
    origins = origin_times(
        incident_set.occurred_s[point], incident_set.reported_s[point], options, base
    )
    d = design(incident_set, places, origins, base)
    n_p, n_o = places.lat.size, origins.size
    row_origin = np.tile(origins, n_p)
    horizon = base.forecast_horizon_days * terms.DAY_S
    truth = d.labels(math.inf, base)

    first_validation = int(n_o * (1.0 - options.validation_share))
    blocks = [b for b in np.array_split(np.arange(first_validation, n_o), options.folds) if b.size]
    val_p, val_b, val_y, val_clim, val_active = [], [], [], [], []
    folds = []
    for block in blocks:
        start = float(origins[block[0]])
        split = split_model(d, start, base, options)
        if split is None:
            continue
        model, baseline_cal = split
        train = row_origin + horizon <= start
        val = np.isin(row_origin, origins[block])
        val_p.append(model.predict(d.features[val], d.escalation[val]))
        val_b.append(np.asarray(baseline_cal.predict(d.baseline[val])))
        val_y.append(truth[val])
        val_clim.append(np.full(int(val.sum()), model.base_rate))
        if active is not None:
            lat = np.repeat(places.lat, n_o)[val]
            lon = np.repeat(places.lon, n_o)[val]
            active_set = IncidentSet(incidents, active)
            val_active.append(probabilities(lat, lon, row_origin[val], active_set, active))
        folds.append(
            {
                "validation_start": _iso(start),
                "validation_end": _iso(float(origins[block[-1]])),
                "origins": int(block.size),
                "train_rows": int(train.sum()),
                "validation_rows": int(val.sum()),
                "escalation_gain": model.gain,
                "train_base_rate": round(model.base_rate, 4),
            }
        )
    if not val_y:
        raise ValueError("no validation split has training rows with and without events")
    p, b, y, clim = (np.concatenate(v) for v in (val_p, val_b, val_y, val_clim))

    everything = row_origin + horizon <= float(np.max(incident_set.reported_s))
    final = fit_split(d.features[everything], d.escalation[everything], truth[everything], options)
    params = _params_from(final, base, d.feature_names)
    validation: dict[str, Any] = {
        "model": metrics(p, y, clim),
        "baseline": metrics(b, y, clim),
        "climatology_rate": round(float(clim.mean()), 4),
        "observed_rate": round(float(y.mean()), 4),
    }
    beats: bool | None = None
    if active is not None:
        pa = np.concatenate(val_active)
        validation["active"] = metrics(pa, y, clim)
        beats = float(brier_score_loss(y, p)) < float(brier_score_loss(y, np.clip(pa, 0, 1)))
    report = {
        "fitted_at": _iso((now or datetime.now(UTC)).timestamp()),
        "question": {
            "distance_km": base.forecast_distance_km,
            "horizon_days": base.forecast_horizon_days,
            "categories": sorted(c.value for c in base.forecast_categories),
        },
        "data": {
            "incidents": d.n_incidents,
            "fitted_incidents": d.n_fitted,
            "places": int(n_p),
            "grid_places": places.n_grid,
            "target_places": int(n_p - places.n_grid),
            "origins": int(n_o),
            "first_origin": _iso(float(origins[0])),
            "last_origin": _iso(float(origins[-1])),
            "rows": int(n_p * n_o),
        },
        "folds": folds,
        "validation": validation,
        "reliability": reliability(p, y),
        "baseline_reliability": reliability(b, y),
        "bands": band_table(p, y, params),
        "fitted": summary(params),
        "beats_active": beats,
    }
    return FitResult(params=params, report=report, beats_active=beats)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")
