"""Operating the service: request ids and structured logs without secrets, request limits,
Prometheus metrics and periodic ticks that run once per slot."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from services.alerts.models import Delivery
from services.core import logs, ticks
from services.core.models import TickRun
from services.scoring.models import Incident
from tests.conftest import Api, assert_problem
from tests.test_alerts_pipeline import add_watch
from tests.test_rescoring import create_site, east_of_base, incident_body

# --------------------------------------------------------------------------------------------
# Logs


class Captured:
    """Every log record rendered as the processes render them (JSON lines)."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(as_json=True))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_every_response_carries_a_request_id_and_a_sane_inbound_one_is_kept(api: Api) -> None:
    given = api.client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b"
    # An id that could forge log lines or grow without bound is replaced by a fresh one.
    for hostile in ("x" * 65, 'a"b', "line\tbreak"):
        replaced = api.client.get("/healthz", headers={"X-Request-ID": hostile})
        assert replaced.headers["x-request-id"] != hostile
        assert len(replaced.headers["x-request-id"]) == 32
    first = api.client.get("/v1/nothing-here")
    second = api.client.get("/v1/nothing-here")
    assert first.status_code == 404
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_each_request_logs_one_json_line_with_its_id_route_and_status(
    api: Api, captured: Captured
) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    response = api.client.get(
        f"/v1/sites/{site}", headers={**api.a, "X-Request-ID": "req-site-read"}
    )
    assert response.status_code == 200
    lines = [e for e in captured.events() if e.get("request_id") == "req-site-read"]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["event"] == "GET /v1/sites/{site_id} 200"
    assert line["path"] == f"/v1/sites/{site}"
    assert line["status"] == 200
    assert line["level"] == "info"
    assert {"timestamp", "ms", "logger"} <= line.keys()


def test_an_ingest_request_id_reaches_the_incident_the_rescoring_and_the_alert_it_causes(
    api: Api, captured: Captured
) -> None:
    site = create_site(api, "Camp", *east_of_base(0))
    add_watch(api, site, {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50})
    body = incident_body("k-trace", *east_of_base(20), category="kidnapping")
    response = api.client.post(
        "/v1/incidents", headers={**api.ingest, "X-Request-ID": "ingest-7"}, json=body
    )
    assert response.status_code == 201, response.text
    api.drain_alerts()

    factory: sessionmaker[Session] = api.app.state.sessions
    with factory() as session:
        incident = session.execute(select(Incident).where(Incident.source_id == "k-trace"))
        assert incident.scalar_one().request_id == "ingest-7"
        (delivery,) = session.execute(select(Delivery)).scalars()
    assert delivery.event_type == "alert.triggered"
    assert delivery.request_id == "ingest-7"
    traced = {
        e["event"].split(":")[0] for e in captured.events() if e.get("request_id") == "ingest-7"
    }
    # The request, the rescoring job reading its incident, the alert it triggered.
    assert "POST /v1/incidents 201" in traced
    assert "incident feed" in traced
    assert f"incident {response.json()['id']} triggered 1 event alert(s)" in traced
    # A job working for requests other than this one does not carry its id.
    before = len(captured.events())
    other = api.client.post(
        "/v1/incidents",
        headers={**api.ingest, "X-Request-ID": "ingest-8"},
        json=incident_body("far-away", *east_of_base(900)),
    )
    assert other.status_code == 201
    api.drain_alerts()
    later = captured.events()[before:]
    assert any(
        e["event"].startswith("incident feed") and e.get("request_id") == "ingest-8" for e in later
    )
    assert not [e for e in later if e.get("request_id") == "ingest-7"]
    with factory() as session:
        assert session.execute(select(func.count()).select_from(Delivery)).scalar_one() == 1


def test_secrets_never_reach_the_logs(api_factory: Callable[..., Api], captured: Captured) -> None:
    api = api_factory(webhook_allow_http=True, webhook_allowlist=["127.0.0.1"])
    # A new key, a webhook secret, a rotated secret, a wrong key, keys in both headers.
    created = api.client.post(
        "/v1/api-keys",
        headers=api.admin,
        json={"name": "ops", "tenant_id": api.tenant_a, "roles": ["scores:read"]},
    )
    assert created.status_code == 201, created.text
    new_key = created.json()["key"]
    endpoint = api.client.post(
        "/v1/endpoints",
        headers=api.a,
        json={"kind": "webhook", "name": "ops", "url": "http://127.0.0.1:9/hook"},
    )
    assert endpoint.status_code == 201, endpoint.text
    secret = endpoint.json()["secret"]
    rotated = api.client.post(f"/v1/endpoints/{endpoint.json()['id']}/rotate-secret", headers=api.a)
    assert rotated.status_code in (200, 201), rotated.text
    new_secret = rotated.json()["secret"]
    wrong = "rak_" + "w" * 43
    assert (
        api.client.get("/v1/sites", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    )
    assert api.client.get("/v1/sites", headers={"X-API-Key": new_key}).status_code == 200
    # A failure whose message carries credentials, as a driver error might.
    logging.getLogger("riskalert.test").error(
        "connect to postgresql+psycopg://riskalert:s3cr3t-pw@db:5432/riskalert failed; "
        "key %s secret %s",
        new_key,
        secret,
    )
    try:
        raise RuntimeError(f"Authorization: Bearer {new_key}")
    except RuntimeError:
        logging.getLogger("riskalert.test").exception("request failed")

    text = captured.text
    assert text.count("\n") >= 6
    raw_keys = [h["Authorization"].removeprefix("Bearer ") for h in (api.a, api.ingest, api.admin)]
    for value in (new_key, secret, new_secret, wrong, "s3cr3t-pw", *raw_keys):
        assert value not in text
    assert "[redacted]" in text


# --------------------------------------------------------------------------------------------
# Request limits


def test_a_key_over_its_rate_limit_gets_429_with_retry_after_and_other_keys_do_not(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(rate_limit="3/minute")
    for _ in range(3):
        assert api.client.get("/v1/sites", headers=api.a).status_code == 200
    limited = api.client.get("/v1/sites", headers=api.a)
    doc = assert_problem(limited, 429)
    assert doc["type"].endswith("/rate-limited")
    assert "3 per 1 minute" in doc["detail"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Counted per key: tenant B's key is not held back by tenant A's.
    assert api.client.get("/v1/sites", headers=api.b).status_code == 200
    # Health and readiness need no key and are never limited.
    for _ in range(5):
        assert api.client.get("/healthz").status_code == 200


def test_guessing_keys_is_limited_per_client_address(api_factory: Callable[..., Api]) -> None:
    api = api_factory(rate_limit_unauthenticated="4/minute")
    for attempt in range(4):
        wrong = {"Authorization": f"Bearer rak_guess{attempt:040d}"}
        assert_problem(api.client.get("/v1/sites", headers=wrong), 401)
    assert_problem(api.client.get("/v1/sites"), 429)
    # A valid key still works from the same address.
    assert api.client.get("/v1/sites", headers=api.a).status_code == 200


def test_an_empty_limit_limits_nothing(api_factory: Callable[..., Api]) -> None:
    api = api_factory(rate_limit="")
    assert all(api.client.get("/v1/sites", headers=api.a).status_code == 200 for _ in range(30))


def test_a_malformed_limit_is_refused_at_start_up() -> None:
    from services.core.settings import PlatformSettings

    with pytest.raises(ValueError, match="not a rate limit"):
        PlatformSettings(rate_limit="lots")


def test_service_settings_have_prefixed_names_and_old_names_still_work_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.settings import Settings

    monkeypatch.setenv("RISKALERT_ALERTS_CONCURRENCY", "3")
    monkeypatch.setenv("RISKALERT_LEASE", "7")
    monkeypatch.setenv("RISKALERT_WORKER_POLL_INTERVAL", "0.5")
    with pytest.warns(FutureWarning) as warned:
        settings = Settings()
    assert (settings.concurrency, settings.lease.total_seconds()) == (3, 7)
    assert settings.worker_poll_interval.total_seconds() == 0.5
    assert sorted(str(w.message).split(" is ")[0] for w in warned) == [
        "RISKALERT_LEASE",
        "RISKALERT_WORKER_POLL_INTERVAL",
    ]
    assert "use RISKALERT_ALERTS_LEASE" in str(warned[0].message)
    # The new name wins over the old one.
    monkeypatch.setenv("RISKALERT_ALERTS_LEASE", "9")
    with pytest.warns(FutureWarning):
        assert Settings().lease.total_seconds() == 9


def test_a_trusted_proxy_that_is_not_an_address_or_network_is_refused_at_start_up() -> None:
    from services.core.settings import PlatformSettings

    assert PlatformSettings(trusted_proxies=["10.0.0.0/8", "::1"]).trusted_proxies
    with pytest.raises(ValueError, match="not an address or a CIDR network"):
        PlatformSettings(trusted_proxies=["proxy.internal"])


def test_bodies_over_the_limit_get_413_whether_declared_or_streamed(
    api_factory: Callable[..., Api],
) -> None:
    api = api_factory(max_body_bytes=4096)
    big = incident_body("big", *east_of_base(5), title="x" * 200, notes="y" * 5000)
    declared = api.client.post("/v1/incidents", headers=api.ingest, json=big)
    doc = assert_problem(declared, 413)
    assert doc["type"].endswith("/payload-too-large")

    def chunks() -> Iterator[bytes]:
        payload = json.dumps(big).encode()
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    streamed = api.client.post(
        "/v1/incidents",
        headers={**api.ingest, "Content-Type": "application/json"},
        content=chunks(),
    )
    assert_problem(streamed, 413)
    with api.app.state.sessions() as session:
        assert session.execute(select(func.count()).select_from(Incident)).scalar_one() == 0
    # Under the limit, the same route works; file imports have their own, larger limit.
    small = incident_body("small", *east_of_base(5))
    assert api.client.post("/v1/incidents", headers=api.ingest, json=small).status_code == 201
    csv = "event_id_cnty,event_date\n" + "X,2020-01-01\n" * 400
    imported = api.client.post(
        "/v1/imports/acled",
        headers={**api.ingest, "Content-Type": "text/csv"},
        content=csv.encode(),
    )
    assert imported.status_code != 413, imported.text


def test_page_sizes_are_capped(api_factory: Callable[..., Api]) -> None:
    api = api_factory(max_page_size=2)
    for name in ("a", "b", "c"):
        create_site(api, name, *east_of_base(1))
    page = api.client.get("/v1/sites?limit=100", headers=api.a)
    assert page.status_code == 200
    assert len(page.json()["features"]) == 2
    assert_problem(api.client.get("/v1/sites?limit=100000", headers=api.a), 422)


# --------------------------------------------------------------------------------------------
# Metrics


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric `name` in an exposition: label text -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


def test_metrics_count_requests_by_route_template_and_read_queues_from_the_database(
    api: Api,
) -> None:
    site = create_site(api, "Mine", *east_of_base(0))
    for _ in range(3):
        api.client.get(f"/v1/sites/{site}", headers=api.a)
    api.client.post(
        "/v1/incidents", headers=api.ingest, json=incident_body("m1", *east_of_base(10))
    )
    text = api.client.get("/metrics").text
    requests = samples(text, "riskalert_http_requests_total")
    route = '{method="GET",route="/v1/sites/{site_id}",status="200"}'
    assert requests[route] >= 3
    # One series per route, not per path.
    assert not any(f"/v1/sites/{site}" in labels for labels in requests)
    assert samples(text, "riskalert_incidents_total")['{outcome="created"}'] >= 1
    assert samples(text, "riskalert_database_up") == {"": 1.0}
    # The incident is on the feed, unread by the rescorer; its targets are not queued yet.
    backlog = samples(text, "riskalert_change_feed_backlog")
    assert backlog['{consumer="rescore"}'] == 1
    api.drain()
    after = api.client.get("/metrics").text
    assert samples(after, "riskalert_change_feed_backlog")['{consumer="rescore"}'] == 0
    assert samples(after, "riskalert_queue_depth")['{queue="rescore"}'] == 0
    assert samples(after, "riskalert_targets_rescored_total")[""] >= 1
    assert "riskalert_http_request_duration_seconds_bucket" in after
    assert "riskalert_rescore_batch_seconds_bucket" in after
    # Not in the API's schema: it is for Prometheus, not integrators.
    assert "/metrics" not in api.client.get("/openapi.json").json()["paths"]


def test_every_service_reports_its_database_gauges_through_the_platform(api: Api) -> None:
    text = api.client.get("/metrics").text

    assert set(samples(text, "riskalert_queue_depth")) == {
        '{queue="rescore"}',
        '{queue="delivery"}',
    }
    assert set(samples(text, "riskalert_queue_oldest_seconds")) == {
        '{queue="rescore"}',
        '{queue="delivery"}',
    }
    consumers = {
        '{consumer="rescore"}',
        '{consumer="incident_change"}',
        '{consumer="score_change"}',
    }
    assert set(samples(text, "riskalert_change_feed_backlog")) == consumers
    assert set(samples(text, "riskalert_change_feed_lag_seconds")) == consumers
    for family in ("riskalert_feed_lag_seconds", "riskalert_dead_letters_open"):
        assert f"# TYPE {family} gauge" in text


def _imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


SERVICES = Path(__file__).resolve().parents[1] / "services"


def test_the_platform_imports_no_service() -> None:
    # services/core is the platform: services register with it (routers, gauges), never the
    # other way round.
    services = ("services.scoring", "services.alerts", "services.feeds", "services.dashboard")
    found = [
        f"{path.name}: {name}"
        for path in sorted((SERVICES / "core").glob("*.py"))
        for name in _imported(path)
        if name.startswith(services)
    ]
    assert found == []


def test_no_service_imports_another_services_api_modules() -> None:
    # Services share through core or a published contract (change feeds, schemas), never
    # through each other's routes and route dependencies.
    found = []
    for service in ("scoring", "alerts", "feeds", "dashboard"):
        others = tuple(
            f"services.{other}.api" for other in ("scoring", "alerts", "feeds") if other != service
        )
        for path in sorted((SERVICES / service).rglob("*.py")):
            found += [
                f"{path.relative_to(SERVICES)}: {name}"
                for name in _imported(path)
                if name.startswith(others)
            ]
    assert found == []


def test_metrics_can_require_a_token(api_factory: Callable[..., Api]) -> None:
    api = api_factory(metrics_token="scrape-me")
    assert_problem(api.client.get("/metrics"), 401)
    assert_problem(api.client.get("/metrics", headers={"Authorization": "Bearer nope"}), 401)
    ok = api.client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")


# --------------------------------------------------------------------------------------------
# Ticks


def test_a_slot_is_the_nearest_multiple_of_the_interval() -> None:
    every = timedelta(seconds=10)
    base = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert ticks.slot_of(base, every) == base
    assert ticks.slot_of(base + timedelta(seconds=4.9), every) == base
    assert ticks.slot_of(base - timedelta(seconds=4.9), every) == base
    assert ticks.slot_of(base + timedelta(seconds=5.1), every) == base + every
    day = timedelta(days=1)
    assert ticks.slot_of(base, day) == datetime(2026, 11, 26, tzinfo=UTC) + day


def test_only_one_claim_of_a_slot_wins_and_old_claims_are_cleared(
    sessions: sessionmaker[Session],
) -> None:
    every = timedelta(minutes=1)
    now = datetime(2026, 11, 26, 12, 0, 10, tzinfo=UTC)
    assert ticks.claim(sessions, "decay", every, now)
    assert not ticks.claim(sessions, "decay", every, now + timedelta(seconds=5))
    assert ticks.claim(sessions, "digest", every, now)  # another tick, its own slots
    assert ticks.claim(sessions, "decay", every, now + every)
    later = now + ticks.KEEP + timedelta(hours=1)
    assert ticks.claim(sessions, "decay", every, later)
    with sessions() as session:
        kept = session.execute(select(TickRun.slot_at).where(TickRun.name == "decay")).scalars()
        assert sorted(kept) == [ticks.slot_of(later, every)]


def test_run_once_runs_the_tick_only_for_the_winner(sessions: sessionmaker[Session]) -> None:
    ran: list[int] = []
    every = timedelta(hours=1)
    assert ticks.run_once(sessions, "hourly", every, ran.append, [1])
    assert not ticks.run_once(sessions, "hourly", every, ran.append, [2])
    assert ran == [1]


def test_a_failing_loop_logs_its_first_failure_in_full_then_now_and_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    streak = logs.FailureStreak(logging.getLogger("riskalert.test"), "the pass", every=100)
    with caplog.at_level(logging.INFO, logger="riskalert.test"):
        for _ in range(250):
            try:
                raise ConnectionError("database away")
            except ConnectionError:
                streak.failed()
        streak.succeeded()
        streak.succeeded()
    lines = [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records]
    assert lines == [
        ("ERROR", "the pass failed (1 in a row)", True),
        ("ERROR", "the pass failed (100 in a row)", False),
        ("ERROR", "the pass failed (200 in a row)", False),
        ("INFO", "the pass works again after 250 failures", False),
    ]


def test_database_errors_show_the_statement_not_its_data(engine: Engine) -> None:
    with pytest.raises(DBAPIError) as raised, engine.begin() as conn:
        conn.execute(text("SELECT nothing FROM incident WHERE title = :t"), {"t": "private-words"})
    assert "private-words" not in str(raised.value)
    assert "SELECT nothing FROM incident" in str(raised.value)


def test_api_answers_are_not_cached_by_browsers_or_proxies(api: Api) -> None:
    sites = api.client.get("/v1/sites", headers=api.a)
    assert sites.status_code == 200
    assert sites.headers["cache-control"] == "no-store"
    refused = api.client.get("/v1/sites")
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store"
    # The dashboard's own files may be cached (and revalidated); health checks are not data.
    assert api.client.get("/dashboard/").headers["cache-control"] == "no-cache"
    assert "cache-control" not in api.client.get("/healthz").headers


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("key rak_abcdefgh1234 used", "key [redacted] used"),
        ("whsec_QUJDREVGR0g= signs", "[redacted] signs"),
        ("postgresql://app:pw@db/x", "postgresql://app:[redacted]@db/x"),
        ("BEARER abcdefgh12345", "Bearer [redacted]"),
        ("PASSWORD=hunter22", "PASSWORD=[redacted]"),
        ('"Api-Key": "k-123"', '"Api-Key": "[redacted]"'),
        ("Token: t0k3n", "Token: [redacted]"),
        ("GET /v1/sites/{site_id}/score 200", "GET /v1/sites/{site_id}/score 200"),
    ],
)
def test_every_secret_pattern_is_scrubbed_whatever_its_case(text: str, kept: str) -> None:
    assert logs.scrub(None, "info", {"event": text}) == {"event": kept}
