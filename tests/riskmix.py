"""A seeded generator of model incidents and targets over the Sahel, shared by the tests.

From one numpy Generator it draws a realistic mix around AS_OF: incidents of every category, some
area-scoped, some reported after AS_OF, some retracted or merged; sites and corridors of every mode
and profile, several in one cell and some beyond every incident's reach. The same seed gives the
same mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np

from services.scoring.risk import Incident, Target
from services.scoring.taxonomy import (
    Category,
    Lifecycle,
    LocationPrecision,
    Mode,
    Sector,
    TargetKind,
    TargetType,
    TimePrecision,
)

# The time the mix is drawn around: incidents occur in the year before it, a few are reported after.
AS_OF = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
COUNTRIES = ("MLI", "BFA", "NER", "SEN", "MRT", "GIN")
ADMIN1 = ("Mopti", "Gao", "Kayes", "Sahel", "Tillaberi", "Segou", "Tombouctou")
# Targets' countries and regions.
AREAS = tuple(frozenset(a) for a in ((), ("MLI",), ("MLI",), ("BFA",), ("NER",), ("MLI", "BFA")))
REGIONS = tuple(frozenset(r) for r in ((), (), ("Mopti",), ("Gao",), ("Sahel",)))
# Where incidents cluster, (lon, lat): central Mali, Liptako-Gourma, western Mali, Niger.
CLUSTERS = ((-4.2, 14.5), (-0.5, 14.2), (-10.5, 13.2), (2.5, 13.8), (-3.0, 16.7))
# A one-degree cell holding several sites.
SHARED_CELL = (-4.0, 14.0)
# Sites beyond every incident's reach (1,000 km and more from the Sahel box), in no scoped area.
FAR_AWAY = ((-32.0, 15.0), (20.0, 34.0), (35.0, -5.0))

T = TypeVar("T")


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def some(rng: np.random.Generator, options: Sequence[T], most: int) -> frozenset[T]:
    """Between 0 and `most` distinct members of `options`."""
    count = int(rng.integers(most + 1))
    chosen = rng.choice(len(options), size=count, replace=False)
    return frozenset(options[int(k)] for k in chosen)


def random_incidents(rng: np.random.Generator) -> list[Incident]:
    """150-300 incidents of every kind over the Sahel and the year before AS_OF."""
    n = int(rng.integers(150, 301))
    categories = list(Category)
    out = []
    for k in range(n):
        # Every category at least once, then at random.
        category = categories[k] if k < len(categories) else pick(rng, categories)
        area = rng.random() < 0.12
        lat: float | None
        lon: float | None
        if area:
            lat = lon = None
        elif rng.random() < 0.5:
            c_lon, c_lat = pick(rng, CLUSTERS)
            lat = float(np.clip(c_lat + rng.normal(0.0, 0.4), 10.0, 20.0))
            lon = float(np.clip(c_lon + rng.normal(0.0, 0.4), -12.0, 5.0))
        else:
            lat, lon = float(rng.uniform(10.0, 20.0)), float(rng.uniform(-12.0, 5.0))
        countries = some(rng, COUNTRIES, 3) if area else frozenset()
        admin1 = some(rng, ADMIN1, 2) if area else frozenset()
        if area and not countries and not admin1:
            countries = frozenset({pick(rng, COUNTRIES)})
        occurred = AS_OF - timedelta(days=float(rng.uniform(0.0, 365.0)))
        reported = occurred + timedelta(hours=float(rng.uniform(0.0, 96.0)))
        if rng.random() < 0.06:
            # Reported only after as_of: must not count.
            reported = AS_OF + timedelta(days=float(rng.uniform(0.01, 10.0)))
        threat = category is Category.EXPLICIT_THREAT
        kidnapping = category is Category.KIDNAPPING
        lifecycle = pick(
            rng,
            (Lifecycle.CONFIRMED,) * 6
            + (Lifecycle.DEVELOPING,) * 2
            + (Lifecycle.UPDATED, Lifecycle.RETRACTED),
        )
        out.append(
            Incident(
                id=1000 + k,
                category=category,
                occurred_at=occurred,
                occurred_precision=pick(rng, list(TimePrecision)),
                reported_at=reported,
                lat=lat,
                lon=lon,
                location_precision=(
                    LocationPrecision.REGION if area else pick(rng, list(LocationPrecision))
                ),
                scope_countries=countries,
                scope_admin1=admin1,
                target_foreign_owned_only=threat and bool(rng.random() < 0.4),
                target_sectors=some(rng, list(Sector), 2) if threat else frozenset(),
                target_type=pick(
                    rng, [TargetType.FOREIGN_FIRM, TargetType.MINING, *TargetType, None]
                ),
                victim_expatriate=kidnapping and bool(rng.random() < 0.5),
                victim_sector=pick(rng, [*Sector, None, None, None]),
                fatalities_claimed=int(rng.integers(0, 120)) if rng.random() < 0.4 else None,
                fatalities_best=int(rng.integers(0, 40)) if rng.random() < 0.5 else None,
                source_reliability=float(rng.uniform(0.0, 1.0)),
                lifecycle=lifecycle,
                title=f"incident {1000 + k}",
                merged=bool(rng.random() < 0.03),
            )
        )
    return out


def profile(rng: np.random.Generator) -> dict[str, Any]:
    """A random firm profile: sector (mining often), ownership, staff, countries and regions."""
    return {
        "sector": pick(rng, [*Sector, Sector.MINING, None, None]),
        "foreign_owned": bool(rng.random() < 0.5),
        "expat_staff": bool(rng.random() < 0.5),
        # Few areas, so that targets of different profiles share one.
        "countries": pick(rng, AREAS),
        "admin1": pick(rng, REGIONS),
    }


def random_targets(rng: np.random.Generator) -> list[Target]:
    """40-80 sites and corridors: every mode, several sites in one cell, some far from all."""
    out: list[Target] = []
    for _ in range(5):
        lonlat = (
            SHARED_CELL[0] + float(rng.uniform(0.05, 0.95)),
            SHARED_CELL[1] + float(rng.uniform(0.05, 0.95)),
        )
        out.append(
            Target(TargetKind.SITE, (lonlat,), float(rng.uniform(0.0, 30.0)), **profile(rng))
        )
    for lonlat in FAR_AWAY:
        out.append(
            Target(
                TargetKind.SITE,
                (lonlat,),
                10.0,
                sector=Sector.MINING,
                foreign_owned=True,
                expat_staff=True,
                countries=frozenset({"FRA"}),
            )
        )
    modes: list[Mode | None] = [*Mode, None]
    for k in range(int(rng.integers(32, 73))):
        if k % 3 == 0:
            mode = modes[(k // 3) % len(modes)]
            lon, lat = float(rng.uniform(-12.0, 5.0)), float(rng.uniform(10.0, 20.0))
            vertices = [(lon, lat)]
            for _ in range(int(rng.integers(1, 5))):
                lon += float(rng.uniform(-1.5, 1.5))
                lat += float(rng.uniform(-1.0, 1.0))
                vertices.append((lon, lat))
            out.append(
                Target(
                    TargetKind.CORRIDOR,
                    tuple(vertices),
                    float(rng.uniform(0.0, 10.0)),
                    mode=mode,
                    **profile(rng),
                )
            )
        else:
            if rng.random() < 0.5:
                c_lon, c_lat = pick(rng, CLUSTERS)
                lonlat = (c_lon + float(rng.normal(0.0, 0.5)), c_lat + float(rng.normal(0.0, 0.5)))
            else:
                lonlat = (float(rng.uniform(-12.0, 5.0)), float(rng.uniform(10.0, 20.0)))
            radius = pick(rng, (0.0, 1.0, 5.0, 25.0, float(rng.uniform(0.0, 50.0))))
            out.append(Target(TargetKind.SITE, (lonlat,), radius, **profile(rng)))
    order = rng.permutation(len(out))
    return [out[int(k)] for k in order]
