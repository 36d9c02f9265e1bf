"""Served score documents: serialised unvalidated for speed, they must equal the validated form.

Rescoring stores pydantic_core.to_json(scores.served(...)), plain data never validated: a value
of another type, a float left unrounded, a key out of order or a naive time would be stored as
is. scores.document (the validated ScoreOut the API serves) once skipped validation too, with
model_construct. These tests score a realistic mix and hold both to the validated form.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from types import SimpleNamespace
from typing import TypeVar

import numpy as np
import pydantic_core
import pytest

from services.scoring import incidents, schemas
from services.scoring.risk import (
    DEFAULT_PARAMS,
    Incident,
    IncidentSet,
    Score,
    Target,
    score_targets,
)
from services.scoring.scores import document, served
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

AS_OF = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
SEEDS = (41, 2)
VERSION = 7
COUNTRIES = ("MLI", "BFA", "NER")
ADMIN1 = ("Mopti", "Gao", "Sahel", "Tillaberi")
# Where incidents cluster, (lon, lat): central Mali, Liptako-Gourma, Niger.
CLUSTERS = ((-4.2, 14.5), (-0.5, 14.2), (2.5, 13.8))

T = TypeVar("T")


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def random_incidents(rng: np.random.Generator) -> list[Incident]:
    """About 200 incidents of every category over the Sahel and the year before AS_OF."""
    categories = list(Category)
    out = []
    for k in range(200):
        category = categories[k] if k < len(categories) else pick(rng, categories)
        area = rng.random() < 0.1
        c_lon, c_lat = pick(rng, CLUSTERS)
        occurred = AS_OF - timedelta(days=float(rng.uniform(0.0, 365.0)))
        threat = category is Category.EXPLICIT_THREAT
        out.append(
            Incident(
                id=1 + k,
                category=category,
                occurred_at=occurred,
                occurred_precision=pick(rng, list(TimePrecision)),
                reported_at=occurred + timedelta(hours=float(rng.uniform(0.0, 72.0))),
                lat=None if area else c_lat + float(rng.normal(0.0, 0.6)),
                lon=None if area else c_lon + float(rng.normal(0.0, 0.6)),
                location_precision=pick(rng, list(LocationPrecision)),
                scope_countries=frozenset({pick(rng, COUNTRIES)}) if area else frozenset(),
                scope_admin1=frozenset({pick(rng, ADMIN1)}) if area and k % 2 else frozenset(),
                target_foreign_owned_only=threat and bool(rng.random() < 0.5),
                target_sectors=frozenset({pick(rng, list(Sector))}) if threat else frozenset(),
                target_type=pick(rng, [TargetType.FOREIGN_FIRM, TargetType.MINING, *TargetType]),
                victim_expatriate=category is Category.KIDNAPPING and bool(rng.random() < 0.5),
                victim_sector=pick(rng, [*Sector, None]),
                fatalities_claimed=int(rng.integers(0, 100)) if rng.random() < 0.4 else None,
                fatalities_best=int(rng.integers(0, 30)) if rng.random() < 0.5 else None,
                source_reliability=float(rng.uniform(0.0, 1.0)),
                lifecycle=Lifecycle.DEVELOPING if rng.random() < 0.2 else Lifecycle.CONFIRMED,
                title=f"Incident {1 + k}" if k % 3 else "",
            )
        )
    return out


def random_targets(rng: np.random.Generator) -> list[Target]:
    """Sites and corridors of every mode and profile near the clusters, and one far from all."""
    out = [Target(TargetKind.SITE, ((-30.0, 15.0),), 5.0)]
    for k in range(24):
        c_lon, c_lat = CLUSTERS[k % len(CLUSTERS)]
        start = (c_lon + float(rng.normal(0.0, 0.5)), c_lat + float(rng.normal(0.0, 0.5)))
        site = Target(
            TargetKind.SITE,
            (start,),
            float(rng.uniform(0.0, 20.0)),
            sector=pick(rng, [Sector.MINING, Sector.LOGISTICS, Sector.ENERGY, None]),
            foreign_owned=bool(rng.random() < 0.6),
            expat_staff=bool(rng.random() < 0.6),
            countries=frozenset({pick(rng, COUNTRIES)}),
            admin1=frozenset({pick(rng, ADMIN1)}),
        )
        if k % 2:
            end = (start[0] + float(rng.uniform(-2.0, 2.0)), start[1] + float(rng.uniform(-1, 1)))
            mode = list(Mode)[k // 2 % len(Mode)]
            site = replace(site, kind=TargetKind.CORRIDOR, coordinates=(start, end), mode=mode)
        out.append(site)
    return out


@dataclass(frozen=True, slots=True)
class Scored:
    """Targets of a realistic mix scored in one batch, with what serving them reads."""

    refs: tuple[schemas.TargetRef, ...]
    scores: tuple[Score, ...]
    rows: Mapping[int, incidents.Row]

    def pairs(self) -> list[tuple[schemas.TargetRef, Score]]:
        """Each target's reference and score."""
        return list(zip(self.refs, self.scores, strict=True))


@cache
def scored(seed: int) -> Scored:
    """The targets of `seed` scored in one batch, as rescoring does."""
    rng = np.random.default_rng(seed)
    mix = random_incidents(rng)
    targets = random_targets(rng)
    scores = score_targets(
        targets, IncidentSet(mix, DEFAULT_PARAMS), AS_OF, DEFAULT_PARAMS, explain_top=10
    )
    refs = tuple(
        schemas.TargetRef(kind=t.kind, id=j + 1, name=f"target {j + 1}")
        for j, t in enumerate(targets)
    )
    rows = {
        i.id: SimpleNamespace(source="acled", source_id=f"MLI{i.id:05d}", title=i.title)
        for i in mix
    }
    return Scored(refs, tuple(scores), rows)


@cache
def documents(seed: int) -> tuple[schemas.ScoreOut, ...]:
    """The validated documents of the targets of `seed`."""
    s = scored(seed)
    return tuple(document(ref, score, VERSION, s.rows) for ref, score in s.pairs())


def typed(value: object) -> object:
    """`value` with each leaf paired with its type: 1.0 and float64(1.0) differ, as do Category.IED
    and "ied"."""
    if isinstance(value, dict):
        return {typed(k): typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [typed(v) for v in value]
    return (type(value).__qualname__, value)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_documents_hold_contributions_adjustments_and_hotspots_of_every_kind(
    seed: int,
) -> None:
    docs = documents(seed)
    contributions = [c for d in docs for c in d.contributions]
    assert {c.category for c in contributions} == set(Category)
    assert {type(v) for c in contributions for v in c.factors.values()} >= {
        float,
        str,
        type(None),
    }
    assert {a.kind for d in docs for a in d.adjustments} == {
        "threats",
        "mining_targeted",
        "foreign_firm_targeted",
        "corridor_mode",
        "expatriate_kidnapping",
        "victim_sector",
    }
    assert any(d.hotspots for d in docs)
    assert any(not d.contributions and not d.adjustments for d in docs)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_stored_body_is_the_validated_documents_json_byte_for_byte(seed: int) -> None:
    s = scored(seed)
    for ref, score in s.pairs():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            body = pydantic_core.to_json(served(ref, score, VERSION, s.rows)).decode()
        validated = schemas.ScoreOut.model_validate_json(body)
        assert validated.model_dump_json() == body, ref.name
        assert document(ref, score, VERSION, s.rows).model_dump_json() == body, ref.name


@pytest.mark.parametrize("seed", SEEDS)
def test_a_score_document_serializes_without_pydantic_warnings(seed: int) -> None:
    for doc in documents(seed):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            doc.model_dump_json()
            doc.model_dump(mode="json")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_score_document_round_trips_through_validation_to_the_same_json(seed: int) -> None:
    for doc in documents(seed):
        dumped = doc.model_dump_json()
        validated = schemas.ScoreOut.model_validate_json(dumped)
        assert validated.model_dump_json() == dumped, doc.target.name
        assert json.loads(dumped) == validated.model_dump(mode="json")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_score_document_holds_the_same_python_values_and_types_as_its_validated_copy(
    seed: int,
) -> None:
    for doc in documents(seed):
        validated = schemas.ScoreOut.model_validate_json(doc.model_dump_json())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert typed(doc.model_dump()) == typed(validated.model_dump())
