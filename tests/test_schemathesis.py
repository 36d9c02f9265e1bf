"""Schemathesis against the live service: no 5xx, and every answer is one its schema declares.

`riskalert serve` runs as a real process on a database loaded by `riskalert demo` (SQLite and
PostgreSQL), plus an endpoint, a subscription, the alert it raised and a delivery, so the
fuzzer reaches real resources as well as missing ones. Generation is deterministic (fixed seed,
no example database) and bounded per operation, so a failure in CI replays locally.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import Status, StopReason, events
from sqlalchemy import select

from services.alerts import jobs as alert_jobs
from services.alerts.models import Alert, Endpoint
from services.core.problems import PROBLEM_MEDIA_TYPE
from services.scoring import jobs
from services.scoring.demo import DEMO_INGEST_KEY, DEMO_TENANT_KEY
from services.scoring.models import Incident
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
MAX_EXAMPLES = 50
SEED = 20250601
# Every check schemathesis has, the built-in expectations unchanged but for one: a schema-valid
# request may be a 422 when, and only when, it breaks a rule no JSON Schema can state (the
# clock, what is stored, the network, a file's content, the model's rules). Which rules those
# are is listed below, and `positive_refusals_break_only_unstatable_rules` holds every such 422
# to the list: a 422 for anything a schema could have said fails the run.
CUSTOM_CHECKS = (
    "validation_problems_name_the_field",
    "positive_refusals_break_only_unstatable_rules",
)
# (field, reason) of each rule no schema states, as regular expressions, and why it cannot.
UNSTATABLE: list[tuple[str, str, str]] = [
    # The clock.
    ("as_of|occurred_at", r"later than now \+", "nothing happened in the future"),
    ("until", r"must not be in the future", "a preview ends by now"),
    ("until", r"must lie in the next 30 days", "a snooze ends within 30 days of now"),
    ("since", r"older than the replay window", "recovery reaches back 14 days from now"),
    # The order of two fields.
    ("until", r"must be after since|the period must not exceed", "a period's two ends"),
    ("reported_at", r"reported_at is before occurred_at", "two times of one incident"),
    ("fatalities", r"low <= best <= high", "three counts of one incident"),
    ("bbox", r"^min_(lon|lat) above max_(lon|lat)$", "a box's two corners, in one string"),
    (
        r"(rules\.\d+\.)?threshold",
        r"clear_at must not be (a higher band than|above) raise_at",
        "a rule's two thresholds",
    ),
    # What is stored.
    ("tenant_id", r"^no such tenant$", "ids must exist"),
    (
        r"endpoint_ids\.\d+|target_id",
        r"^no such (endpoint|target|site or corridor)$",
        "ids must be the tenant's",
    ),
    (
        "target_id|tag",
        r"^required when scope is (target|tag)$",
        "a PATCH of the scope alone keeps the stored target or tag, if there is one",
    ),
    # The network.
    (
        "url",
        r"^could not resolve host |^(unspecified|loopback|link-local|multicast|unique-local|"
        r"reserved|private|non-global) address ",
        "a webhook's host resolves to public addresses",
    ),
    # A file's content, and the model's rules over every parameter.
    ("body", r"^line \d+: ", "an import's CSV or API pages"),
    (r"params(\..*)?", r".", "the model's parameters, each checked by the model"),
]

TENANT = {"Authorization": f"Bearer {DEMO_TENANT_KEY}"}
INGEST = {"Authorization": f"Bearer {DEMO_INGEST_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Routes only an ingest key gets past the role check on: fuzzed with the demo ingest key.
INGEST_ROUTES = r"^/v1/(incidents($|/batch$)|imports|feeds)"
# Platform administration (tenants, keys, model versions): fuzzed with the admin key.
ADMIN_ROUTES = r"^/v1/(tenants|api-keys|model/versions)"
# Run on its own, last: it may revoke the demo keys every other operation is fuzzed with.
REVOKE_KEY = "DELETE /v1/api-keys/{key_id}"


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


@schemathesis.check
def positive_refusals_break_only_unstatable_rules(
    ctx: Any, response: Any, case: Any
) -> bool | None:
    """A schema-valid request refused with 422 breaks only rules the schema cannot state."""
    if response.status_code != 422 or case.meta is None:
        return None
    if not case.meta.generation.mode.is_positive:
        return None
    if any(value is None for value in (case.path_parameters or {}).values()):
        # A stateful step whose link took a null (a delivery's alert_id) into the path: the
        # request sent `/None`, which is no schema-valid request.
        return None
    for error in response.json().get("errors") or []:
        field, reason = str(error.get("field")), str(error.get("reason"))
        assert any(
            re.fullmatch(fields, field) and re.search(reasons, reason)
            for fields, reasons, _ in UNSTATABLE
        ), f"a schema-valid request was refused for what the schema could say: {field}: {reason}"
    return True


@dataclass
class Live:
    """The running service, the ids of what it holds by parameter name, and its logs."""

    url: str
    ids: dict[str, list[int | str]]
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
            # The first fires on any score, so there is an alert; the second may be deleted.
            "rules": [{"kind": "threshold", "raise_at": 0}, {"kind": "threshold", "raise_at": 90}],
        },
    )
    delivery = call(http, "POST", f"/v1/endpoints/{endpoint['id']}/test", TENANT)
    return {
        "endpoint_id": [endpoint["id"]],
        "subscription_id": [subscription["id"]],
        "rule_id": [r["id"] for r in subscription["rules"]],
        "delivery_id": [delivery["id"]],
    }


def prepare(url: str, database: Database) -> dict[str, list[int | str]]:
    """Seed alert resources next to the demo data; the ids the fuzzer may use, by name."""
    with httpx.Client(base_url=url, timeout=30.0) as http:
        sites = call(http, "GET", "/v1/sites", TENANT)["features"]
        corridors = call(http, "GET", "/v1/corridors", TENANT)["features"]
        ids = seed_alert_resources(http, sites[0]["id"])
        keys = call(http, "GET", "/v1/api-keys", ADMIN)
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
    return ids


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
            yield Live(server.url, prepare(server.url, database), lambda: logged_above_info(stack))
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
    """Deterministic, bounded generation over every phase."""
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
            "checks": {
                **{name: {"enabled": True} for name in CUSTOM_CHECKS},
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
                },
            },
            "phases": {
                # Boundary values (largest ids, page sizes, radii, coordinates) reach the code
                # behind validation; the negative half sends each field's wrong types, missing
                # required headers and every method a path does not serve.
                "coverage": {"generation": {"mode": "all"}},
                # Chains of calls along the inferred links (use_after_free and
                # ensure_resource_availability check those), kept short and few for time.
                "stateful": {"enabled": True, "max-steps": 6, "generation": {"max-examples": 10}},
            },
            "request-timeout": 30,
            "operations": [
                {"include-path-regex": INGEST_ROUTES, "headers": INGEST},
                {"include-path-regex": ADMIN_ROUTES, "headers": ADMIN},
            ],
        }
    )


def run_engine(schema: Any, ran: Counter[str]) -> list[str]:
    """Run the phases over `schema`: each failed check or error, with a curl to replay it.

    `ran` counts the scenarios that passed, by phase.
    """
    found: list[str] = []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            ran[event.phase.value] += event.status is Status.SUCCESS
            if event.status in (Status.SUCCESS, Status.SKIP):
                continue
            where = f"{event.recorder.label} [{event.phase.value}]"
            reported = len(found)
            for checks in event.recorder.checks.values():
                for check in checks:
                    info = check.failure_info
                    if info is not None:
                        found.append(
                            f"{where} {check.name}: {info.failure.title}\n"
                            f"{info.failure.message}\n{info.code_sample}"
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


def test_live_api_answers_only_as_its_schema_declares(live: Live) -> None:
    schema = schemathesis.openapi.from_url(
        f"{live.url}/openapi.json", config=fuzz_config(live), timeout=30
    )
    # `include` would widen the config's per-operation filters instead of narrowing them.
    ran: Counter[str] = Counter()
    failures = run_engine(schema.exclude(func=lambda ctx: ctx.operation.label == REVOKE_KEY), ran)
    # One operation alone has no links to follow: no stateful phase for it.
    schema.config.phases.stateful.enabled = False
    failures += run_engine(schema.exclude(func=lambda ctx: ctx.operation.label != REVOKE_KEY), ran)
    # Every phase did run: the stateful one follows the links schemathesis infers from the
    # responses (a created resource's id, its Location).
    assert {"coverage", "fuzzing", "stateful"} <= {phase for phase, n in ran.items() if n}, ran
    if failures:
        report = "\n\n".join([*failures, "riskalert logged:", live.logs()])
        pytest.fail(f"{len(failures)} failures:\n\n{report}", pytrace=False)
