"""Distances on the Earth for scoring: great-circle, point to polyline, lengths and boxes."""

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0

# Keeps the points x segments matrices of point_to_polyline_km under ~8 MB each.
_MAX_MATRIX_CELLS = 1_000_000

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]
LonLat = tuple[float, float]


def haversine_km(
    lat1: ArrayLike | float,
    lon1: ArrayLike | float,
    lat2: ArrayLike | float,
    lon2: ArrayLike | float,
) -> FloatArray:
    """Great-circle distance in km between points in degrees; arguments broadcast."""
    phi1 = np.radians(np.asarray(lat1, dtype=np.float64))
    phi2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dlon = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin((phi2 - phi1) / 2.0) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlon / 2.0) ** 2
    # Rounding can push `a` a hair above 1 for antipodal points; arcsin would return NaN.
    return np.asarray(2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def _wrap_lon(dlon: FloatArray) -> FloatArray:
    """Longitude difference brought into [-180, 180)."""
    return np.asarray((dlon + 180.0) % 360.0 - 180.0)


def _line_array(line: Sequence[LonLat]) -> FloatArray:
    """A (lon, lat) polyline as an (n, 2) float array; rejects an empty line."""
    arr = np.asarray(line, dtype=np.float64).reshape(-1, 2)
    if arr.shape[0] == 0:
        raise ValueError("polyline has no vertices")
    return arr


def point_to_polyline_km(
    lats: ArrayLike, lons: ArrayLike, line: Sequence[LonLat]
) -> tuple[FloatArray, IndexArray]:
    """Distance in km of each point to a (lon, lat) polyline, and its nearest segment's index."""
    plat = np.atleast_1d(np.asarray(lats, dtype=np.float64))
    plon = np.atleast_1d(np.asarray(lons, dtype=np.float64))
    arr = _line_array(line)
    if arr.shape[0] == 1:
        dist = haversine_km(plat, plon, arr[0, 1], arr[0, 0])
        return dist, np.zeros(plat.shape[0], dtype=np.intp)

    lon_a, lat_a = arr[:-1, 0], arr[:-1, 1]
    lat_b = arr[1:, 1]
    dlon_ab = _wrap_lon(arr[1:, 0] - lon_a)
    dlat_ab = lat_b - lat_a
    # Local equirectangular frame per segment, scaled at the segment's mid-latitude.
    kx = np.cos(np.radians((lat_a + lat_b) / 2.0)) * KM_PER_DEGREE
    bx = dlon_ab * kx
    by = dlat_ab * KM_PER_DEGREE
    len2 = bx * bx + by * by
    safe_len2 = np.where(len2 > 0.0, len2, 1.0)

    n_seg = lon_a.shape[0]
    dist_out = np.empty(plat.shape[0], dtype=np.float64)
    seg_out = np.empty(plat.shape[0], dtype=np.intp)
    chunk = max(1, _MAX_MATRIX_CELLS // n_seg)
    for start in range(0, plat.shape[0], chunk):
        la = plat[start : start + chunk, None]
        lo = plon[start : start + chunk, None]
        px = _wrap_lon(lo - lon_a) * kx
        py = (la - lat_a) * KM_PER_DEGREE
        t = np.where(len2 > 0.0, np.clip((px * bx + py * by) / safe_len2, 0.0, 1.0), 0.0)
        # The cheap planar distance picks the nearest segment; haversine then measures only that
        # one, so long segments and far points keep great-circle accuracy.
        dx = px - t * bx
        dy = py - t * by
        nearest = np.argmin(dx * dx + dy * dy, axis=1)
        rows = np.arange(nearest.shape[0])
        tn = t[rows, nearest]
        seg_out[start : start + chunk] = nearest
        dist_out[start : start + chunk] = haversine_km(
            la[:, 0],
            lo[:, 0],
            lat_a[nearest] + tn * dlat_ab[nearest],
            lon_a[nearest] + tn * dlon_ab[nearest],
        )
    return dist_out, seg_out


def polyline_length_km(line: Sequence[LonLat]) -> float:
    """Great-circle length in km of a (lon, lat) polyline."""
    arr = _line_array(line)
    if arr.shape[0] < 2:
        return 0.0
    return float(np.sum(haversine_km(arr[:-1, 1], arr[:-1, 0], arr[1:, 1], arr[1:, 0])))


def _slerp(a: LonLat, b: LonLat, fraction: float) -> LonLat:
    """The point a given fraction of the way from a to b along the great circle."""
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    v1 = (math.cos(lat1) * math.cos(lon1), math.cos(lat1) * math.sin(lon1), math.sin(lat1))
    v2 = (math.cos(lat2) * math.cos(lon2), math.cos(lat2) * math.sin(lon2), math.sin(lat2))
    dot = max(-1.0, min(1.0, sum(x * y for x, y in zip(v1, v2, strict=True))))
    omega = math.acos(dot)
    if omega < 1e-12:
        return a
    w1 = math.sin((1.0 - fraction) * omega) / math.sin(omega)
    w2 = math.sin(fraction * omega) / math.sin(omega)
    x, y, z = (w1 * p + w2 * q for p, q in zip(v1, v2, strict=True))
    return (math.degrees(math.atan2(y, x)), math.degrees(math.atan2(z, math.hypot(x, y))))


def split_polyline(line: Sequence[LonLat], max_segment_km: float) -> list[list[LonLat]]:
    """Cut a (lon, lat) polyline into consecutive, equal-length pieces of at most max_segment_km."""
    if not max_segment_km > 0.0:
        raise ValueError("max_segment_km must be positive")
    points = [(float(lon), float(lat)) for lon, lat in _line_array(line)]
    if len(points) < 2:
        return [points]
    arr = np.asarray(points)
    seg_len = haversine_km(arr[:-1, 1], arr[:-1, 0], arr[1:, 1], arr[1:, 0])
    cum = np.concatenate(([0.0], np.cumsum(seg_len)))
    total = float(cum[-1])
    if total == 0.0:
        return [points]
    n_pieces = max(1, math.ceil(total / max_segment_km - 1e-9))
    cuts = [total * k / n_pieces for k in range(1, n_pieces)]

    pieces: list[list[LonLat]] = []
    current = [points[0]]
    cut_i = 0
    for j in range(len(points) - 1):
        while cut_i < len(cuts) and cuts[cut_i] < cum[j + 1]:
            fraction = (cuts[cut_i] - cum[j]) / seg_len[j]
            cut_point = _slerp(points[j], points[j + 1], float(fraction))
            current.append(cut_point)
            pieces.append(current)
            current = [cut_point]
            cut_i += 1
        current.append(points[j + 1])
        if cut_i < len(cuts) and cuts[cut_i] == cum[j + 1]:
            pieces.append(current)
            current = [points[j + 1]]
            cut_i += 1
    pieces.append(current)
    # Zero-length segments (repeated vertices) would otherwise survive as duplicate points.
    return [[p for i, p in enumerate(piece) if i == 0 or p != piece[i - 1]] for piece in pieces]


def bbox_spanning(
    min_lat: float, max_lat: float, min_lon: float, max_lon: float, radius_km: float
) -> tuple[float, float, float, float]:
    """(min_lon, min_lat, max_lon, max_lat) covering all within radius_km of a lat/lon box."""
    dlat = max(0.0, radius_km) / KM_PER_DEGREE
    lo_lat = max(-90.0, min_lat - dlat)
    hi_lat = min(90.0, max_lat + dlat)
    # The box is widest at its poleward edge; a box touching a pole spans every longitude.
    edge = max(abs(lo_lat), abs(hi_lat))
    cos_edge = math.cos(math.radians(edge))
    if edge >= 90.0 or cos_edge < 1e-9:
        return (-180.0, lo_lat, 180.0, hi_lat)
    # A small circle's longitude half-width is asin(sin(r)/cos(lat)); dlat/cos is a safe bound.
    dlon = dlat / cos_edge
    lo_lon = min_lon - dlon
    hi_lon = max_lon + dlon
    if lo_lon < -180.0 or hi_lon > 180.0 or hi_lon - lo_lon >= 360.0:
        # Crossing the antimeridian: every longitude, so nothing is missed.
        return (-180.0, lo_lat, 180.0, hi_lat)
    return (lo_lon, lo_lat, hi_lon, hi_lat)


def bbox_around(lat: float, lon: float, radius_km: float) -> tuple[float, float, float, float]:
    """(min_lon, min_lat, max_lon, max_lat) covering every point within radius_km of (lat, lon)."""
    return bbox_spanning(lat, lat, lon, lon, radius_km)
