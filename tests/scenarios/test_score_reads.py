"""Score reads served from each API process's cache stay current when a separate worker
process stores new scores: on PostgreSQL the worker's NOTIFY empties the API's cache; on
SQLite (no NOTIFY) an API without its own worker keeps no documents at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.scenarios.harness import Api, Database, Riskalert, wait_until


def test_a_score_stored_by_a_separate_worker_is_read_at_once_not_after_the_cache_ttl(
    riskalert: Riskalert, database: Database
) -> None:
    # A TTL far past the wait below: only the worker's notice can make the new score show.
    api = Api(riskalert.serve(inline_worker=False, RISKALERT_SCORING_READ_CACHE_TTL="PT1H"))
    riskalert.worker("scoring")
    site = api.create_site("Sadiola mine", 13.9, -11.7)
    wait_until(lambda: database.scored_at(site), what="the site's first score")
    first = api.site_score(site)
    assert api.site_score(site) == first  # read twice: kept, on PostgreSQL
    assert first["score"] == 0

    now = datetime.now(UTC)
    api.post_incident(
        {
            "source": "analyst",
            "source_id": "cache-1",
            "category": "armed_assault",
            "occurred_at": (now - timedelta(hours=3)).isoformat(),
            "location": {"type": "Point", "coordinates": [-11.7, 13.9]},
            "country": "MLI",
            "fatalities": {"best": 12},
            "title": "Assault at the mine",
        }
    )

    wait_until(lambda: api.site_score(site)["score"] > 0, what="the new score to be read")
