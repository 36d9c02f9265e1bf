"""Served score documents: serialised unvalidated for speed, they must equal the validated form.

Rescoring stores pydantic_core.to_json(scores.served(...)), plain data never validated: a value
of another type, a float left unrounded, a key out of order or a naive time would be stored as
is. scores.document (the validated ScoreOut the API serves) once skipped validation too, with
model_construct. These tests score tests.riskmix's realistic mix and hold both to the validated
form.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import numpy as np
import pydantic_core
import pytest

from services.scoring import incidents, schemas
from services.scoring.risk import DEFAULT_PARAMS, IncidentSet, Score, score_targets
from services.scoring.scores import document, served
from services.scoring.taxonomy import Category
from tests.riskmix import AS_OF, random_incidents, random_targets

SEEDS = (41, 2)
VERSION = 7


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
    # A third of the rows untitled, as an incident may be stored without a title.
    rows = {
        i.id: SimpleNamespace(
            source="acled", source_id=f"MLI{i.id:05d}", title=i.title if i.id % 3 else ""
        )
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
