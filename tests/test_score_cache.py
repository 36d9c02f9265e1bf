"""Score reads served from the process's cache of current documents (services.scoring.readcache):
no query while a document is kept, ETags, the tenant in the key, and what makes it fresh."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fastapi.routing
import pytest
from sqlalchemy import event, update

from services.core import metrics
from services.core.auth import Role
from services.scoring.models import CurrentScore
from services.scoring.readcache import ScoreDocuments
from services.scoring.taxonomy import TargetKind
from tests.conftest import Api, assert_problem
from tests.test_targets_api import corridor, incident, post, site


@contextmanager
def statements(api: Api) -> Iterator[list[str]]:
    """The score reads' queries the app's engine runs inside the block (not key lookups, nor
    what its own rescoring worker reads meanwhile)."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if sql.startswith("SELECT current_score.document"):
            seen.append(sql)

    engine = api.app.state.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def cached(api_factory: Callable[..., Api]) -> Api:
    """An app that keeps score documents: with its own rescoring worker (on SQLite, a process
    without one cannot hear the scores another stores, and keeps nothing), once its score
    listener (PostgreSQL) hears notices."""
    return caching_app(api_factory)


def caching_app(api_factory: Callable[..., Api], **overrides: Any) -> Api:
    """An app with its own rescoring worker, once its score listener (PostgreSQL) listens."""
    api = api_factory(inline_worker=True, rate_limit="", **overrides)
    listener = api.app.state.score_listener
    if listener is not None:
        assert listener.listening.wait(10), "the score listener did not connect"
    return api


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Check `condition` until it holds or `timeout` seconds pass (each check is a request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
    return condition()


class Ticking:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_second_read_of_a_current_score_runs_no_query_and_carries_the_same_etag(
    cached: Api,
) -> None:
    api = cached
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


def test_if_none_match_with_the_current_etag_answers_304_without_a_body(cached: Api) -> None:
    api = cached
    corridor_id = post(api, "/v1/corridors", corridor(), api.a)["id"]
    path = f"/v1/corridors/{corridor_id}/score"
    etag = api.client.get(path, headers=api.a).headers["etag"]

    unchanged = api.client.get(path, headers={**api.a, "If-None-Match": etag})
    other = api.client.get(path, headers={**api.a, "If-None-Match": '"elsewhere"'})

    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["etag"] == etag
    assert other.status_code == 200
    for listed in (f'"x", W/{etag}', "*"):
        matched = api.client.get(path, headers={**api.a, "If-None-Match": listed})
        assert matched.status_code == 304, listed


def test_another_tenant_gets_404_for_a_cached_score(cached: Api) -> None:
    api = cached
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    assert api.client.get(path, headers=api.a).status_code == 200

    assert_problem(api.client.get(path, headers=api.b), 404)
    assert_problem(api.client.get(f"/v1/corridors/{site_id}/score", headers=api.a), 404)


def test_a_rescore_or_a_deletion_in_this_process_shows_at_the_next_read(cached: Api) -> None:
    api = cached
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    before = api.client.get(path, headers=api.a).json()
    assert before["score"] == 0

    post(api, "/v1/incidents", incident(), api.ingest)

    # Rescored by the app's own worker (or by this drain, whichever takes the target).
    api.drain()
    assert wait_for(lambda: api.client.get(path, headers=api.a).json()["score"] > 0)
    assert api.client.delete(f"/v1/sites/{site_id}", headers=api.a).status_code == 204
    assert_problem(api.client.get(path, headers=api.a), 404)


def test_a_change_no_notice_reports_shows_once_the_ttl_has_passed(api: Api) -> None:
    clock = Ticking()
    api.app.state.score_documents = ScoreDocuments(5.0, clock=clock)
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    kept = api.client.get(path, headers=api.a).content
    # A write that announces nothing (no service writes so): only the TTL bounds it.
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


def test_a_cache_whose_listener_is_down_serves_nothing_it_kept() -> None:
    epochs: list[int | None] = [1]
    cache = ScoreDocuments(60.0, epoch=lambda: epochs[0])
    cache.put(7, TargetKind.SITE, 1, "{}", cache.generation)
    assert cache.get(7, TargetKind.SITE, 1) is not None

    epochs[0] = None  # disconnected: notices may be missed
    assert cache.get(7, TargetKind.SITE, 1) is None
    cache.put(7, TargetKind.SITE, 2, "{}", cache.generation)
    epochs[0] = 2  # listening again, on a new connection
    assert cache.get(7, TargetKind.SITE, 1) is None
    assert cache.get(7, TargetKind.SITE, 2) is None


def test_a_document_read_before_scores_were_stored_is_not_kept_after() -> None:
    cache = ScoreDocuments(60.0)
    generation = cache.generation
    cache.set()  # scores stored and committed while the read was under way

    cache.put(7, TargetKind.SITE, 1, "{}", generation)

    assert cache.get(7, TargetKind.SITE, 1) is None


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
        cache.put(7, TargetKind.SITE, target_id, "{}", cache.generation)

    assert cache.get(7, TargetKind.SITE, 1) is None
    assert cache.get(7, TargetKind.SITE, 2) is not None
    assert cache.get(7, TargetKind.SITE, 3) is not None
    assert cache.get(8, TargetKind.SITE, 3) is None


# The shortcut (services.scoring.api.cached): a kept document read with a key this process
# resolved lately is answered before routing; anything else goes to the route.


@pytest.fixture
def shortcut(api_factory: Callable[..., Api]) -> Api:
    """A caching app that also keeps resolved keys, as deployments do (tests turn that off)."""
    return caching_app(api_factory, key_cache_ttl=60)


@contextmanager
def routed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The requests that reached a route (FastAPI solved their dependencies) in the block."""
    seen: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(fastapi.routing, "solve_dependencies", counted)
        yield seen


def answer(response: Any) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers, without the ones that differ per request."""
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    return response.status_code, response.content, headers


def test_a_kept_score_read_with_a_resolved_key_never_reaches_the_route_and_answers_alike(
    shortcut: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = shortcut
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    with routed(monkeypatch) as seen:
        first = api.client.get(path, headers=api.a)
        assert seen == [path]
        etag = first.headers["etag"]
        # A key not resolved yet goes to the route, which answers 304; then it is resolved.
        route_304 = api.client.get(path, headers={**api.a_read, "If-None-Match": etag})
        assert seen == [path, path]

        second = api.client.get(path, headers=api.a)
        shortcut_304 = api.client.get(path, headers={**api.a_read, "If-None-Match": etag})

    assert seen == [path, path]
    assert answer(second) == answer(first)
    assert answer(shortcut_304) == answer(route_304)
    assert route_304.status_code == 304
    assert second.headers["x-request-id"] != first.headers["x-request-id"]


def test_what_the_shortcut_answers_is_counted_under_the_route_template(shortcut: Api) -> None:
    api = shortcut
    corridor_id = post(api, "/v1/corridors", corridor(), api.a)["id"]
    counter = metrics.HTTP_REQUESTS.labels("GET", "/v1/corridors/{corridor_id}/score", "200")
    before = counter._value.get()

    for _ in range(3):
        assert api.client.get(f"/v1/corridors/{corridor_id}/score", headers=api.a).is_success

    assert counter._value.get() == before + 3


def test_the_shortcut_counts_each_read_against_the_keys_rate_limit(
    api_factory: Callable[..., Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_factory(inline_worker=True, rate_limit="4/minute", key_cache_ttl=60)
    site_id = post(api, "/v1/sites", site(), api.b)["id"]  # tenant b's key: a's are spared
    path = f"/v1/sites/{site_id}/score"

    with routed(monkeypatch) as seen:
        answers = [api.client.get(path, headers=api.b) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert len(seen) < 3  # the reads in between were the shortcut's
    refused = assert_problem(answers[-1], 429)
    assert "retry" in refused["detail"]
    assert int(answers[-1].headers["retry-after"]) >= 1


def test_the_shortcut_leaves_other_tenants_roles_and_doubtful_credentials_to_the_route(
    shortcut: Api,
) -> None:
    api = shortcut
    site_id = post(api, "/v1/sites", site(), api.a)["id"]
    path = f"/v1/sites/{site_id}/score"
    with api.app.state.sessions.begin() as session:
        alerts_only = Api._key(session, api.tenant_a, [Role.ALERTS_READ])
    raw = api.a["Authorization"].removeprefix("Bearer ")
    for _ in range(2):  # the second time, every key is resolved and the document kept
        assert api.client.get(path, headers=api.a).status_code == 200
        assert_problem(api.client.get(path, headers=api.b), 404)
        assert_problem(api.client.get(f"/v1/corridors/{site_id}/score", headers=api.a), 404)
        assert_problem(api.client.get(path, headers=alerts_only), 403)
        assert_problem(api.client.get(path, headers={"Authorization": f"Token {raw}"}), 401)
        both = {**api.a, "X-API-Key": api.b["Authorization"].removeprefix("Bearer ")}
        assert_problem(api.client.get(path, headers=both), 400)
        assert api.client.get(path, headers={"X-API-Key": raw}).status_code == 200
        assert api.client.get(path, headers=api.admin).status_code == 403
        assert api.client.get(path + "?as_of=2020-01-01T00:00:00Z", headers=api.a).is_success
