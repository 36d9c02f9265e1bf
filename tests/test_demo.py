"""The demo data set tells the mid-2025 story of docs/domain.md when scored as of past dates,
and the dashboard is told to open at its story time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from services.alerts.models import Endpoint, Rule, Subscription
from services.cli import app as cli
from services.core.db import make_engine, make_sessionmaker
from services.core.models import ApiKey, Tenant
from services.scoring import demo, jobs, scores
from services.scoring.models import CurrentScore, Incident, RescoreMark, ScoreChange, Target
from services.settings import Settings
from tests.conftest import Api

DEMO_KEY = {"Authorization": f"Bearer {demo.DEMO_TENANT_KEY}"}
KENIEBA = "Keniéba gold mine (foreign-owned)"
SIKASSO = "Sikasso gold mine (foreign-owned)"
NORTH_BURKINA = "Northern Burkina mine (locally owned)"
DAKAR = "Dakar office"
BKO_TOM = "Charter BKO - TOM"
ROAD_DJIBO = "Road Ouagadougou - Djibo"
STORY = demo.STORY_AS_OF.isoformat().replace("+00:00", "Z")  # as the API writes it


def load_demo(api: Api) -> None:
    with api.app.state.sessions.begin() as session:
        now = jobs.utc_now()
        demo.load(session, now, scores.ensure_model(session, now))
    api.drain()


@pytest.fixture
def demo_api(api: Api) -> Api:
    """The app with the demo data set loaded and scored."""
    load_demo(api)
    return api


def target_path(api: Api, name: str) -> str:
    for kind in ("sites", "corridors"):
        for feature in api.client.get(f"/v1/{kind}", headers=DEMO_KEY).json()["features"]:
            if feature["properties"]["name"] == name:
                return f"/v1/{kind}/{feature['id']}"
    raise AssertionError(f"no demo target named {name!r}")


def score(api: Api, name: str, as_of: str) -> dict[str, Any]:
    response = api.client.get(
        f"{target_path(api, name)}/score", headers=DEMO_KEY, params={"as_of": as_of}
    )
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def contributions(doc: dict[str, Any], source_id: str) -> list[dict[str, Any]]:
    return [c for c in doc["contributions"] if c["source_id"] == source_id]


def test_kenieba_mine_has_kidnapping_and_threat_by_12_june_and_nothing_on_1_june(
    demo_api: Api,
) -> None:
    early = score(demo_api, KENIEBA, "2025-06-01T00:00:00Z")
    assert early["contributions"] == []
    assert early["band"] == "low"

    late = score(demo_api, KENIEBA, "2025-06-12T00:00:00Z")
    categories = {c["category"]: c for c in late["contributions"]}
    assert categories["kidnapping"]["component"] == "kidnapping"
    assert categories["kidnapping"]["source_id"] == "kidnapping-sw-mali"
    assert categories["explicit_threat"]["component"] == "threats"
    assert late["components"]["kidnapping"] > 0
    assert late["components"]["threats"] > 0
    assert late["score"] > early["score"]


def test_bko_tom_air_corridor_turns_high_once_timbuktu_airport_attack_is_reported(
    demo_api: Api,
) -> None:
    assert score(demo_api, BKO_TOM, "2025-06-01T00:00:00Z")["band"] == "low"
    # The indirect fire on Timbuktu airport happened on 2 June but was reported only the next
    # morning: scores as of the evening of 2 June know nothing of it yet, by 4 June they do.
    assert score(demo_api, BKO_TOM, "2025-06-02T18:00:00Z")["band"] == "low"
    after = score(demo_api, BKO_TOM, "2025-06-04T00:00:00Z")
    assert after["band"] in ("high", "critical")
    assert contributions(after, "timbuktu-airport-indirect-fire")
    assert after["hotspots"], "a corridor score names its hotspot segments"


def test_dakar_site_stays_low_at_all_times(demo_api: Api) -> None:
    start = datetime(2025, 5, 1, tzinfo=UTC)
    for day in range(0, 120, 3):
        as_of = (start + timedelta(days=day)).isoformat()
        doc = score(demo_api, DAKAR, as_of)
        assert doc["band"] == "low", as_of
    current = demo_api.client.get(f"{target_path(demo_api, DAKAR)}/score", headers=DEMO_KEY)
    assert current.json()["band"] == "low"


def test_threat_to_foreign_firms_raises_foreign_owned_mali_site_not_local_burkina_mine(
    demo_api: Api,
) -> None:
    # 9 June: the threat (7 June) is reported, the political communique (9 June) is not yet.
    as_of = "2025-06-09T00:00:00Z"
    local = score(demo_api, NORTH_BURKINA, as_of)
    assert contributions(local, "threat-foreign-companies") == []
    assert local["components"]["threats"] == 0
    assert local["score"] > 0, "the locally owned mine still scores its nearby violence"
    assert "threats" not in [a["kind"] for a in local["adjustments"]]

    # The threat multiplies the foreign-owned mine's odds (docs/scoring.md): an adjustment of its
    # own, apart from the fitted probability, naming the threat.
    foreign = score(demo_api, SIKASSO, as_of)
    [adjustment] = [a for a in foreign["adjustments"] if a["kind"] == "threats"]
    assert adjustment["odds_factor"] > 1
    [threat] = contributions(foreign, "threat-foreign-companies")
    assert adjustment["incident_ids"] == [threat["incident_id"]]
    assert threat["component"] == "threats"
    assert threat["factors"]["odds_factor"] > 1
    # Sikasso has no violence nearby: the odds go up, from next to nothing.
    assert foreign["probability"] > foreign["generic_probability"]

    # Later, the local mine's threat points come from the communique only, never the threat.
    later = score(demo_api, NORTH_BURKINA, "2025-06-12T00:00:00Z")
    assert contributions(later, "threat-foreign-companies") == []


def test_contributions_carry_why_text_and_factors(demo_api: Api) -> None:
    doc = score(demo_api, KENIEBA, "2025-06-12T00:00:00Z")
    assert doc["contributions"]
    for c in doc["contributions"]:
        assert c["title"] in c["why"]
        assert c["points"] > 0
        fitted = ("decay", "kernel", "fitted_weight", "profile_match")
        adjusting = ("threat_strength", "odds_factor")
        for factor in (
            "age_days",
            "credibility",
            *(adjusting if c["category"] == "explicit_threat" else fitted),
        ):
            assert factor in c["factors"], (c["source_id"], factor)
    [kidnapping] = contributions(doc, "kidnapping-sw-mali")
    assert "expatriate" in kidnapping["why"]
    assert kidnapping["factors"]["distance_km"] > 0
    assert kidnapping["factors"]["profile_match"] > 1


def _counts(session: Session) -> dict[str, Any]:
    tables = (Tenant, ApiKey, Target, Incident, ScoreChange, CurrentScore, RescoreMark)
    counts: dict[str, Any] = {
        t.__tablename__: session.execute(select(func.count()).select_from(t)).scalar_one()
        for t in tables
    }
    counts["incident_revisions"] = sorted(session.execute(select(Incident.revision)).scalars())
    counts["target_ids"] = sorted(session.execute(select(Target.id)).scalars())
    return counts


def test_loading_the_demo_twice_changes_nothing(demo_api: Api) -> None:
    factory = demo_api.app.state.sessions
    with factory() as session:
        before = _counts(session)
    scores_before = score(demo_api, KENIEBA, "2025-06-12T00:00:00Z")
    load_demo(demo_api)
    with factory() as session:
        after = _counts(session)
    assert after == before
    assert before["target"] == 8
    assert before["incident"] == len(demo.timeline())
    assert before["rescore_mark"] == 0
    assert score(demo_api, KENIEBA, "2025-06-12T00:00:00Z") == scores_before


def test_demo_command_loads_and_scores_the_database(db_url: str) -> None:
    url = db_url
    runner = CliRunner()
    for _ in range(2):  # a second run is harmless
        result = runner.invoke(cli, ["demo", "--database-url", url])
        assert result.exit_code == 0, result.output
        assert "demo tenant" in result.output
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            counts = _counts(session)
    finally:
        engine.dispose()
    assert counts["tenant"] == 1
    assert counts["api_key"] == 2
    assert counts["target"] == 8
    assert counts["current_score"] == 8
    assert counts["incident"] == len(demo.timeline())
    assert counts["rescore_mark"] == 0
    # The demo firm watches every target (the dashboard's threshold page works on it), once.
    with make_sessionmaker(engine)() as session:
        (subscription,) = session.execute(select(Subscription)).scalars()
        rules = session.execute(select(Rule).where(Rule.subscription_id == subscription.id))
        assert sorted(r.kind for r in rules.scalars()) == ["event", "threshold"]
        (endpoint,) = session.execute(select(Endpoint)).scalars()
    engine.dispose()
    assert subscription.scope == "all"
    assert endpoint.address.endswith("@example.com")


def test_the_story_time_follows_every_report_and_keeps_the_whole_timeline_on_the_map() -> None:
    reported = [datetime.fromisoformat(b["reported_at"]) for b in demo.timeline()]
    occurred = [datetime.fromisoformat(b["occurred_at"]) for b in demo.timeline()]
    assert max(reported) < demo.STORY_AS_OF
    # The map shows the incidents of the 90 days before its time (docs/dashboard.md).
    assert demo.STORY_AS_OF - min(occurred) < timedelta(days=90)
    assert demo.STORY_AS_OF.utcoffset() == timedelta(0)


def test_at_the_story_time_the_storys_targets_count_incidents_and_are_not_all_in_the_lowest_band(
    demo_api: Api,
) -> None:
    docs = {
        name: score(demo_api, name, STORY)
        for name in (KENIEBA, SIKASSO, NORTH_BURKINA, DAKAR, BKO_TOM, ROAD_DJIBO)
    }
    for name in (KENIEBA, NORTH_BURKINA, BKO_TOM, ROAD_DJIBO):
        assert docs[name]["incident_count"] > 0, name
    assert docs[DAKAR]["incident_count"] == 0
    assert {doc["band"] for doc in docs.values()} != {"low"}


def test_without_the_demo_the_dashboard_is_told_to_open_at_now(api: Api) -> None:
    config = api.client.get("/dashboard/config.json")
    assert config.status_code == 200
    assert config.json() == {"demo_as_of": None}
    assert config.headers["cache-control"] == "no-cache"  # a restart without the demo shows now
    assert "/dashboard/config.json" not in api.client.get("/openapi.json").json()["paths"]


def test_told_the_demos_time_the_dashboard_is_told_to_open_there_in_utc(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(demo_as_of="2025-06-12T02:00:00+02:00")
    assert api.client.get("/dashboard/config.json").json() == {"demo_as_of": STORY}


def test_the_demos_time_is_read_from_the_environment_and_must_name_its_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RISKALERT_DEMO_AS_OF", "2025-06-12T00:00:00Z")
    assert Settings().demo_as_of == demo.STORY_AS_OF
    monkeypatch.setenv("RISKALERT_DEMO_AS_OF", "2025-06-12T00:00:00")
    with pytest.raises(ValidationError, match="demo_as_of"):
        Settings()
