"""Schemathesis against the live service, every check: no 5xx, every answer one its schema
declares, every request the schema calls valid accepted and every one it calls invalid refused.

`riskalert serve` runs as a real process on a database loaded by `riskalert demo` (SQLite and
PostgreSQL), plus an endpoint, a subscription, the alert it raised and a delivery, so the
fuzzer reaches real resources as well as missing ones. Generation is deterministic (fixed seed,
no example database) and bounded per operation, so a failure in CI replays locally.

What a request's validity depends on beyond its own text (the server's clock, what it stores,
which hosts are public, the order of two fields) no JSON Schema can state; `Runtime` makes the
generated valid requests agree with it, each rule with its reason, as the id dictionaries do
for what exists.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from pydantic import TypeAdapter
from schemathesis import engine
from schemathesis.engine import Status, StopReason, events
from sqlalchemy import select

from services.alerts import jobs as alert_jobs
from services.alerts.models import Alert, Endpoint
from services.alerts.settings import AlertsSettings
from services.core.problems import PROBLEM_MEDIA_TYPE
from services.scoring import jobs
from services.scoring.demo import DEMO_INGEST_KEY, DEMO_TENANT_KEY
from services.scoring.models import Incident
from services.scoring.schemas import Timestamp
from services.scoring.taxonomy import BAND_RANK, Band
from tests.conftest import BACKENDS, make_settings, scratch_postgres
from tests.scenarios.harness import (
    ADMIN_KEY,
    RISKALERT,
    Database,
    Riskalert,
    clean_env,
    free_port,
    sqlite_clone,
)

# Cases per operation in the fuzzing phase (positive and negative together); the coverage
# phase adds its boundary values on top.
MAX_EXAMPLES = 15
SEED = 20250601
# A public address the SSRF guard lets through without a DNS lookup; nothing is ever sent to
# it (the server runs no worker).
PUBLIC_WEBHOOK = "https://93.184.215.14/riskalert-fuzz"
FEEDS = Path(__file__).parent / "fixtures" / "feeds"
# A real export of each source: as text (what the importer sniffs), and as an API page.
IMPORT_FILES = {
    "acled": FEEDS / "acled_export.csv",
    "acled-deleted": FEEDS / "acled_deleted.json",
    "ucdp": FEEDS / "ucdp_ged.csv",
}
IMPORT_PAGES = {
    "acled": FEEDS / "acled_api_page.json",
    "acled-deleted": FEEDS / "acled_deleted.json",
}

TENANT = {"Authorization": f"Bearer {DEMO_TENANT_KEY}"}
INGEST = {"Authorization": f"Bearer {DEMO_INGEST_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Routes only an ingest key gets past the role check on: fuzzed with the demo ingest key.
INGEST_ROUTES = r"^/v1/(incidents($|/batch$)|imports|feeds)"
# Platform administration (tenants, keys, model versions): fuzzed with the admin key.
ADMIN_ROUTES = r"^/v1/(tenants|api-keys|model/versions)"
# Run on its own, last: it may revoke the demo keys every other operation is fuzzed with.
REVOKE_KEY = "DELETE /v1/api-keys/{key_id}"
# Run on its own, first: a publication replays every live rule over 30 days on its targets,
# seconds each once the run has created hundreds of targets and subscriptions.
PUBLISH_MODEL = "POST /v1/model/versions"


@schemathesis.check
def validation_problems_name_the_field(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request refused as invalid says which field is wrong and why."""
    if response.status_code not in (400, 422):
        return None
    if not response.headers.get("content-type", [""])[0].startswith(PROBLEM_MEDIA_TYPE):
        return None  # content_type_conformance reports that
    doc = response.json()
    errors = doc.get("errors") or []
    assert errors, f"a refusal of an invalid request names no field: {doc}"
    for error in errors:
        assert error.get("field"), f"an error names no field: {error}"
        assert error.get("reason"), f"an error gives no reason: {error}"
    return True


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


_TIME = TypeAdapter(Timestamp)
_DURATION = TypeAdapter(timedelta)


def _time(value: Any) -> datetime | None:
    """A generated time as the server reads it, or None for one it would refuse."""
    try:
        return _TIME.validate_python(value)
    except ValueError:
        return None


def _duration(value: Any) -> timedelta | None:
    try:
        return _DURATION.validate_python(value)
    except ValueError:
        return None


def _ordered(body: dict[str, Any], earlier: str, later: str) -> None:
    """Swap two fields (times or numbers) that must not be out of order."""
    first, second = body.get(earlier), body.get(later)
    if isinstance(first, str) and isinstance(second, str):
        first, second = _time(first), _time(second)
    if first is not None and second is not None and first > second:
        body[earlier], body[later] = body[later], body[earlier]


def _not_after(body: dict[str, Any], name: str, latest: datetime) -> None:
    when = _time(body.get(name))
    if when is not None and when > latest:
        body[name] = _iso(latest - timedelta(days=1))


def _rule(rule: Any) -> None:
    """clear_at not above raise_at (by value, or by band)."""
    if not isinstance(rule, dict) or rule.get("kind") != "threshold":
        return
    raise_at, clear_at = rule.get("raise_at"), rule.get("clear_at")
    if isinstance(raise_at, str) and isinstance(clear_at, str):
        if BAND_RANK[Band(clear_at)] > BAND_RANK[Band(raise_at)]:
            rule["raise_at"], rule["clear_at"] = clear_at, raise_at
    else:
        _ordered(rule, "clear_at", "raise_at")


@dataclass
class Runtime:
    """Makes the generated valid requests hold what their schema cannot say."""

    url: str
    subscription: int
    rules: dict[str, int]
    tenant: int
    model_params: dict[str, Any]
    replay_window: timedelta
    fixes: dict[str, Callable[[Any, dict[str, Any], datetime], None]] = field(init=False)

    def __post_init__(self) -> None:
        self.fixes = {
            "POST /v1/incidents": self._incident,
            "GET /v1/incidents": self._bbox,
            "GET /v1/sites/{site_id}/score": self._as_of,
            "GET /v1/corridors/{corridor_id}/score": self._as_of,
            "POST /v1/alerts/{alert_id}/snooze": self._snooze,
            "POST /v1/deliveries/recover": self._recover,
            "POST /v1/alert-previews": self._preview,
            "POST /v1/subscriptions": self._subscription,
            "PATCH /v1/subscriptions/{subscription_id}": self._subscription_patch,
            "POST /v1/subscriptions/{subscription_id}/rules": lambda c, b, n: _rule(b),
            "PUT /v1/subscriptions/{subscription_id}/rules/{rule_id}": self._rule_replacement,
            "POST /v1/endpoints": self._endpoint,
            "PATCH /v1/endpoints/{endpoint_id}": self._endpoint_patch,
            "POST /v1/api-keys": self._api_key,
            "POST /v1/model/versions": self._model,
            "POST /v1/imports/{format}": self._file,
        }

    # The run deletes what it finds, seeded resources included: what exists is asked for when
    # a request needs it.
    def _ids(self, path: str, keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        with httpx.Client(base_url=self.url, headers=TENANT, timeout=30.0) as http:
            page = call(http, "GET", path, TENANT, params={"limit": 20})
        items = page.get("features") or page.get("endpoints") or []
        return [item["id"] for item in items if keep(item)] or [1]

    def _sites(self) -> list[int]:
        return self._ids("/v1/sites", lambda site: True)

    def _endpoints(self, kind: str | None = None) -> list[int]:
        return self._ids("/v1/endpoints", lambda e: kind is None or e["kind"] == kind)

    def __call__(self, ctx: Any, case: Any) -> Any:
        if case.meta is None or not case.meta.generation.mode.is_positive:
            return case
        if case.headers is not None and "Idempotency-Key" in case.headers:
            # A client uses a key once: the same key with another body is refused (422).
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
        fix = self.fixes.get(case.operation.label)
        body = case.body if isinstance(case.body, dict) else {}
        if fix is not None:
            fix(case, body, datetime.now(UTC))
        return case

    # The clock: nothing happened in the future, and a snooze or a replay has a window.
    def _incident(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        for name in ("occurred_at", "reported_at"):
            _not_after(body, name, now)
        _ordered(body, "occurred_at", "reported_at")
        figures = body.get("fatalities")
        if isinstance(figures, dict):
            _ordered(figures, "low", "best")
            _ordered(figures, "best", "high")
            _ordered(figures, "low", "best")

    def _as_of(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        if isinstance(case.query, dict):
            _not_after(case.query, "as_of", now)

    def _snooze(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        if body.get("until") is not None:
            body["until"] = _iso(now + timedelta(days=1))

    def _recover(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        since = _time(body.get("since"))
        if since is not None and since < now - self.replay_window + timedelta(minutes=1):
            body["since"] = _iso(now - timedelta(hours=1))

    def _preview(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        # A day at most every 6 hours: (targets x evaluations) stays within the cap, however
        # many targets the run has created.
        body["since"], body["until"] = _iso(now - timedelta(days=2)), _iso(now - timedelta(days=1))
        step = _duration(body.get("step"))
        if step is not None and step < timedelta(hours=6):
            body["step"] = "PT6H"
        if body.get("target_ids") is not None:
            body["target_ids"] = self._sites()[: len(body["target_ids"])]
        if body.get("changes") is not None:
            body["changes"] = {}  # what a change may hold depends on the stored rule
        _rule(body.get("rule"))

    def _bbox(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        box = case.query.get("bbox") if isinstance(case.query, dict) else None
        if isinstance(box, str):
            corners = box.split(",")
            lon, lat = sorted(corners[0::2], key=float), sorted(corners[1::2], key=float)
            case.query["bbox"] = ",".join([lon[0], lat[0], lon[1], lat[1]])

    # What the server stores: the tenant's targets, endpoints and tenants, the model in force,
    # and a stored subscription's scope or endpoint's kind.
    def _subscription(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        if body.get("target_id") is not None:
            body["target_id"] = self._sites()[0]
        if body.get("endpoint_ids") is not None:
            body["endpoint_ids"] = [self._endpoints()[0]]
        for rule in body.get("rules") or []:
            _rule(rule)

    def _subscription_patch(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        self._subscription(case, body, now)
        # Say the scope the given fields belong to, rather than rely on the stored one.
        if body.get("scope") is None and body.get("target_id") is not None:
            body["scope"] = "target"
        elif body.get("scope") is None and body.get("tag") is not None:
            body["scope"] = "tag"
        if body.get("scope") == "target" and body.get("target_id") is None:
            body["target_id"] = self._sites()[0]
        if body.get("scope") == "tag" and body.get("tag") is None:
            body["tag"] = "fuzzed"

    def _rule_replacement(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        # A rule keeps its kind: replace a seeded rule of the body's kind.
        _rule(body)
        case.path_parameters["subscription_id"] = self.subscription
        case.path_parameters["rule_id"] = self.rules[body.get("kind", "threshold")]

    def _endpoint(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        if body.get("url") is not None:
            body["url"] = PUBLIC_WEBHOOK  # the guard resolves hosts: none do here

    def _endpoint_patch(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        # The seeded endpoint is an email one, which has no url.
        case.path_parameters["endpoint_id"] = self._endpoints(kind="email")[0]
        body.pop("url", None)

    def _api_key(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        if body.get("tenant_id") is not None:
            body["tenant_id"] = self.tenant

    def _model(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        body["params"] = self.model_params

    def _file(self, case: Any, body: dict[str, Any], now: datetime) -> None:
        # A file is valid when it parses as the source's export: a real one.
        source = case.path_parameters["format"]
        if case.media_type == "application/json" and source in IMPORT_PAGES:
            case.body = json.loads(IMPORT_PAGES[source].read_text())
        else:
            if case.media_type == "application/json":
                case.media_type = "text/csv"  # no UCDP page to hand: its export then
            case.body = IMPORT_FILES[source].read_text()


@dataclass
class Live:
    """The running service, the ids of what it holds by parameter name, and its logs."""

    url: str
    ids: dict[str, list[int | str]]
    runtime: Runtime
    logs: Callable[[], str]


def load_demo(url: str, logs: Path) -> None:
    """`riskalert demo` on the database, as a user would load it."""
    log = logs / "demo.log"
    with log.open("ab") as out:
        done = subprocess.run(
            [str(RISKALERT), "demo", "--database-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=logs,
            env=clean_env(),
            timeout=180,
        )
    assert done.returncode == 0, f"riskalert demo failed:\n{log.read_text()}"


def call(http: httpx.Client, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    response = http.request(method, path, headers=headers, **kw)
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def seed_alert_resources(http: httpx.Client, site_id: int) -> dict[str, list[int | str]]:
    """An email endpoint, a subscription with two rules on a site, and a test delivery."""
    endpoint = call(
        http,
        "POST",
        "/v1/endpoints",
        TENANT,
        json={"kind": "email", "name": "Ops desk", "address": "ops@demo.example.com"},
    )
    subscription = call(
        http,
        "POST",
        "/v1/subscriptions",
        TENANT,
        json={
            "name": "The first site",
            "scope": "target",
            "target_id": site_id,
            "endpoint_ids": [endpoint["id"]],
            # The first fires on any score, so there is an alert; the others may be deleted or
            # replaced (a rule keeps its kind).
            "rules": [
                {"kind": "threshold", "raise_at": 0},
                {"kind": "threshold", "raise_at": 90},
                {"kind": "event", "trigger": "kidnapping_nearby"},
            ],
        },
    )
    delivery = call(http, "POST", f"/v1/endpoints/{endpoint['id']}/test", TENANT)
    return {
        "endpoint_id": [endpoint["id"]],
        "subscription_id": [subscription["id"]],
        "rule_id": [r["id"] for r in subscription["rules"]],
        "threshold_rule": [subscription["rules"][1]["id"]],
        "event_rule": [subscription["rules"][2]["id"]],
        "delivery_id": [delivery["id"]],
    }


def prepare(url: str, database: Database) -> tuple[dict[str, list[int | str]], Runtime]:
    """Seed alert resources next to the demo data; the ids the fuzzer may use, by name."""
    with httpx.Client(base_url=url, timeout=30.0) as http:
        sites = call(http, "GET", "/v1/sites", TENANT)["features"]
        corridors = call(http, "GET", "/v1/corridors", TENANT)["features"]
        ids = seed_alert_resources(http, sites[0]["id"])
        keys = call(http, "GET", "/v1/api-keys", ADMIN)
        tenants = call(http, "GET", "/v1/tenants", ADMIN)
        model = call(http, "GET", "/v1/model", TENANT)
    # The pipeline runs here, not in the server: the database then stays still while the
    # fuzzer runs, so a failing case replays against the same state.
    settings = make_settings(database.url)
    jobs.drain(database.sessions, settings)
    alert_jobs.drain(database.sessions, settings)
    with database.reader() as session:
        ids["alert_id"] = list(session.execute(select(Alert.id)).scalars())
        ids["incident_id"] = list(session.execute(select(Incident.id).limit(20)).scalars())
        tokens = session.execute(select(Endpoint.unsubscribe_token)).scalars()
        ids["token"] = [t for t in tokens if t is not None]
    assert ids["alert_id"], "the seeded subscription raised no alert"
    ids["site_id"] = [s["id"] for s in sites]
    ids["corridor_id"] = [c["id"] for c in corridors]
    ids["key_id"] = [k["id"] for k in keys]
    runtime = Runtime(
        url=url,
        subscription=int(ids["subscription_id"][0]),
        rules={
            "threshold": int(ids.pop("threshold_rule")[0]),
            "event": int(ids.pop("event_rule")[0]),
        },
        tenant=tenants[0]["id"],
        model_params=model["params"],
        replay_window=AlertsSettings(database_url=database.url).replay_window,
    )
    return ids, runtime


@pytest.fixture(params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    """`riskalert serve` on a demo database of its own, without its workers."""
    logs = tmp_path / "logs"
    logs.mkdir()
    scratch: AbstractContextManager[str]
    if request.param == "sqlite":
        scratch = nullcontext(sqlite_clone(request.getfixturevalue("sqlite_template"), tmp_path))
    else:
        scratch = scratch_postgres("riskalert_fuzz")
    with scratch as url:
        load_demo(url, logs)
        database = Database(url)
        stack = Riskalert(database, logs, smtp_port=free_port())
        try:
            server = stack.serve(
                inline_worker=False,
                # Production's SSRF screen: fuzzed webhook URLs are refused, never called.
                RISKALERT_WEBHOOK_ALLOW_HTTP="false",
                RISKALERT_WEBHOOK_ALLOWLIST="[]",
                # Thousands of requests a minute from one key: per-key limits would answer 429
                # at moments that depend on the machine's speed, and the run would not replay.
                RISKALERT_RATE_LIMIT="",
                RISKALERT_RATE_LIMIT_UNAUTHENTICATED="",
            )
            ids, runtime = prepare(server.url, database)
            yield Live(server.url, ids, runtime, lambda: logged_above_info(stack))
        except BaseException:
            print(stack.logs_text())
            raise
        finally:
            stack.stop_all()
            database.close()


def logged_above_info(stack: Riskalert) -> str:
    """What the riskalert processes logged above INFO, last lines last: a 5xx's traceback."""
    lines = [
        line
        for proc in stack.procs
        for line in proc.output().splitlines()
        if '"level": "info"' not in line and " INFO " not in line
    ]
    return "\n".join(lines[-300:])


def fuzz_config(live: Live) -> schemathesis.Config:
    """Deterministic, bounded generation over every phase but the stateful one."""
    dictionaries = {name: {"values": values} for name, values in live.ids.items() if values}
    # Half the ids are real ones (the demo's and the seeded), half whatever is generated.
    parameters: dict[str, Any] = {
        f"path.{name}": {"dictionary": name, "probability": 0.5} for name in dictionaries
    }
    for name in ("subscription_id", "endpoint_id", "alert_id"):
        parameters[f"query.{name}"] = {"dictionary": name, "probability": 0.5}
    parameters["query.target_id"] = {"dictionary": "site_id", "probability": 0.5}
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": live.url,
            "headers": TENANT,
            "dictionaries": dictionaries,
            "parameters": parameters,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # Generated X-API-Key values would take precedence over the key we send.
                "with-security-parameters": False,
            },
            # Every check schemathesis has (but the response time, which needs a limit) and ours.
            "checks": {"enabled": True},
            "phases": {
                # Positive coverage only: its boundary values (largest ids, page sizes, radii,
                # coordinates) reach the code behind validation. Its negative half is ~3,500
                # wrong-type cases per engine that pydantic refuses before any of our code
                # runs; the fuzzing phase's negative cases keep sampling those.
                "coverage": {"generation": {"mode": "positive"}},
                # Stateful runs chain calls at random lengths: unbounded time for little here.
                "stateful": {"enabled": False},
            },
            "request-timeout": 30,
            "operations": [
                {"include-path-regex": INGEST_ROUTES, "headers": INGEST},
                {"include-path-regex": ADMIN_ROUTES, "headers": ADMIN},
            ],
        }
    )


def run_engine(schema: Any) -> list[str]:
    """Run the phases over `schema`: each failed check or error, with a curl to replay it."""
    found: list[str] = []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            if event.status in (Status.SUCCESS, Status.SKIP):
                continue
            where = f"{event.recorder.label} [{event.phase.value}]"
            reported = len(found)
            for case_id, checks in event.recorder.checks.items():
                interaction = event.recorder.interactions.get(case_id)
                response = getattr(interaction, "response", None)
                answer = (
                    f"answered {response.status_code}: {response.content[:400]!r}\n"
                    if response is not None
                    else ""
                )
                for check in checks:
                    info = check.failure_info
                    if info is not None:
                        found.append(
                            f"{where} {check.name}: {info.failure.title}\n"
                            f"{info.failure.message}\n{answer}{info.code_sample}"
                        )
            if len(found) == reported:
                found.append(f"{where}: {event.status.value}")
        elif isinstance(event, events.NonFatalError):
            found.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            assert event.stop_reason == StopReason.COMPLETED, event.stop_reason
    return found


def only(*labels: str) -> Callable[[Any], bool]:
    """An `exclude` filter keeping only the operations `labels`."""
    return lambda ctx: ctx.operation.label not in labels


def all_but(*labels: str) -> Callable[[Any], bool]:
    """An `exclude` filter keeping every operation but `labels`."""
    return lambda ctx: ctx.operation.label in labels


def test_live_api_answers_only_as_its_schema_declares(live: Live) -> None:
    schema = schemathesis.openapi.from_url(
        f"{live.url}/openapi.json", config=fuzz_config(live), timeout=30
    )
    schema.hook("map_case")(live.runtime)
    # `include` would widen the config's per-operation filters instead of narrowing them.
    failures = run_engine(schema.exclude(func=only(PUBLISH_MODEL)))
    failures += run_engine(schema.exclude(func=all_but(PUBLISH_MODEL, REVOKE_KEY)))
    failures += run_engine(schema.exclude(func=only(REVOKE_KEY)))
    if failures:
        report = "\n\n".join([*failures, "riskalert logged:", live.logs()])
        pytest.fail(f"{len(failures)} failures:\n\n{report}", pytrace=False)
