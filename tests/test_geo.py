"""Distances, polyline splitting and search boxes."""

import itertools
import math

import numpy as np
import pytest

from services.scoring.geo import (
    bbox_around,
    haversine_km,
    point_to_polyline_km,
    polyline_length_km,
    split_polyline,
)

BKO = (-7.9499, 12.5335)  # (lon, lat), Bamako-Senou
TOM = (-3.0075, 16.7305)  # Timbuktu


def test_bamako_to_timbuktu_is_about_700_km() -> None:
    d = float(haversine_km(BKO[1], BKO[0], TOM[1], TOM[0]))
    assert 690.0 < d < 715.0


def test_haversine_is_vectorised_and_zero_at_the_same_point() -> None:
    lats = np.array([BKO[1], TOM[1]])
    lons = np.array([BKO[0], TOM[0]])
    d = haversine_km(BKO[1], BKO[0], lats, lons)
    assert d.shape == (2,)
    assert d[0] == pytest.approx(0.0, abs=1e-9)
    assert d[1] == pytest.approx(float(haversine_km(BKO[1], BKO[0], TOM[1], TOM[0])))


def test_one_degree_of_latitude_is_about_111_km() -> None:
    assert float(haversine_km(0.0, 0.0, 1.0, 0.0)) == pytest.approx(111.195, abs=0.01)


def test_point_on_the_line_is_at_zero_distance() -> None:
    mid_lat, mid_lon = (BKO[1] + TOM[1]) / 2, (BKO[0] + TOM[0]) / 2
    d, seg = point_to_polyline_km(np.array([mid_lat]), np.array([mid_lon]), [BKO, TOM])
    assert d[0] < 1.5  # the great circle and the straight segment differ by well under a km here
    assert seg[0] == 0


def test_point_beyond_an_end_measures_to_the_endpoint() -> None:
    d, _ = point_to_polyline_km(np.array([17.5]), np.array([-2.0]), [BKO, TOM])
    assert d[0] == pytest.approx(float(haversine_km(17.5, -2.0, TOM[1], TOM[0])), rel=1e-9)


def test_distance_to_polyline_matches_perpendicular_offset_and_picks_the_nearest_segment() -> None:
    line = [(0.0, 14.0), (1.0, 14.0), (1.0, 15.0)]
    lats = np.array([14.3, 14.5])
    lons = np.array([0.3, 1.3])
    d, seg = point_to_polyline_km(lats, lons, line)
    assert d[0] == pytest.approx(0.3 * 111.195, rel=0.01)
    assert d[1] == pytest.approx(0.3 * 111.195 * math.cos(math.radians(14.5)), rel=0.01)
    assert list(seg) == [0, 1]
    d_first, seg_first = point_to_polyline_km(np.array([13.9]), np.array([0.4]), line)
    assert seg_first[0] == 0
    assert d_first[0] == pytest.approx(0.1 * 111.195, rel=0.01)


def test_single_vertex_line_is_a_point() -> None:
    d, seg = point_to_polyline_km(np.array([TOM[1]]), np.array([TOM[0]]), [BKO])
    assert d[0] == pytest.approx(float(haversine_km(BKO[1], BKO[0], TOM[1], TOM[0])))
    assert seg[0] == 0


def test_polyline_length_sums_its_segments() -> None:
    via = (-5.0, 14.0)
    expected = float(haversine_km(BKO[1], BKO[0], via[1], via[0])) + float(
        haversine_km(via[1], via[0], TOM[1], TOM[0])
    )
    assert polyline_length_km([BKO, via, TOM]) == pytest.approx(expected)
    assert polyline_length_km([BKO]) == 0.0


def test_split_polyline_gives_contiguous_pieces_no_longer_than_the_limit() -> None:
    line = [BKO, (-5.0, 14.0), TOM]
    pieces = split_polyline(line, 25.0)
    total = polyline_length_km(line)
    assert len(pieces) == math.ceil(total / 25.0)
    assert pieces[0][0] == BKO
    assert pieces[-1][-1] == TOM
    for a, b in itertools.pairwise(pieces):
        assert a[-1] == b[0]
    lengths = [polyline_length_km(p) for p in pieces]
    assert max(lengths) <= 25.0 + 1e-6
    assert sum(lengths) == pytest.approx(total, rel=1e-9)


def test_split_polyline_keeps_a_short_line_whole() -> None:
    line = [(0.0, 14.0), (0.1, 14.0)]
    assert split_polyline(line, 25.0) == [line]


def test_bbox_around_contains_the_circle() -> None:
    min_lon, min_lat, max_lon, max_lat = bbox_around(14.0, 0.0, 100.0)
    assert min_lat == pytest.approx(14.0 - 100.0 / 111.195, rel=1e-3)
    assert max_lat == pytest.approx(14.0 + 100.0 / 111.195, rel=1e-3)
    # A point 100 km due east must be inside.
    east_lon = 100.0 / (111.195 * math.cos(math.radians(14.0)))
    assert min_lon < -east_lon
    assert east_lon < max_lon


def test_bbox_around_spans_all_longitudes_near_a_pole_or_across_the_antimeridian() -> None:
    assert bbox_around(89.5, 10.0, 100.0) == (-180.0, pytest.approx(88.6, abs=0.1), 180.0, 90.0)
    min_lon, _, max_lon, _ = bbox_around(0.0, 179.9, 50.0)
    assert (min_lon, max_lon) == (-180.0, 180.0)
