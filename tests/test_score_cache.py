"""Score reads served from the process's cache of current documents (services.scoring.readcache):
no query while a document is kept, ETags, the tenant in the key, and what makes it fresh."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, update

from services.scoring.models import CurrentScore
from services.scoring.readcache import ScoreDocuments
from services.scoring.taxonomy import TargetKind
from tests.conftest import Api, assert_problem
from tests.test_targets_api import corridor, incident, post, site


@contextmanager
def statements(api: Api) -> Iterator[list[str]]:
    """The statements on targets and scores the app's engine runs inside the block (not the
    key lookups: the tests' key cache is off)."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if "api_key" not in sql:
            seen.append(sql)

    engine = api.app.state.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


class Ticking:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_second_read_of_a_current_score_runs_no_query_and_carries_the_same_etag(
    api: Api,
) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    first = api.client.get(path, headers=api.a)

    with statements(api) as seen:
        second = api.client.get(path, headers=api.a)

    assert second.status_code == 200
    assert seen == []
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["cache-control"] == "no-store"


def test_if_none_match_with_the_current_etag_answers_304_without_a_body(api: Api) -> None:
    corridor_id = post(api, "/v1/corridors", corridor(), api.a)["id"]
    path = f"/v1/corridors/{corridor_id}/score"
    etag = api.client.get(path, headers=api.a).headers["etag"]

    unchanged = api.client.get(path, headers={**api.a, "If-None-Match": etag})
    other = api.client.get(path, headers={**api.a, "If-None-Match": '"elsewhere"'})

    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["etag"] == etag
    assert other.status_code == 200


def test_another_tenant_gets_404_for_a_cached_score(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    assert api.client.get(path, headers=api.a).status_code == 200

    assert_problem(api.client.get(path, headers=api.b), 404)
    assert_problem(api.client.get(f"/v1/corridors/{site_id}/score", headers=api.a), 404)


def test_a_rescore_or_a_deletion_in_this_process_shows_at_the_next_read(api: Api) -> None:
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    before = api.client.get(path, headers=api.a).json()
    assert before["score"] == 0

    post(api, "/v1/incidents", incident(), api.ingest)
    api.drain()
    after = api.client.get(path, headers=api.a)

    assert after.json()["score"] > 0
    assert api.client.delete(f"/v1/sites/{site_id}", headers=api.a).status_code == 204
    assert_problem(api.client.get(path, headers=api.a), 404)


def test_a_change_made_by_another_process_shows_once_the_ttl_has_passed(api: Api) -> None:
    clock = Ticking()
    api.app.state.score_documents = ScoreDocuments(5.0, clock=clock)
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    kept = api.client.get(path, headers=api.a).content
    # Another process stores a new document: this one's cache hears nothing of it.
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(CurrentScore)
            .where(CurrentScore.target_id == site_id)
            .values(document='{"score": 42.0}')
        )

    clock.now += 4.9
    assert api.client.get(path, headers=api.a).content == kept
    clock.now += 0.2
    assert api.client.get(path, headers=api.a).json() == {"score": 42.0}


def test_with_a_ttl_of_zero_every_read_goes_to_the_database(api: Api) -> None:
    api.app.state.score_documents = ScoreDocuments(0.0)
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    api.client.get(path, headers=api.a)

    with statements(api) as seen:
        assert api.client.get(path, headers=api.a).status_code == 200

    assert len(seen) == 1


def test_the_cache_keeps_at_most_its_size_dropping_the_oldest() -> None:
    cache = ScoreDocuments(60.0, size=2)
    for target_id in (1, 2, 3):
        cache.put(7, TargetKind.SITE, target_id, "{}")

    assert cache.get(7, TargetKind.SITE, 1) is None
    assert cache.get(7, TargetKind.SITE, 2) is not None
    assert cache.get(7, TargetKind.SITE, 3) is not None
    assert cache.get(8, TargetKind.SITE, 3) is None
