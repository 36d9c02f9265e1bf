"""Seeded synthetic incident streams in ACLED and UCDP GED formats, for tests and benchmarks."""

# The world is invented (never a third-party data set): events cluster around real Sahel towns
# and along the roads between them, arrive as a self-exciting (Hawkes-like) cluster process, and
# are written the way ACLED and UCDP write theirs. About two thirds of the lethal political
# violence also gets a UCDP row, independently jittered, so a cross-source merge has known
# answers: `UcdpEvent.event_key` is the `Event.key` (the index in `generate`'s list) it describes.

from __future__ import annotations

import csv
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from typing import Literal, TextIO, TypedDict, TypeVar

import numpy as np
from numpy.typing import NDArray

from services.feeds.rows import spreadsheet_cell

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

KM_PER_DEGREE = 111.2
BRANCHING_RATIO = 0.6  # expected direct offspring per event
OFFSPRING_DELAY_DAYS = 2.5  # mean of the exponential delay parent -> offspring
OFFSPRING_SPREAD_KM = 10.0  # mean displacement parent -> offspring (gamma, shape 2)
# JNIM strikes several distant places within days to stretch the forces: this share of the
# offspring lands near another town or road, sooner (mean WAVE_DELAY_DAYS).
WAVE_SHARE = 0.15
WAVE_DELAY_DAYS = 1.0
MAX_GENERATIONS = 40
ROAD_MAX_KM = 400.0  # towns closer than this are joined by a road
ROAD_SHARE = 0.35  # share of background events on roads rather than around towns
ROAD_JITTER_KM = 3.0
TOWN_SCATTER_KM = (3.0, 10.0, 30.0)
TOWN_SCATTER_P = (0.35, 0.45, 0.20)
TOWN_NAME_KM = 8.0  # an event this close to a town is located at the town
UCDP_SHARE = 0.65  # share of eligible lethal events that UCDP also records
UCDP_MAX_OFFSET_KM = 7.5
UCDP_ONLY_SHARE = 0.05  # UCDP-only events, relative to the matched ones

Signal = Literal["", "kidnapping", "threat"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Town:
    """A place sites, roads and incidents cluster around; weight is its relative pull."""

    name: str
    lat: float
    lon: float
    country: str
    weight: float
    airport: bool
    on_river: bool = False


TOWNS: tuple[Town, ...] = (
    Town("Bamako", 12.64, -8.00, "MLI", 10, True, True),
    Town("Segou", 13.43, -6.26, "MLI", 4, False, True),
    Town("Mopti", 14.49, -4.18, "MLI", 5, True, True),
    Town("Timbuktu", 16.77, -3.00, "MLI", 4, True, True),
    Town("Gao", 16.27, -0.04, "MLI", 6, True, True),
    Town("Kidal", 18.44, 1.41, "MLI", 3, True),
    Town("Menaka", 15.92, 2.40, "MLI", 4, True),
    Town("Kayes", 14.45, -11.44, "MLI", 3, True),
    Town("Sikasso", 11.32, -5.67, "MLI", 4, True),
    Town("Koutiala", 12.39, -5.46, "MLI", 2, False),
    Town("Niono", 14.25, -5.99, "MLI", 2, False),
    Town("Douentza", 15.00, -2.95, "MLI", 2, False),
    Town("Tessalit", 20.20, 1.01, "MLI", 1, True),
    Town("Ouagadougou", 12.37, -1.52, "BFA", 10, True),
    Town("Bobo-Dioulasso", 11.18, -4.30, "BFA", 5, True),
    Town("Ouahigouya", 13.58, -2.42, "BFA", 3, False),
    Town("Djibo", 14.10, -1.63, "BFA", 3, False),
    Town("Dori", 14.03, -0.03, "BFA", 3, True),
    Town("Kaya", 13.09, -1.08, "BFA", 3, False),
    Town("Fada N'Gourma", 12.06, 0.36, "BFA", 3, False),
    Town("Gorom-Gorom", 14.44, -0.23, "BFA", 1, False),
    Town("Niamey", 13.51, 2.11, "NER", 9, True, True),
    Town("Tillaberi", 14.21, 1.45, "NER", 3, False, True),
    Town("Tera", 14.01, 0.75, "NER", 1, False),
    Town("Tahoua", 14.89, 5.27, "NER", 3, True),
    Town("Maradi", 13.50, 7.10, "NER", 4, True),
    Town("Zinder", 13.80, 8.99, "NER", 4, True),
    Town("Agadez", 16.97, 7.99, "NER", 3, True),
    Town("Arlit", 18.74, 7.39, "NER", 3, True),
    Town("Diffa", 13.32, 12.61, "NER", 2, True),
    Town("Kiffa", 16.62, -11.40, "MRT", 1, True),
    Town("Nema", 16.62, -7.26, "MRT", 1, True),
    Town("Sokoto", 13.06, 5.24, "NGA", 3, True),
    Town("Kano", 12.00, 8.52, "NGA", 6, True),
    Town("Maiduguri", 11.85, 13.16, "NGA", 5, True),
    Town("N'Djamena", 12.13, 15.05, "TCD", 6, True),
    Town("Mao", 14.12, 15.31, "TCD", 1, False),
    Town("Tamanrasset", 22.79, 5.53, "DZA", 2, True),
)

# (admin1, admin2) of each town, as ACLED spells them.
TOWN_ADMIN: dict[str, tuple[str, str]] = {
    "Bamako": ("Bamako", "Bamako"),
    "Segou": ("Segou", "Segou"),
    "Mopti": ("Mopti", "Mopti"),
    "Timbuktu": ("Timbuktu", "Timbuktu"),
    "Gao": ("Gao", "Gao"),
    "Kidal": ("Kidal", "Kidal"),
    "Menaka": ("Menaka", "Menaka"),
    "Kayes": ("Kayes", "Kayes"),
    "Sikasso": ("Sikasso", "Sikasso"),
    "Koutiala": ("Sikasso", "Koutiala"),
    "Niono": ("Segou", "Niono"),
    "Douentza": ("Mopti", "Douentza"),
    "Tessalit": ("Kidal", "Tessalit"),
    "Ouagadougou": ("Centre", "Kadiogo"),
    "Bobo-Dioulasso": ("Hauts-Bassins", "Houet"),
    "Ouahigouya": ("Nord", "Yatenga"),
    "Djibo": ("Sahel", "Soum"),
    "Dori": ("Sahel", "Seno"),
    "Kaya": ("Centre-Nord", "Sanmatenga"),
    "Fada N'Gourma": ("Est", "Gourma"),
    "Gorom-Gorom": ("Sahel", "Oudalan"),
    "Niamey": ("Niamey", "Niamey"),
    "Tillaberi": ("Tillaberi", "Tillaberi"),
    "Tera": ("Tillaberi", "Tera"),
    "Tahoua": ("Tahoua", "Tahoua"),
    "Maradi": ("Maradi", "Maradi"),
    "Zinder": ("Zinder", "Mirriah"),
    "Agadez": ("Agadez", "Tchirozerine"),
    "Arlit": ("Agadez", "Arlit"),
    "Diffa": ("Diffa", "Diffa"),
    "Kiffa": ("Assaba", "Kiffa"),
    "Nema": ("Hodh Ech Chargi", "Nema"),
    "Sokoto": ("Sokoto", "Sokoto North"),
    "Kano": ("Kano", "Kano Municipal"),
    "Maiduguri": ("Borno", "Maiduguri"),
    "N'Djamena": ("N'Djamena", "N'Djamena"),
    "Mao": ("Kanem", "Kanem"),
    "Tamanrasset": ("Tamanrasset", "Tamanrasset"),
}


@dataclass(frozen=True, slots=True)
class Country:
    """A country's codes and the armed actors ACLED names there."""

    name: str
    iso_numeric: int
    ucdp_id: int  # Gleditsch-Ward code, as UCDP's country_id
    acled_region: str
    state: str
    state_short: str
    jihadists: tuple[tuple[str, str], tuple[str, str]]  # (ACLED name, name in notes)
    militias: tuple[tuple[str, int, str], ...]  # (ACLED name, inter code, name in notes)
    adm_suffixes: tuple[str, str]  # how UCDP suffixes adm_1 and adm_2
    has_admin3: bool


_JNIM = ("JNIM: Group for Support of Islam and Muslims", "JNIM")
_ISS = ("Islamic State (Sahel)", "Islamic State Sahel (ISSP)")
_JAS = ("Boko Haram - Jamaatu Ahli is-Sunnah lid-Dawati wal-Jihad", "Boko Haram (JAS)")
_ISWAP = ("ISWAP: Islamic State West Africa Province", "ISWAP")

COUNTRIES: dict[str, Country] = {
    "MLI": Country(
        "Mali", 466, 432, "Western Africa",
        "Military Forces of Mali (2021-)", "the Malian armed forces (FAMa)", (_JNIM, _ISS),
        (("Dozo Communal Militia (Mali)", 4, "Dozo hunters"),
         ("Dan Na Ambassagou", 4, "Dan Na Ambassagou militiamen")),
        (" region", " cercle"), True,
    ),
    "BFA": Country(
        "Burkina Faso", 854, 439, "Western Africa",
        "Military Forces of Burkina Faso (2022-)", "the Burkinabe army", (_JNIM, _ISS),
        (("VDP: Volunteers for the Defense of the Homeland", 3, "VDP volunteers"),),
        (" region", " province"), True,
    ),
    "NER": Country(
        "Niger", 562, 436, "Western Africa",
        "Military Forces of Niger (2023-)", "the Nigerien army", (_JNIM, _ISS),
        (("Fulani Ethnic Militia (Niger)", 4, "Fulani militiamen"),),
        (" region", " department"), True,
    ),
    "MRT": Country(
        "Mauritania", 478, 435, "Western Africa",
        "Military Forces of Mauritania (2019-)", "the Mauritanian army", (_JNIM, _ISS),
        (("Unidentified Communal Militia (Mauritania)", 4, "communal militiamen"),),
        (" region", " department"), False,
    ),
    "NGA": Country(
        "Nigeria", 566, 475, "Western Africa",
        "Military Forces of Nigeria (2023-)", "the Nigerian army", (_JAS, _ISWAP),
        (("Civilian JTF", 3, "Civilian JTF members"),),
        (" state", " LGA"), False,
    ),
    "TCD": Country(
        "Chad", 148, 483, "Middle Africa",
        "Military Forces of Chad (2021-)", "the Chadian army", (_JAS, _ISWAP),
        (("Unidentified Communal Militia (Chad)", 4, "communal militiamen"),),
        (" province", " department"), False,
    ),
    "DZA": Country(
        "Algeria", 12, 615, "Northern Africa",
        "Military Forces of Algeria (2019-)", "the Algerian army", (_JNIM, _ISS),
        (("Unidentified Communal Militia (Algeria)", 4, "communal militiamen"),),
        (" province", " district"), False,
    ),
}  # fmt: skip

# ACLED renamed the Russian force in Mali when Wagner handed over to the Africa Corps.
AFRICA_CORPS_FROM = date(2025, 6, 6)

INTER_LABELS: dict[int, str] = {
    1: "State forces",
    2: "Rebel group",
    3: "Political militia",
    4: "Identity militia",
    5: "Rioters",
    6: "Protesters",
    7: "Civilians",
    8: "External/Other forces",
}

Role = Literal[
    "", "jnim", "is", "state", "external", "militia", "unidentified", "civilians", "protesters",
    "rioters",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Kind:
    """One ACLED sub-event type: its parents, its share of events, its fatalities and actors."""

    sub_event_type: str
    event_type: str
    disorder_type: str
    share: float
    zero_fatality_p: float
    fatality_mu: float  # lognormal tail of the lethal events
    fatality_sigma: float
    actor_roles: tuple[tuple[Role, Role, float], ...]  # (actor1, actor2, weight)


_PV = "Political violence"
_SD = "Strategic developments"
_DEMO = "Demonstrations"
_VAC = "Violence against civilians"
_EXPL = "Explosions/Remote violence"

# Roughly the central Sahel mix of ACLED events (Mali, Burkina Faso, Niger, 2022-2025).
KINDS: tuple[Kind, ...] = (
    Kind("Attack", _VAC, _PV, 0.27, 0.45, 0.6, 1.0, (
        ("jnim", "civilians", 0.45), ("is", "civilians", 0.20), ("state", "civilians", 0.12),
        ("external", "civilians", 0.05), ("militia", "civilians", 0.06),
        ("unidentified", "civilians", 0.12))),
    Kind("Armed clash", "Battles", _PV, 0.22, 0.35, 1.1, 1.2, (
        ("state", "jnim", 0.38), ("state", "is", 0.17), ("militia", "jnim", 0.12),
        ("jnim", "is", 0.10), ("state", "unidentified", 0.05), ("militia", "is", 0.05),
        ("jnim", "militia", 0.08), ("external", "jnim", 0.05))),
    Kind("Remote explosive/landmine/IED", _EXPL, _PV, 0.07, 0.50, 0.7, 0.9, (
        ("jnim", "state", 0.40), ("is", "state", 0.12), ("unidentified", "state", 0.28),
        ("unidentified", "civilians", 0.12), ("jnim", "civilians", 0.08))),
    Kind("Shelling/artillery/missile attack", _EXPL, _PV, 0.025, 0.75, 0.3, 0.8, (
        ("jnim", "state", 0.75), ("is", "state", 0.10), ("state", "jnim", 0.15))),
    Kind("Air/drone strike", _EXPL, _PV, 0.07, 0.30, 1.3, 1.1, (
        ("state", "jnim", 0.55), ("state", "is", 0.20), ("state", "civilians", 0.20),
        ("external", "jnim", 0.05))),
    Kind("Suicide bomb", _EXPL, _PV, 0.004, 0.15, 1.6, 1.0, (
        ("jnim", "state", 0.70), ("is", "state", 0.30))),
    Kind("Abduction/forced disappearance", _VAC, _PV, 0.08, 0.95, 0.0, 0.5, (
        ("jnim", "civilians", 0.50), ("is", "civilians", 0.15), ("state", "civilians", 0.10),
        ("unidentified", "civilians", 0.25))),
    Kind("Looting/property destruction", _SD, _SD, 0.05, 0.97, 0.0, 0.5, (
        ("jnim", "civilians", 0.45), ("is", "civilians", 0.15),
        ("unidentified", "civilians", 0.25), ("state", "civilians", 0.10),
        ("militia", "civilians", 0.05))),
    Kind("Non-state actor overtakes territory", "Battles", _PV, 0.012, 0.60, 1.5, 1.3, (
        ("jnim", "state", 0.60), ("is", "state", 0.20), ("jnim", "", 0.20))),
    Kind("Headquarters or base established", _SD, _SD, 0.006, 1.0, 0.0, 0.0, (
        ("state", "", 0.60), ("jnim", "", 0.30), ("external", "", 0.10))),
    Kind("Other", _SD, _SD, 0.012, 1.0, 0.0, 0.0, (("jnim", "", 1.0),)),
    Kind("Peaceful protest", "Protests", _DEMO, 0.06, 1.0, 0.0, 0.0, (("protesters", "", 1.0),)),
    Kind("Violent demonstration", "Riots", _DEMO, 0.015, 0.93, 0.0, 0.5, (
        ("rioters", "", 0.70), ("rioters", "civilians", 0.10), ("rioters", "state", 0.20))),
)  # fmt: skip

_KIND_P = np.array([k.share for k in KINDS]) / sum(k.share for k in KINDS)
_KIND_INDEX = {k.sub_event_type: i for i, k in enumerate(KINDS)}
_SAME_KIND_P = 0.6  # offspring repeat their parent's kind (retaliation, a campaign of IEDs)

ACLED_COLUMNS_NEW: tuple[str, ...] = (
    "event_id_cnty", "event_date", "year", "time_precision", "disorder_type", "event_type",
    "sub_event_type", "actor1", "assoc_actor_1", "inter1", "actor2", "assoc_actor_2", "inter2",
    "interaction", "civilian_targeting", "iso", "region", "country", "admin1", "admin2",
    "admin3", "location", "latitude", "longitude", "geo_precision", "source", "source_scale",
    "notes", "fatalities", "tags", "timestamp",
)  # fmt: skip
_NEW_ONLY = frozenset({"disorder_type", "civilian_targeting", "tags"})
ACLED_COLUMNS_OLD: tuple[str, ...] = tuple(c for c in ACLED_COLUMNS_NEW if c not in _NEW_ONLY)

# HXL hashtags as the humanitarian data portals put them under ACLED's header; "" = no tag.
ACLED_HXL: dict[str, str] = {
    "event_id_cnty": "#event+code",
    "event_date": "#date+occurred",
    "year": "#date+year",
    "time_precision": "#date+precision",
    "disorder_type": "#event+type+disorder",
    "event_type": "#event+type",
    "sub_event_type": "#event+type+sub",
    "actor1": "#group+name+first",
    "assoc_actor_1": "#group+name+first+assoc",
    "inter1": "#group+type+first",
    "actor2": "#group+name+second",
    "assoc_actor_2": "#group+name+second+assoc",
    "inter2": "#group+type+second",
    "interaction": "#group+interaction",
    "civilian_targeting": "",
    "iso": "#country+code",
    "region": "#region+name",
    "country": "#country+name",
    "admin1": "#adm1+name",
    "admin2": "#adm2+name",
    "admin3": "#adm3+name",
    "location": "#loc+name",
    "latitude": "#geo+lat",
    "longitude": "#geo+lon",
    "geo_precision": "#geo+precision",
    "source": "#meta+source",
    "source_scale": "",
    "notes": "#description",
    "fatalities": "#affected+killed",
    "tags": "",
    "timestamp": "#date+updated",
}

UCDP_COLUMNS: tuple[str, ...] = (
    "id", "relid", "year", "active_year", "code_status", "type_of_violence", "conflict_dset_id",
    "conflict_new_id", "conflict_name", "dyad_dset_id", "dyad_new_id", "dyad_name",
    "side_a_dset_id", "side_a_new_id", "side_a", "side_b_dset_id", "side_b_new_id", "side_b",
    "number_of_sources", "source_article", "source_office", "source_date", "source_headline",
    "source_original", "where_prec", "where_coordinates", "where_description", "adm_1", "adm_2",
    "latitude", "longitude", "geom_wkt", "priogrid_gid", "country", "country_id", "region",
    "event_clarity", "date_prec", "date_start", "date_end", "deaths_a", "deaths_b",
    "deaths_civilians", "deaths_unknown", "best", "high", "low",
)  # fmt: skip

_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """One underlying synthetic event, as ACLED records it; `key` is its index in date order."""

    key: int
    event_id_cnty: str
    day: date
    time_precision: int
    disorder_type: str
    event_type: str
    sub_event_type: str
    actor1: str
    assoc_actor_1: str
    inter1: int
    actor2: str
    assoc_actor_2: str
    inter2: int  # 0 when there is no second actor
    civilian_targeting: bool
    country: str  # ISO3
    admin1: str
    admin2: str
    admin3: str
    location: str
    lat: float
    lon: float
    geo_precision: int
    source: str
    source_scale: str
    notes: str
    fatalities: int
    tags: str
    timestamp: int  # unix seconds of ACLED's last edit
    signal: Signal  # what the notes reveal: an abduction, or a threat to firms or routes


@dataclass(frozen=True, slots=True)
class UcdpEvent:
    """One UCDP GED row; `event_key` is the `Event.key` it also describes, None if UCDP-only."""

    id: int
    event_key: int | None
    type_of_violence: int
    side_a: str
    side_b: str
    country: str  # ISO3
    adm_1: str
    adm_2: str
    where_coordinates: str
    where_description: str
    where_prec: int
    lat: float
    lon: float
    date_prec: int
    date_start: date
    date_end: date
    deaths_a: int
    deaths_b: int
    deaths_civilians: int
    deaths_unknown: int
    low: int
    high: int
    number_of_sources: int
    source_office: str
    source_headline: str
    event_clarity: int

    @property
    def best(self) -> int:
        """UCDP's best estimate: the sum of the deaths by side."""
        return self.deaths_a + self.deaths_b + self.deaths_civilians + self.deaths_unknown


def _town_arrays() -> tuple[FloatArray, FloatArray, FloatArray]:
    lat = np.array([t.lat for t in TOWNS], dtype=np.float64)
    lon = np.array([t.lon for t in TOWNS], dtype=np.float64)
    w = np.array([t.weight for t in TOWNS], dtype=np.float64)
    return lat, lon, w / w.sum()


def _planar_km(
    lat1: FloatArray, lon1: FloatArray, lat2: FloatArray, lon2: FloatArray
) -> FloatArray:
    """Equirectangular distance in km: exact enough at these latitudes and a few 100 km."""
    kx = np.cos(np.radians((lat1 + lat2) / 2.0))
    return np.asarray(np.hypot((lat2 - lat1), (lon2 - lon1) * kx) * KM_PER_DEGREE)


def _roads() -> tuple[tuple[Town, Town], ...]:
    lat, lon, _ = _town_arrays()
    d = _planar_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    n = len(TOWNS)
    return tuple(
        (TOWNS[i], TOWNS[j]) for i in range(n) for j in range(i + 1, n) if d[i, j] <= ROAD_MAX_KM
    )


_TOWN_NAMES = frozenset(t.name for t in TOWNS)

# Straight roads between every pair of towns within ROAD_MAX_KM of each other.
ROADS: tuple[tuple[Town, Town], ...] = _roads()


def _offset(
    lat: FloatArray, lon: FloatArray, km: FloatArray, bearing: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Points `km` away from (lat, lon) towards `bearing` (radians from north)."""
    dlat = km * np.cos(bearing) / KM_PER_DEGREE
    dlon = km * np.sin(bearing) / (KM_PER_DEGREE * np.cos(np.radians(lat)))
    return lat + dlat, lon + dlon


def _background_points(rng: np.random.Generator, n: int) -> tuple[FloatArray, FloatArray]:
    """Parent locations: Gaussian scatter around towns, or along roads with lateral jitter."""
    t_lat, t_lon, t_w = _town_arrays()
    town = rng.choice(len(TOWNS), size=n, p=t_w)
    sigma = rng.choice(np.array(TOWN_SCATTER_KM), size=n, p=np.array(TOWN_SCATTER_P))
    lat, lon = _offset(
        t_lat[town], t_lon[town], sigma * rng.normal(size=n), rng.uniform(0, 2 * np.pi, n)
    )
    index = {t.name: i for i, t in enumerate(TOWNS)}
    a = np.array([index[r[0].name] for r in ROADS])
    b = np.array([index[r[1].name] for r in ROADS])
    road_w = np.sqrt(t_w[a] * t_w[b])
    road = rng.choice(len(ROADS), size=n, p=road_w / road_w.sum())
    f = rng.uniform(size=n)
    r_lat = t_lat[a[road]] + f * (t_lat[b[road]] - t_lat[a[road]])
    r_lon = t_lon[a[road]] + f * (t_lon[b[road]] - t_lon[a[road]])
    r_lat, r_lon = _offset(
        r_lat, r_lon, ROAD_JITTER_KM * rng.normal(size=n), rng.uniform(0, 2 * np.pi, n)
    )
    on_road = rng.uniform(size=n) < ROAD_SHARE
    return np.where(on_road, r_lat, lat), np.where(on_road, r_lon, lon)


def _cluster_process(
    rng: np.random.Generator, rows: int, span_days: float
) -> tuple[FloatArray, FloatArray, FloatArray, IntArray]:
    """Exactly `rows` (time in days, lat, lon, kind index) of a Hawkes-like process, by time."""
    # Rounds of background (parent) events, uniform over the span, each with its cascade of
    # offspring (Poisson(BRANCHING_RATIO) children per event, later by an exponential delay, a
    # gamma-distributed distance away or, for WAVE_SHARE of them, anywhere; offspring past the
    # end are dropped), until there are at least `rows` events. The surplus (a few percent) is
    # removed by uniform random thinning, which keeps the clusters' shape; the rest is sorted.
    parts: list[tuple[FloatArray, FloatArray, FloatArray, IntArray]] = []
    total = 0
    while total < rows:
        n = max(1, math.ceil((rows - total) * (1.0 - BRANCHING_RATIO) * 1.1))
        t = rng.uniform(0.0, span_days, n)
        lat, lon = _background_points(rng, n)
        kind = rng.choice(len(KINDS), size=n, p=_KIND_P).astype(np.int64)
        for _ in range(MAX_GENERATIONS):
            parts.append((t, lat, lon, kind))
            total += t.shape[0]
            counts = rng.poisson(BRANCHING_RATIO, size=t.shape[0])
            parent = np.repeat(np.arange(t.shape[0]), counts)
            if parent.shape[0] == 0:
                break
            m = parent.shape[0]
            wave = rng.uniform(size=m) < WAVE_SHARE
            delay = np.where(wave, WAVE_DELAY_DAYS, OFFSPRING_DELAY_DAYS)
            ct = t[parent] + rng.exponential(1.0, m) * delay
            clat, clon = _offset(
                lat[parent],
                lon[parent],
                rng.gamma(2.0, OFFSPRING_SPREAD_KM / 2.0, m),
                rng.uniform(0, 2 * np.pi, m),
            )
            far_lat, far_lon = _background_points(rng, m)
            clat, clon = np.where(wave, far_lat, clat), np.where(wave, far_lon, clon)
            same = rng.uniform(size=m) < _SAME_KIND_P
            ckind = np.where(same, kind[parent], rng.choice(len(KINDS), size=m, p=_KIND_P))
            keep = ct < span_days
            t, lat, lon, kind = ct[keep], clat[keep], clon[keep], ckind[keep].astype(np.int64)
            if t.shape[0] == 0:
                break
    t = np.concatenate([p[0] for p in parts])
    lat = np.concatenate([p[1] for p in parts])
    lon = np.concatenate([p[2] for p in parts])
    kind = np.concatenate([p[3] for p in parts])
    chosen = np.sort(rng.choice(t.shape[0], size=rows, replace=False))
    order = chosen[np.argsort(t[chosen], kind="stable")]
    return t[order], lat[order], lon[order], kind[order]


_SYL_A = ("Ba", "Bou", "Da", "Dia", "Do", "Fa", "Ga", "Go", "Ka", "Kou", "Ma", "Mo", "Na", "Ni",
          "Sa", "Se", "So", "Ta", "Ti", "Tou", "Ya", "Zi", "Koro", "Sam", "Ham")  # fmt: skip
_SYL_B = ("la", "li", "na", "ni", "ra", "ri", "ko", "ro", "ga", "go", "ma", "mo", "ba", "dou",
          "sso", "ssa", "bi", "ne")  # fmt: skip
_SYL_C = ("", "", "", "bougou", "koro", "dji", "ga", "re", "kana", "dougou", "tenga", "gou",
          "ye", "bé")  # fmt: skip


def _place_names(lat: FloatArray, lon: FloatArray, cell_deg: float, salt: int) -> list[str]:
    """A made-up village name per grid cell, so nearby events share a place name."""
    iy = np.floor(lat / cell_deg).astype(np.int64) + 10_000
    ix = np.floor(lon / cell_deg).astype(np.int64) + 10_000
    h = (iy * 73_856_093 ^ ix * 19_349_663 ^ salt * 83_492_791) % 4_294_967_291
    h = (h * 40_503) % 4_294_967_291
    a = h % len(_SYL_A)
    b = (h // len(_SYL_A)) % len(_SYL_B)
    c = (h // (len(_SYL_A) * len(_SYL_B))) % len(_SYL_C)
    return [
        _SYL_A[i] + _SYL_B[j] + _SYL_C[k]
        for i, j, k in zip(a.tolist(), b.tolist(), c.tolist(), strict=True)
    ]


def _long_date(d: date) -> str:
    return f"{d.day:02d} {_MONTHS[d.month - 1]} {d.year}"


def _pick(options: Sequence[_T], u: float) -> _T:
    return options[int(u * len(options))]  # u < 1, so the index stays in range


_NATIONALITIES = (
    ("Chinese", "China"), ("Turkish", "Turkey"), ("Indian", "India"), ("Iranian", "Iran"),
    ("Moroccan", "Morocco"), ("Russian", "Russia"), ("Egyptian", "Egypt"), ("Lebanese", "Lebanon"),
)  # fmt: skip
_SECTORS = ("gold mining", "mining", "road construction", "logistics", "fuel transport",
            "telecommunications")  # fmt: skip
_NUMBERS = ("two", "two", "three", "four", "five", "several")
_SOURCES: dict[str, tuple[str, ...]] = {
    "MLI": ("Mali Actu", "Studio Tamani", "Malijet", "Menastream", "Le Monde", "AFP", "RFI",
            "Undisclosed Source", "Twitter"),
    "BFA": ("Lefaso.net", "Burkina24", "AIB", "Human Rights Watch", "AFP", "Undisclosed Source",
            "Facebook"),
    "NER": ("ActuNiger", "Aniamey", "RFI", "Reuters", "Air Info Agadez", "Undisclosed Source"),
}  # fmt: skip
_SOURCES_OTHER = ("AFP", "Reuters", "RFI", "Jeune Afrique", "Premium Times", "Whatsapp")
_SOURCE_SCALES = ("National", "National", "Subnational", "International", "New media",
                  "National-International", "Local partner-Other", "Other-National")  # fmt: skip

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Attack": (
        "{a1} attacked civilians in {place} ({admin2}, {admin1}).",
        "{a1} raided {place} ({admin2}, {admin1}), firing on residents and burning granaries.",
        "{a1} stopped a bus near {place} ({admin1}) on the road to {road_to} and assaulted the "
        "passengers.",
        "{a1} attacked herders near {place} ({admin2}, {admin1}) and stole their cattle.",
    ),
    "Armed clash": (
        "{a1} clashed with {a2} near {place} ({admin2}, {admin1}).",
        "{a1} ambushed {a2} between {place} and {road_to} ({admin1}).",
        "fighting broke out between {a1} and {a2} in {place} ({admin2}, {admin1}) and lasted "
        "several hours.",
    ),
    "Remote explosive/landmine/IED": (
        "a vehicle carrying {a2} struck an improvised explosive device attributed to {a1} near "
        "{place} ({admin2}, {admin1}).",
        "an IED laid by {a1} exploded on the road between {place} and {road_to} ({admin1}) as {a2} "
        "passed.",
    ),
    "Shelling/artillery/missile attack": (
        "{a1} fired mortar shells at positions of {a2} in {place} ({admin2}, {admin1}).",
        "{a1} shelled positions of {a2} near {place} ({admin2}, {admin1}).",
    ),
    "Air/drone strike": (
        "{a1} carried out a drone strike on {a2} near {place} ({admin2}, {admin1}).",
        "an air strike by {a1} hit a gathering of {a2} in {place} ({admin2}, {admin1}).",
    ),
    "Suicide bomb": (
        "a suicide bomber of {a1} drove a vehicle-borne IED into the camp of {a2} in {place} "
        "({admin2}, {admin1}).",
    ),
    "Abduction/forced disappearance": (
        "{a1} abducted {n} civilians in {place} ({admin2}, {admin1}).",
        "{a1} kidnapped the village chief of {place} ({admin2}, {admin1}).",
        "{a1} abducted {n} herders near {place} ({admin1}).",
    ),
    "Looting/property destruction": (
        "{a1} looted shops and livestock in {place} ({admin2}, {admin1}).",
        "{a1} burned the health centre and the school of {place} ({admin2}, {admin1}).",
    ),
    "Non-state actor overtakes territory": (
        "{a1} took control of {place} ({admin2}, {admin1}) after the withdrawal of {a2}.",
    ),
    "Headquarters or base established": (
        "{a1} established a new base in {place} ({admin2}, {admin1}).",
    ),
    "Other": (
        "{a1} released a communique rejecting the army's claims and calling for a new "
        "government in {country}.",
    ),
    "Peaceful protest": (
        "residents of {place} ({admin2}, {admin1}) demonstrated against insecurity and demanded "
        "more army patrols.",
        "traders in {place} ({admin1}) protested against fuel shortages.",
        "women marched in {place} ({admin1}) to demand the release of abducted relatives.",
    ),
    "Violent demonstration": (
        "youths in {place} ({admin2}, {admin1}) blocked the road and burned tyres after an "
        "attack on the town.",
        "rioters in {place} ({admin1}) threw stones at {a2} and burned tyres.",
    ),
}
_KIDNAP_IN_ATTACK = (
    "{a1} attacked a gold mining site near {place} ({admin2}, {admin1}); the gunmen abducted "
    "{n} foreign nationals ({nationality}) working for a mining company.",
    "{a1} attacked a convoy of a {sector} company near {place} ({admin1}); {n} {nationality} "
    "workers were kidnapped and the trucks burned.",
    "{a1} ambushed a vehicle near {place} ({admin2}, {admin1}) and took {n} expatriate "
    "engineers hostage.",
)
_KIDNAP_NOTABLE = (
    "{a1} took {n} bus passengers hostage near {place} ({admin1}) on the road to {road_to}.",
    "{a1} kidnapped an expatriate employee of a {nationality} {sector} company near {place} "
    "({admin2}, {admin1}).",
    "{a1} stopped a {sector} convoy near {place} ({admin1}) and abducted {n} drivers; the "
    "hostages were taken towards the border.",
)
_THREATS = (
    "{a1} released a video in which it threatened foreign mining companies operating in "
    "{country} and told them to seek its authorization or be targeted.",
    "{a1} threatened to attack convoys supplying {town} and told transporters to stop using the "
    "road ({admin1}).",
    "{a1} threatened foreign companies in {country} working with the government and their "
    "expatriate staff.",
)
_AIRPORT_THREAT = (
    "{a1} threatened to target {town} airport and warned airlines to suspend their flights "
    "({admin1})."
)
_AIRPORT_SHELLING = "{a1} fired rockets at {town} airport and the nearby military base ({admin1})."
_CROWDS = ("no report", "no report", "around 50", "hundreds")
_ATTACK_KIDNAP_P = 0.04
_ABDUCTION_NOTABLE_P = 0.3
_THREAT_P = 0.8


@dataclass(frozen=True, slots=True)
class _Actor:
    name: str
    inter: int
    short: str


@cache
def _actor(role: Role, iso: str, africa_corps: bool, variant: int) -> _Actor:
    """The actor playing `role` in a country; `variant` picks among the country's militias."""
    c = COUNTRIES[iso]
    if role == "jnim":
        return _Actor(c.jihadists[0][0], 2, c.jihadists[0][1])
    if role == "is":
        return _Actor(c.jihadists[1][0], 2, c.jihadists[1][1])
    if role == "external" and iso == "MLI":
        name = "Africa Corps" if africa_corps else "Wagner Group"
        return _Actor(name, 8, name)
    if role in ("state", "external"):
        return _Actor(c.state, 1, c.state_short)
    if role == "militia":
        name, inter, short = c.militias[variant % len(c.militias)]
        return _Actor(name, inter, short)
    if role == "unidentified":
        return _Actor(f"Unidentified Armed Group ({c.name})", 3, "unidentified gunmen")
    if role == "civilians":
        return _Actor(f"Civilians ({c.name})", 7, "civilians")
    if role == "protesters":
        return _Actor(f"Protesters ({c.name})", 6, "protesters")
    if role == "rioters":
        return _Actor(f"Rioters ({c.name})", 5, "rioters")
    return _Actor("", 0, "")


def _fatality_sentence(kind: Kind, fatalities: int) -> str:
    if kind.zero_fatality_p >= 1.0:
        return ""
    if fatalities == 0:
        return " No fatalities reported."
    if fatalities == 1:
        return " 1 person was killed."
    return f" {fatalities} people were killed."


def _actor_pairs(rng: np.random.Generator, kind: IntArray) -> IntArray:
    """Index into its kind's `actor_roles` for each event."""
    n = len(kind)
    pair = np.zeros(n, dtype=np.int64)
    u = rng.uniform(size=n)
    for i, k in enumerate(KINDS):
        mask = kind == i
        weights = np.array([w for _, _, w in k.actor_roles], dtype=np.float64)
        edges: FloatArray = np.cumsum(weights) / weights.sum()
        picked = np.searchsorted(edges, u[mask], side="right")
        pair[mask] = np.minimum(picked, len(k.actor_roles) - 1)
    return pair


def _template(
    kind: Kind, town: Town, roles: tuple[Role, Role], at_town: bool, u: float, v: float
) -> tuple[str, Signal]:
    """The notes template of one event, and what it reveals beyond the sub-event type."""
    sub = kind.sub_event_type
    armed_group = roles[0] in ("jnim", "is", "unidentified")
    if sub == "Attack" and armed_group and v < _ATTACK_KIDNAP_P:
        return _pick(_KIDNAP_IN_ATTACK, u), "kidnapping"
    if sub == "Abduction/forced disappearance":
        notable = armed_group and v < _ABDUCTION_NOTABLE_P
        return _pick(_KIDNAP_NOTABLE if notable else _TEMPLATES[sub], u), "kidnapping"
    if sub == "Other" and v < _THREAT_P:
        return _pick((*_THREATS, _AIRPORT_THREAT) if town.airport else _THREATS, u), "threat"
    airfield = at_town and town.airport and roles == ("jnim", "state")
    if sub == "Shelling/artillery/missile attack" and airfield and v < 0.3:
        return _AIRPORT_SHELLING, ""
    return _pick(_TEMPLATES[sub], u), ""


def generate(seed: int, rows: int, start: date, end: date) -> list[Event]:
    """Exactly `rows` synthetic events in [start, end), sorted by date; same seed, same events."""
    if rows < 0:
        raise ValueError("rows must be >= 0")
    if end <= start:
        raise ValueError("end must be after start")
    if rows == 0:
        return []
    rng = np.random.default_rng(seed)
    t, lat, lon, kind = _cluster_process(rng, rows, float((end - start).days))
    n = rows
    t_lat, t_lon, _ = _town_arrays()

    time_precision = rng.choice(np.array([1, 2, 3]), size=n, p=np.array([0.86, 0.11, 0.03]))
    geo_precision = rng.choice(np.array([1, 2, 3]), size=n, p=np.array([0.74, 0.21, 0.05]))
    geo_precision[kind == _KIND_INDEX["Other"]] = 3
    dist = _planar_km(lat[:, None], lon[:, None], t_lat[None, :], t_lon[None, :])
    nearest = np.argmin(dist, axis=1)
    near_km = dist[np.arange(n), nearest]
    dist[np.arange(n), nearest] = np.inf
    second = np.argmin(dist, axis=1)
    # ACLED puts a region-precision event at the region's main town.
    snap = geo_precision == 3
    lat = np.round(np.where(snap, t_lat[nearest], lat), 4).astype(np.float64)
    lon = np.round(np.where(snap, t_lon[nearest], lon), 4).astype(np.float64)
    at_town = snap | (near_km <= TOWN_NAME_KM)
    villages = _place_names(lat, lon, 0.05, 1)
    communes = _place_names(lat, lon, 0.25, 2)

    k_params = np.array([(k.zero_fatality_p, k.fatality_mu, k.fatality_sigma) for k in KINDS])
    lethal = rng.uniform(size=n) >= k_params[kind, 0]
    tail = np.floor(rng.lognormal(k_params[kind, 1], np.maximum(k_params[kind, 2], 1e-9)))
    fatalities = np.where(lethal, np.minimum(1 + tail, 400), 0).astype(np.int64)

    # ACLED's timestamp is its last edit: days after the event, for some a re-edit much later.
    day_index = np.floor(t).astype(np.int64)
    edit_delay = 86_400.0 * (2.0 + rng.exponential(5.0, n)) + rng.uniform(0, 86_400.0, n)
    re_edited = rng.uniform(size=n) < 0.05
    edit_delay += np.where(re_edited, rng.uniform(30.0, 600.0, n) * 86_400.0, 0.0)
    day0 = (start - date(1970, 1, 1)).days
    timestamp = ((day0 + day_index) * 86_400 + edit_delay).astype(np.int64)

    town_country = np.array([town.country for town in TOWNS])
    country = town_country[nearest]
    id_gap = rng.integers(1, 3, size=n)
    event_number = np.zeros(n, dtype=np.int64)
    for iso in COUNTRIES:
        mask = country == iso
        event_number[mask] = int(rng.integers(1_000, 30_000)) + np.cumsum(id_gap[mask])

    pair = _actor_pairs(rng, kind).tolist()
    u = rng.uniform(size=(n, 10)).tolist()
    days = [start + timedelta(days=d) for d in range(int(day_index[-1]) + 1)]
    long_days = [_long_date(d) for d in days]
    kind_l, nearest_l, second_l = kind.tolist(), nearest.tolist(), second.tolist()
    day_l, at_town_l, country_l = day_index.tolist(), at_town.tolist(), country.tolist()
    fatalities_l, lat_l, lon_l = fatalities.tolist(), lat.tolist(), lon.tolist()
    tp_l, gp_l, ts_l, number_l = (
        time_precision.tolist(),
        geo_precision.tolist(),
        timestamp.tolist(),
        event_number.tolist(),
    )
    events: list[Event] = []
    for i in range(n):
        k = KINDS[kind_l[i]]
        iso = country_l[i]
        c = COUNTRIES[iso]
        town = TOWNS[nearest_l[i]]
        day = days[day_l[i]]
        ui = u[i]
        role1, role2, _ = k.actor_roles[pair[i]]
        variant = int(ui[1] * 8)
        a1 = _actor(role1, iso, day >= AFRICA_CORPS_FROM, variant)
        a2 = _actor(role2, iso, day >= AFRICA_CORPS_FROM, variant)
        assoc1 = assoc2 = ""
        if role1 == "state" and iso == "MLI" and ui[8] < 0.35:
            assoc1 = _actor("external", iso, day >= AFRICA_CORPS_FROM, 0).name
        if role2 == "civilians" and ui[8] < 0.25:
            assoc2 = f"Fulani Ethnic Group ({c.name})"
        template, signal = _template(k, town, (role1, role2), at_town_l[i], ui[2], ui[3])
        nationality, nat_country = _pick(_NATIONALITIES, ui[4])
        if signal == "kidnapping" and ("{nationality}" in template or "expatriate" in template):
            a2 = _Actor(f"Civilians ({nat_country})", 7, "civilians")
            assoc2 = f"Labor Group ({nat_country})"
        admin1, admin2 = TOWN_ADMIN[town.name]
        place = town.name if at_town_l[i] else villages[i]
        body = template.format(
            a1=a1.short,
            a2=a2.short or "government forces",
            place=place,
            town=town.name,
            road_to=TOWNS[second_l[i]].name if place == town.name else town.name,
            admin1=admin1,
            admin2=admin2,
            country=c.name,
            n=_pick(_NUMBERS, ui[4]),
            nationality=nationality,
            sector=_pick(_SECTORS, ui[5]),
        )
        f = fatalities_l[i]
        notes = f"On {long_days[day_l[i]]}, {body}{_fatality_sentence(k, f)}"
        tags = ""
        if k.event_type == "Protests":
            tags = "crowd size=" + _pick(_CROWDS, ui[9])
            notes += f" [{tags}]"
        source = _pick(_SOURCES.get(iso, _SOURCES_OTHER), ui[6])
        if ui[7] < 0.3 and (second_source := _pick(_SOURCES_OTHER, ui[9])) != source:
            source = f"{source}; {second_source}"
        events.append(
            Event(
                key=i,
                event_id_cnty=f"{iso}{number_l[i]}",
                day=day,
                time_precision=tp_l[i],
                disorder_type=k.disorder_type,
                event_type=k.event_type,
                sub_event_type=k.sub_event_type,
                actor1=a1.name,
                assoc_actor_1=assoc1,
                inter1=a1.inter,
                actor2=a2.name,
                assoc_actor_2=assoc2 if a2.name else "",
                inter2=a2.inter,
                civilian_targeting=a2.inter == 7,
                country=iso,
                admin1=admin1,
                admin2=admin2,
                admin3=(town.name if at_town_l[i] else communes[i]) if c.has_admin3 else "",
                location=place,
                lat=lat_l[i],
                lon=lon_l[i],
                geo_precision=gp_l[i],
                source=source,
                source_scale=_pick(_SOURCE_SCALES, ui[7]),
                notes=notes,
                fatalities=f,
                tags=tags,
                timestamp=ts_l[i],
                signal=signal,
            )
        )
    return events


class AcledPage(TypedDict):
    """One page of the ACLED API's JSON answer; every value in `data` is a string."""

    status: int
    success: bool
    count: int
    data: list[dict[str, str]]


def _interaction(inter1: int, inter2: int, *, text: bool) -> str:
    if inter2 == 0:
        return f"{INTER_LABELS[inter1]} only" if text else str(inter1 * 10)
    lo, hi = sorted((inter1, inter2))
    return f"{INTER_LABELS[lo]}-{INTER_LABELS[hi]}" if text else str(lo * 10 + hi)


def acled_values(
    event: Event,
    *,
    date_style: Literal["iso", "long"] = "iso",
    columns: Literal["new", "old"] = "new",
) -> dict[str, str]:
    """One event as ACLED writes it: column -> text, in the order of that column set."""
    # Newer exports write inter codes as labels ("Rebel group") and, here, `iso` as ISO3; older
    # ones write inter codes as numbers, interaction as two digits (12, or 20 for one actor)
    # and `iso` as the numeric ISO 3166 code.
    new = columns == "new"
    c = COUNTRIES[event.country]
    if new:
        inter1 = INTER_LABELS[event.inter1]
        inter2 = INTER_LABELS[event.inter2] if event.inter2 else ""
    else:
        inter1, inter2 = str(event.inter1), str(event.inter2)
    values = {
        "event_id_cnty": event.event_id_cnty,
        "event_date": _long_date(event.day) if date_style == "long" else event.day.isoformat(),
        "year": str(event.day.year),
        "time_precision": str(event.time_precision),
        "disorder_type": event.disorder_type,
        "event_type": event.event_type,
        "sub_event_type": event.sub_event_type,
        "actor1": event.actor1,
        "assoc_actor_1": event.assoc_actor_1,
        "inter1": inter1,
        "actor2": event.actor2,
        "assoc_actor_2": event.assoc_actor_2,
        "inter2": inter2,
        "interaction": _interaction(event.inter1, event.inter2, text=new),
        "civilian_targeting": "Civilian targeting" if event.civilian_targeting else "",
        "iso": event.country if new else str(c.iso_numeric),
        "region": c.acled_region,
        "country": c.name,
        "admin1": event.admin1,
        "admin2": event.admin2,
        "admin3": event.admin3,
        "location": event.location,
        "latitude": f"{event.lat:.4f}",
        "longitude": f"{event.lon:.4f}",
        "geo_precision": str(event.geo_precision),
        "source": event.source,
        "source_scale": event.source_scale,
        "notes": event.notes,
        "fatalities": str(event.fatalities),
        "tags": event.tags,
        "timestamp": str(event.timestamp),
    }
    return values if new else {k: values[k] for k in ACLED_COLUMNS_OLD}


def write_acled_csv(
    events: Iterable[Event],
    stream: TextIO,
    *,
    hxl: bool = False,
    date_style: Literal["iso", "long"] = "iso",
    columns: Literal["new", "old"] = "new",
) -> None:
    """Write `events` as an ACLED CSV export; `hxl` adds the portals' second header row of tags."""
    header = ACLED_COLUMNS_NEW if columns == "new" else ACLED_COLUMNS_OLD
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    if hxl:
        writer.writerow([ACLED_HXL[c] for c in header])
    for event in events:
        values = acled_values(event, date_style=date_style, columns=columns).values()
        writer.writerow([spreadsheet_cell(v) for v in values])


def acled_api_pages(events: Sequence[Event], page_size: int) -> list[AcledPage]:
    """`events` as successive ACLED API answers of at most `page_size` rows each."""
    # The last page is always short: when the events fill their pages exactly (or there are
    # none) an empty page follows, as the API answers a page past the end, so a client that
    # stops at the first short page always stops.
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    pages: list[AcledPage] = []
    for first in range(0, len(events) + 1, page_size):
        data = [acled_values(e) for e in events[first : first + page_size]]
        pages.append({"status": 200, "success": True, "count": len(data), "data": data})
    return pages


_UCDP_NAMES: dict[str, str] = {
    _JNIM[0]: "JNIM",
    _ISS[0]: "IS",
    _ISWAP[0]: "IS",
    _JAS[0]: "Jama'atu Ahlis Sunna Lidda'awati wal-Jihad",
    "Dozo Communal Militia (Mali)": "Dozos",
    "Dan Na Ambassagou": "Dan Na Ambassagou",
    "Fulani Ethnic Militia (Niger)": "Fulani",
    "Civilian JTF": "Civilian JTF",
}
_UCDP_OFFICES = ("AFP", "Reuters", "RFI", "Xinhua", "BBC Monitoring", "Le Monde", "AP",
                 "Jeune Afrique")  # fmt: skip
_UCDP_ORIGINALS = ("local residents", "army", "local officials", "security source",
                   "hospital staff", "witnesses", "the group's media wing")  # fmt: skip
_UCDP_WORDS: dict[str, str] = {
    "Attack": "attack",
    "Armed clash": "clashes",
    "Remote explosive/landmine/IED": "IED blast",
    "Shelling/artillery/missile attack": "shelling",
    "Air/drone strike": "air strike",
    "Suicide bomb": "suicide attack",
    "Abduction/forced disappearance": "abduction",
    "Non-state actor overtakes territory": "assault",
}


def _ucdp_side(actor: str, c: Country) -> str | None:
    """UCDP's name for an ACLED actor; UCDP credits allied forces to the government."""
    if actor == c.state or actor in ("Wagner Group", "Africa Corps") or actor.startswith("VDP:"):
        return f"Government of {c.name}"
    return _UCDP_NAMES.get(actor)


def _ucdp_dyad(event: Event) -> tuple[int, str, str] | None:
    """(type_of_violence, side_a, side_b) of an ACLED event, or None if UCDP would not code it."""
    c = COUNTRIES[event.country]
    a = _ucdp_side(event.actor1, c)
    if a is None or not event.actor2:
        return None
    if event.inter2 == 7:
        return 3, a, "Civilians"
    b = _ucdp_side(event.actor2, c)
    if b is None or a == b:
        return None
    if b.startswith("Government of "):
        a, b = b, a
    return (1 if a.startswith("Government of ") else 2), a, b


def _place_kind(name: str) -> str:
    return "town" if name in _TOWN_NAMES else "village"


def _split_deaths(tov: int, best: int, u: Sequence[float]) -> tuple[int, int, int, int]:
    """(deaths_a, deaths_b, deaths_civilians, deaths_unknown) summing to `best`."""
    unknown = round(best * u[0] * 0.5) if u[1] < 0.25 else 0
    rest = best - unknown
    if tov == 3:
        return 0, 0, rest, unknown
    a = round(rest * u[2])
    return a, rest - a, 0, unknown


def _month_end(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def ucdp_events(events: Sequence[Event], seed: int) -> list[UcdpEvent]:
    """UCDP GED rows for a share of the lethal political violence in `events`, plus a few more."""
    # About UCDP_SHARE of the lethal events UCDP can attribute (known perpetrator, a victim
    # side) get a row describing the same event, independently jittered: at most
    # UCDP_MAX_OFFSET_KM away, dated the same day or one day off, `best` near ACLED's
    # fatalities. UCDP_ONLY_SHARE as many again are events ACLED lacks (`event_key` None).
    # Sorted by date_start; ids are unique but, as in GED, not in date order. A stream of its
    # own ([seed, 0x0CDB]) keeps these draws independent of `generate(seed, ...)`'s.
    rng = np.random.default_rng([seed, 0x0CDB])
    candidates = [
        (e, dyad)
        for e in events
        if e.disorder_type == _PV and e.fatalities > 0 and (dyad := _ucdp_dyad(e)) is not None
    ]
    taken = [cd for cd, u in zip(candidates, rng.uniform(size=len(candidates)), strict=True)
             if u < UCDP_SHARE]  # fmt: skip
    m = len(taken)
    lat0 = np.array([e.lat for e, _ in taken], dtype=np.float64)
    lon0 = np.array([e.lon for e, _ in taken], dtype=np.float64)
    lat, lon = _offset(
        lat0,
        lon0,
        np.minimum(rng.rayleigh(2.5, m), UCDP_MAX_OFFSET_KM),
        rng.uniform(0, 2 * np.pi, m),
    )
    day_shift = rng.choice(np.array([-1, 0, 1]), size=m, p=np.array([0.15, 0.7, 0.15])).tolist()
    best_scale = rng.lognormal(0.0, 0.2, m).tolist()
    u = rng.uniform(size=(m, 10)).tolist()
    lat_l, lon_l = np.round(lat, 4).tolist(), np.round(lon, 4).tolist()
    n_only = max(1, round(m * UCDP_ONLY_SHARE)) if events else 0
    ids = (200_000 + np.cumsum(rng.integers(1, 25, size=m + n_only))).tolist()
    out: list[UcdpEvent] = []
    for i, (e, (tov, side_a, side_b)) in enumerate(taken):
        ui = u[i]
        c = COUNTRIES[e.country]
        best = max(1, round(e.fatalities * best_scale[i]))
        date_prec = {1: 1 if ui[3] < 0.92 else 2, 2: 2 if ui[3] < 0.5 else 3}.get(
            e.time_precision, 3
        )
        where_prec = {1: 1 if ui[4] < 0.85 else 2, 2: 2 if ui[4] < 0.6 else 3}.get(
            e.geo_precision, 3 if ui[4] < 0.5 else 4
        )
        date_start = e.day + timedelta(days=day_shift[i])
        span_days = {1: 0, 2: 1 + int(ui[5] * 6), 3: 7 + int(ui[5] * 20)}[date_prec]
        word = _UCDP_WORDS.get(e.sub_event_type, "violence")
        deaths = _split_deaths(tov, best, ui[6:9])
        out.append(
            UcdpEvent(
                id=ids[i],
                event_key=e.key,
                type_of_violence=tov,
                side_a=side_a,
                side_b=side_b,
                country=e.country,
                adm_1=e.admin1 + c.adm_suffixes[0],
                adm_2=e.admin2 + c.adm_suffixes[1],
                where_coordinates=f"{e.location} {_place_kind(e.location)}",
                where_description=f"{e.location}, {e.admin2}, {e.admin1}",
                where_prec=where_prec,
                lat=lat_l[i],
                lon=lon_l[i],
                date_prec=date_prec,
                date_start=date_start,
                date_end=date_start + timedelta(days=span_days),
                deaths_a=deaths[0],
                deaths_b=deaths[1],
                deaths_civilians=deaths[2],
                deaths_unknown=deaths[3],
                low=min(best, max(1, round(best * (0.6 + 0.4 * ui[1])))),
                high=best + round(best * 0.8 * ui[2]),
                number_of_sources=1 + int(ui[0] * 5),
                source_office=_pick(_UCDP_OFFICES, ui[9]),
                source_headline=f"{c.name}: {best} killed in {word} near {e.location}",
                event_clarity=1 if ui[3] < 0.9 else 2,
            )
        )
    out.extend(_ucdp_only(rng, events, ids[m:]))
    out.sort(key=lambda d: (d.date_start, d.id))
    return out


def _ucdp_only(
    rng: np.random.Generator, events: Sequence[Event], ids: Sequence[int]
) -> list[UcdpEvent]:
    """Lethal events ACLED lacks, one per id, near towns, dated within the events' range."""
    n = len(ids)
    if n == 0:
        return []
    first = min(e.day for e in events)
    days = (max(e.day for e in events) - first).days + 1
    lat, lon = _background_points(rng, n)
    t_lat, t_lon, _ = _town_arrays()
    nearest = np.argmin(_planar_km(lat[:, None], lon[:, None], t_lat[None, :], t_lon[None, :]), 1)
    day_index = rng.integers(0, days, size=n)
    best = 1 + np.floor(rng.lognormal(1.0, 1.0, n)).astype(np.int64)
    villages = _place_names(lat, lon, 0.05, 1)
    u = rng.uniform(size=(n, 10)).tolist()
    out: list[UcdpEvent] = []
    for i in range(n):
        ui = u[i]
        town = TOWNS[nearest[i]]
        c = COUNTRIES[town.country]
        jihadist = _UCDP_NAMES[c.jihadists[0 if ui[0] < 0.7 else 1][0]]
        tov = 1 if ui[1] < 0.6 else (3 if ui[1] < 0.9 else 2)
        side_a, side_b = {
            1: (f"Government of {c.name}", jihadist),
            2: ("JNIM", "IS"),
            3: (jihadist, "Civilians"),
        }[tov]
        date_prec = int(np.searchsorted(np.cumsum([0.75, 0.1, 0.08, 0.05, 0.02]), ui[2])) + 1
        date_start = first + timedelta(days=int(day_index[i]))
        date_end = date_start + timedelta(days=(0, 0, 3, 10)[min(date_prec - 1, 3)])
        if date_prec == 4:
            date_start, date_end = date_start.replace(day=1), _month_end(date_start)
        elif date_prec == 5:
            date_start, date_end = date(date_start.year, 1, 1), date(date_start.year, 12, 31)
        where_prec = int(np.searchsorted(np.cumsum([0.5, 0.2, 0.1, 0.1, 0.05, 0.04, 0.01]), ui[3]))
        admin1, admin2 = TOWN_ADMIN[town.name]
        b = int(best[i])
        deaths = _split_deaths(tov, b, ui[6:9])
        out.append(
            UcdpEvent(
                id=ids[i],
                event_key=None,
                type_of_violence=tov,
                side_a=side_a,
                side_b=side_b,
                country=town.country,
                adm_1=admin1 + c.adm_suffixes[0],
                adm_2=admin2 + c.adm_suffixes[1],
                where_coordinates=f"{villages[i]} village",
                where_description=f"{villages[i]}, near {town.name}",
                where_prec=min(where_prec + 1, 7),
                lat=round(float(lat[i]), 4),
                lon=round(float(lon[i]), 4),
                date_prec=date_prec,
                date_start=date_start,
                date_end=date_end,
                deaths_a=deaths[0],
                deaths_b=deaths[1],
                deaths_civilians=deaths[2],
                deaths_unknown=deaths[3],
                low=max(1, round(b * 0.7)),
                high=b + round(b * ui[4]),
                number_of_sources=1 + int(ui[5] * 3),
                source_office=_pick(_UCDP_OFFICES, ui[9]),
                source_headline=f"{c.name}: {b} killed near {town.name}",
                event_clarity=1 if ui[7] < 0.8 else 2,
            )
        )
    return out


def _stable_id(name: str, low: int) -> int:
    """An invented but stable UCDP id for a conflict, dyad or actor name."""
    return low + zlib.crc32(name.encode()) % 9_000


def _ucdp_time(d: date) -> str:
    return f"{d.isoformat()} 00:00:00.000"


def ucdp_values(event: UcdpEvent, seq: int) -> dict[str, str]:
    """One UCDP event as the GED CSV writes it; `seq` numbers it within its conflict-year."""
    c = COUNTRIES[event.country]
    tov = event.type_of_violence
    if tov == 1:
        conflict = f"{c.name}: Government"
    elif tov == 2:
        conflict = f"{event.side_a} - {event.side_b}"
    else:
        conflict = f"{event.side_a} - civilians"
    dyad = f"{event.side_a} - {event.side_b}"
    conflict_id = _stable_id(conflict, 10_000 + 1_000 * tov)
    dyad_id = _stable_id(dyad, 400)
    side_b_id = "" if event.side_b == "Civilians" else str(_stable_id(event.side_b, 100))
    source_date = (event.date_start + timedelta(days=1)).isoformat()
    # PRIO-GRID: half-degree cells numbered row by row from (-90, -180).
    row = math.floor((event.lat + 90.0) * 2)
    col = math.floor((event.lon + 180.0) * 2)
    return {
        "id": str(event.id),
        "relid": f"{event.country}-{event.date_start.year}-{tov}-{conflict_id}-{seq}",
        "year": str(event.date_start.year),
        "active_year": "1",
        "code_status": "Clear",
        "type_of_violence": str(tov),
        "conflict_dset_id": str(conflict_id),
        "conflict_new_id": str(conflict_id),
        "conflict_name": conflict,
        "dyad_dset_id": str(dyad_id),
        "dyad_new_id": str(dyad_id),
        "dyad_name": dyad,
        "side_a_dset_id": str(_stable_id(event.side_a, 100)),
        "side_a_new_id": str(_stable_id(event.side_a, 100)),
        "side_a": event.side_a,
        "side_b_dset_id": side_b_id,
        "side_b_new_id": side_b_id,
        "side_b": event.side_b,
        "number_of_sources": str(event.number_of_sources),
        "source_article": f"{event.source_office},{source_date},{event.source_headline}",
        "source_office": event.source_office,
        "source_date": source_date,
        "source_headline": event.source_headline,
        "source_original": _pick(_UCDP_ORIGINALS, (event.id % 97) / 97),
        "where_prec": str(event.where_prec),
        "where_coordinates": event.where_coordinates,
        "where_description": event.where_description,
        "adm_1": event.adm_1,
        "adm_2": event.adm_2,
        "latitude": f"{event.lat:.4f}",
        "longitude": f"{event.lon:.4f}",
        "geom_wkt": f"POINT ({event.lon:.4f} {event.lat:.4f})",
        "priogrid_gid": str(row * 720 + col + 1),
        "country": c.name,
        "country_id": str(c.ucdp_id),
        "region": "Africa",
        "event_clarity": str(event.event_clarity),
        "date_prec": str(event.date_prec),
        "date_start": _ucdp_time(event.date_start),
        "date_end": _ucdp_time(event.date_end),
        "deaths_a": str(event.deaths_a),
        "deaths_b": str(event.deaths_b),
        "deaths_civilians": str(event.deaths_civilians),
        "deaths_unknown": str(event.deaths_unknown),
        "best": str(event.best),
        "high": str(event.high),
        "low": str(event.low),
    }


def write_ucdp_csv(events: Iterable[UcdpEvent], stream: TextIO) -> None:
    """Write `events` as a UCDP GED CSV."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(UCDP_COLUMNS)
    seq: dict[tuple[str, int, int], int] = {}
    for event in events:
        group = (event.country, event.date_start.year, event.type_of_violence)
        seq[group] = seq.get(group, 0) + 1
        writer.writerow([spreadsheet_cell(v) for v in ucdp_values(event, seq[group]).values()])
