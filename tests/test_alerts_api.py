"""The alerts API: endpoints, subscriptions and rules, alerts, deliveries, unsubscribe, audit."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from services.alerts import outbox, schemas
from services.alerts.models import (
    Alert,
    Delivery,
    DeliveryAttempt,
    Endpoint,
    EndpointSecret,
    Rule,
)
from services.alerts.schemas import DeliveryStatus
from services.core.models import IdempotencyRecord
from tests.conftest import Api, assert_problem, error_fields

HOOK = "http://127.0.0.1:9/hook"
NAMED_HOOK = "https://hooks.example.com/riskalert"
DJIBO = [-1.63, 14.10]
SITE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": DJIBO},
    "properties": {"name": "Djibo camp", "country": "BFA", "tags": ["mines"]},
}
ALWAYS = {"kind": "threshold", "raise_at": 0}  # fires on any score
NEVER = {"kind": "threshold", "raise_at": 100, "clear_at": 99}


@pytest.fixture
def hooks(api_factory: Callable[..., Api]) -> Api:
    """The app letting loopback http receivers (and one named host) through the SSRF guard."""
    return api_factory(
        webhook_allow_http=True, webhook_allowlist=["127.0.0.1", "hooks.example.com"]
    )


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def created(response: Any, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def webhook(api: Api, name: str = "ops hook", url: str = HOOK, **headers: str) -> dict[str, Any]:
    body = {"kind": "webhook", "name": name, "url": url}
    return created(api.client.post("/v1/endpoints", json=body, headers={**api.a, **headers}))


def email(
    api: Api, headers: dict[str, str] | None = None, address: str = "ops@example.com"
) -> dict[str, Any]:
    body = {"kind": "email", "name": "ops desk", "address": address}
    return created(api.client.post("/v1/endpoints", json=body, headers=headers or api.a))


def site(api: Api, headers: dict[str, str] | None = None) -> int:
    return int(created(api.client.post("/v1/sites", json=SITE, headers=headers or api.a))["id"])


def subscription(api: Api, endpoint_ids: list[int], **fields: Any) -> dict[str, Any]:
    body = {
        "name": "Djibo watch",
        "scope": "all",
        "endpoint_ids": endpoint_ids,
        "rules": [ALWAYS],
        **fields,
    }
    return created(api.client.post("/v1/subscriptions", json=body, headers=api.a))


def firing_alert(api: Api) -> dict[str, Any]:
    """A site watched by a rule that fires at once, run through the pipeline."""
    target_id = site(api)
    endpoint_id = email(api)["id"]
    subscription(api, [endpoint_id], scope="target", target_id=target_id)
    api.drain_alerts()
    alerts = api.client.get("/v1/alerts", headers=api.a).json()["alerts"]
    assert [a["state"] for a in alerts] == ["firing"]
    alert: dict[str, Any] = alerts[0]
    return alert


def audit_entries(api: Api, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = api.client.get(
        "/v1/audit-log", headers=headers or api.a
    ).json()["entries"]
    return entries


def set_delivery(api: Api, delivery_id: int, **values: Any) -> None:
    with api.app.state.sessions.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


# --------------------------------------------------------------------------------------------
# Endpoints


def test_webhook_secret_is_shown_once_at_creation_and_never_in_reads(hooks: Api) -> None:
    made = webhook(hooks)
    assert made["secret"].startswith("whsec_")
    assert made["url"] == HOOK
    assert made["address"] is None
    assert made["enabled"] is True
    assert made["secrets_in_grace"] == 0
    assert made["secret_rotated_at"] is None
    read = hooks.client.get(f"/v1/endpoints/{made['id']}", headers=hooks.a)
    listed = hooks.client.get("/v1/endpoints", headers=hooks.a)
    for response in (read, listed):
        assert response.status_code == 200
        assert "whsec_" not in response.text
    assert "secret" not in read.json()
    assert "secret" not in listed.json()["endpoints"][0]
    assert [e["id"] for e in listed.json()["endpoints"]] == [made["id"]]
    with hooks.app.state.sessions() as session:
        stored = session.execute(select(EndpointSecret.secret)).scalars().all()
    assert stored == [made["secret"]]


def test_email_endpoint_gets_an_unsubscribe_token_and_no_secret(api: Api) -> None:
    made = email(api)
    assert made["secret"] is None
    assert made["address"] == "ops@example.com"
    assert made["url"] is None
    assert made["secrets_in_grace"] is None
    with api.app.state.sessions() as session:
        row = session.get(Endpoint, made["id"])
        assert row is not None
        assert row.unsubscribe_token
        assert len(row.unsubscribe_token) >= 32


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hook", "loopback address 127.0.0.1"),
        ("https://localhost/hook", "loopback address"),
        ("https://169.254.169.254/latest/meta-data", "link-local address 169.254.169.254"),
        ("https://10.0.0.1/hook", "private address 10.0.0.1"),
        ("https://[::1]/hook", "loopback address ::1"),
        ("https://no-such-host.invalid/hook", "could not resolve host"),
        ("http://hooks.example.com/hook", "scheme http not allowed"),
    ],
)
def test_webhook_urls_refused_by_the_ssrf_guard_are_422_naming_url(
    api: Api, url: str, reason: str
) -> None:
    response = api.client.post(
        "/v1/endpoints", json={"kind": "webhook", "name": "x", "url": url}, headers=api.a
    )
    doc = assert_problem(response, 422)
    assert error_fields(doc) == {"url"}
    assert reason in doc["errors"][0]["reason"]
    assert api.client.get("/v1/endpoints", headers=api.a).json()["endpoints"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "webhook", "name": "x"}, "url"),
        ({"kind": "webhook", "name": "x", "url": HOOK, "address": "a@b.co"}, "address"),
        ({"kind": "email", "name": "x"}, "address"),
        ({"kind": "email", "name": "x", "address": "not-an-address"}, "address"),
        ({"kind": "email", "name": "x", "address": "a@b.co\r\nBcc: x@y.co"}, "address"),
        ({"kind": "email", "name": "x", "address": "a" * 250 + "@b.co"}, "address"),
        ({"kind": "email", "name": "x", "address": "a@b.co\n"}, "address"),
        ({"kind": "email", "name": "x", "address": "first..last@b.co"}, "address"),
        ({"kind": "webhook", "name": "x", "url": "ftp://127.0.0.1/x"}, "url"),
        ({"kind": "webhook", "name": "x", "url": "http://127.0.0.1/" + "a" * 2048}, "url"),
        ({"kind": "webhook", "name": "", "url": HOOK}, "name"),
        ({"kind": "webhook", "name": "x\x00", "url": HOOK}, "name"),
        ({"kind": "sms", "name": "x"}, "kind"),
    ],
)
def test_invalid_endpoint_bodies_are_422_naming_the_field(
    hooks: Api, body: dict[str, Any], field: str
) -> None:
    doc = assert_problem(hooks.client.post("/v1/endpoints", json=body, headers=hooks.a), 422)
    assert error_fields(doc) == {field}


@pytest.mark.parametrize(
    "address", ["first.last+alerts@mail.example.com", "ops@a--b.example", "o'neil@mine.ml"]
)
def test_an_address_the_schema_pattern_states_is_accepted_as_it_is(api: Api, address: str) -> None:
    pattern = api.client.get("/openapi.json").json()["components"]["schemas"]["EndpointIn"][
        "properties"]["address"]["anyOf"][0]["pattern"]  # fmt: skip
    assert re.search(pattern, address)

    assert email(api, address=address)["address"] == address


def test_patch_rechecks_the_url_and_re_enabling_clears_the_failure_record(hooks: Api) -> None:
    made = webhook(hooks)
    url = f"/v1/endpoints/{made['id']}"
    doc = assert_problem(
        hooks.client.patch(url, json={"url": "https://10.1.2.3/x"}, headers=hooks.a), 422
    )
    assert error_fields(doc) == {"url"}
    assert "private" in doc["errors"][0]["reason"]
    # Valid for an email endpoint, so not a 422: it conflicts with this endpoint's kind.
    doc = assert_problem(
        hooks.client.patch(url, json={"address": "a@example.com"}, headers=hooks.a), 409
    )
    assert error_fields(doc) == {"address"}
    assert doc["type"].endswith("/endpoint-kind")
    doc = assert_problem(hooks.client.patch(url, json={"name": None}, headers=hooks.a), 422)
    assert error_fields(doc) == {"name"}
    doc = assert_problem(hooks.client.patch(url, json={"enabled": 0}, headers=hooks.a), 422)
    assert error_fields(doc) == {"enabled"}

    moved = hooks.client.patch(url, json={"url": NAMED_HOOK, "name": "moved"}, headers=hooks.a)
    assert moved.status_code == 200, moved.text
    assert moved.json()["url"] == NAMED_HOOK
    assert moved.json()["name"] == "moved"

    # The worker gave up on it: failing for days, then disabled.
    now = datetime.now(UTC)
    with hooks.app.state.sessions.begin() as session:
        row = session.get(Endpoint, made["id"])
        assert row is not None
        row.failing_since = now - timedelta(days=5)
        outbox.disable_endpoint(session, row, "only failures since ...", now)
    disabled = hooks.client.get(url, headers=hooks.a).json()
    assert disabled["enabled"] is False
    assert disabled["disabled_reason"].startswith("only failures")
    assert disabled["disabled_at"] is not None
    assert disabled["failing_since"] is not None

    enabled = hooks.client.patch(url, json={"enabled": True}, headers=hooks.a).json()
    assert enabled["enabled"] is True
    assert enabled["disabled_reason"] is None
    assert enabled["disabled_at"] is None
    assert enabled["failing_since"] is None


def test_rotation_keeps_the_old_secret_signing_until_the_grace_ends(hooks: Api) -> None:
    made = webhook(hooks)
    url = f"/v1/endpoints/{made['id']}/rotate-secret"
    rotated = created(hooks.client.post(url, json={"grace": "PT2H"}, headers=hooks.a), 200)
    new, old = rotated["secret"], made["secret"]
    assert new.startswith("whsec_")
    assert new != old
    assert rotated["secrets_in_grace"] == 1
    assert rotated["secret_rotated_at"] is not None
    read = hooks.client.get(f"/v1/endpoints/{made['id']}", headers=hooks.a)
    assert new not in read.text
    assert old not in read.text

    with hooks.app.state.sessions() as session:
        rows = session.execute(select(EndpointSecret).order_by(EndpointSecret.id)).scalars().all()
        assert [r.secret for r in rows] == [old, new]
        assert rows[1].expires_at is None
        assert rows[0].expires_at is not None
        expiry = rows[0].expires_at
        secrets = outbox.active_secrets
        assert secrets(session, {made["id"]}, expiry - timedelta(seconds=1)) == {
            made["id"]: [new, old]
        }
        assert secrets(session, {made["id"]}, expiry) == {made["id"]: [new]}
    assert (
        timedelta(hours=2) - timedelta(minutes=1) < expiry - datetime.now(UTC) <= timedelta(hours=2)
    )


def test_rotations_in_a_row_keep_at_most_three_secrets_signing(hooks: Api) -> None:
    made = webhook(hooks)
    url = f"/v1/endpoints/{made['id']}/rotate-secret"
    issued = [made["secret"]]
    for _ in range(28):
        issued.append(
            created(hooks.client.post(url, json={"grace": "PT2H"}, headers=hooks.a), 200)["secret"]
        )

    with hooks.app.state.sessions() as session:
        signing = outbox.active_secrets(session, {made["id"]}, datetime.now(UTC))[made["id"]]
    # The newest secret and the two before it, newest first; the rest were dropped.
    assert signing == issued[:-4:-1]


def test_rotation_without_a_body_uses_the_configured_grace_and_refuses_more_than_a_week(
    hooks: Api,
) -> None:
    made = webhook(hooks)
    url = f"/v1/endpoints/{made['id']}/rotate-secret"
    assert hooks.client.post(url, headers=hooks.a).status_code == 200
    with hooks.app.state.sessions() as session:
        first = (
            session.execute(select(EndpointSecret).order_by(EndpointSecret.id)).scalars().first()
        )
        assert first is not None
        assert first.expires_at is not None
        grace = first.expires_at - datetime.now(UTC)
    assert hooks.settings.secret_rotation_grace - timedelta(minutes=1) < grace
    doc = assert_problem(hooks.client.post(url, json={"grace": "P8D"}, headers=hooks.a), 422)
    assert error_fields(doc) == {"grace"}
    mail = email(hooks)
    response = hooks.client.post(f"/v1/endpoints/{mail['id']}/rotate-secret", headers=hooks.a)
    assert_problem(response, 409)


def test_an_endpoint_in_use_cannot_be_deleted_until_its_subscription_is(api: Api) -> None:
    endpoint_id = email(api)["id"]
    sub = subscription(api, [endpoint_id])
    created(api.client.post(f"/v1/endpoints/{endpoint_id}/test", headers=api.a), 202)
    doc = assert_problem(api.client.delete(f"/v1/endpoints/{endpoint_id}", headers=api.a), 409)
    assert str(sub["id"]) in doc["detail"]
    assert api.client.delete(f"/v1/subscriptions/{sub['id']}", headers=api.a).status_code == 204
    assert api.client.delete(f"/v1/endpoints/{endpoint_id}", headers=api.a).status_code == 204
    assert_problem(api.client.get(f"/v1/endpoints/{endpoint_id}", headers=api.a), 404)
    assert api.client.get("/v1/deliveries", headers=api.a).json()["deliveries"] == []


def test_deleting_a_subscription_removes_its_alerts_and_keeps_its_deliveries(api: Api) -> None:
    alert = firing_alert(api)
    sent = api.client.get("/v1/deliveries", params={"alert_id": alert["id"]}, headers=api.a)
    assert [d["event_type"] for d in sent.json()["deliveries"]] == ["alert.firing"]
    url = f"/v1/subscriptions/{alert['subscription_id']}"
    assert api.client.delete(url, headers=api.a).status_code == 204
    assert_problem(api.client.get(url, headers=api.a), 404)
    assert_problem(api.client.get(f"/v1/alerts/{alert['id']}", headers=api.a), 404)
    kept = api.client.get("/v1/deliveries", headers=api.a).json()["deliveries"]
    assert [(d["event_type"], d["alert_id"]) for d in kept] == [("alert.firing", None)]


def test_creating_an_endpoint_with_the_same_idempotency_key_returns_it_once_without_the_secret(
    hooks: Api,
) -> None:
    first = webhook(hooks, **{"Idempotency-Key": "create-hook-1"})
    again = webhook(hooks, **{"Idempotency-Key": "create-hook-1"})
    assert first["secret"].startswith("whsec_")
    # The secret is shown once: the replay is the same endpoint without it, and the stored
    # response holds no secret either.
    assert again == {**first, "secret": None}
    with hooks.app.state.sessions() as session:
        stored = session.execute(select(IdempotencyRecord.body)).scalars().all()
    assert stored
    assert not any("whsec_" in body for body in stored)
    assert len(hooks.client.get("/v1/endpoints", headers=hooks.a).json()["endpoints"]) == 1
    other = hooks.client.post(
        "/v1/endpoints",
        json={"kind": "webhook", "name": "another", "url": HOOK},
        headers={**hooks.a, "Idempotency-Key": "create-hook-1"},
    )
    assert assert_problem(other, 409)["type"].endswith("idempotency-key-reused")


def test_subscriptions_and_rules_are_created_once_per_idempotency_key(api: Api) -> None:
    endpoint_id = email(api)["id"]
    body = {"name": "w", "scope": "all", "endpoint_ids": [endpoint_id], "rules": [ALWAYS]}
    key = {**api.a, "Idempotency-Key": "sub-1"}
    first = created(api.client.post("/v1/subscriptions", json=body, headers=key))
    assert created(api.client.post("/v1/subscriptions", json=body, headers=key)) == first
    rules = f"/v1/subscriptions/{first['id']}/rules"
    event = {"kind": "event", "trigger": "threat_matching"}
    rule_key = {**api.a, "Idempotency-Key": "rule-1"}
    rule = created(api.client.post(rules, json=event, headers=rule_key))
    assert created(api.client.post(rules, json=event, headers=rule_key)) == rule
    assert rule["kind"] == "event"
    read = api.client.get("/v1/subscriptions", headers=api.a).json()["subscriptions"]
    assert [[r["id"] for r in s["rules"]] for s in read] == [[first["rules"][0]["id"], rule["id"]]]


# --------------------------------------------------------------------------------------------
# Unsubscribe


def test_unsubscribe_page_only_shows_a_form_and_the_one_click_post_disables_the_address(
    api: Api,
) -> None:
    made = email(api)
    other = email(api, address="desk@example.com")
    with api.app.state.sessions() as session:
        row = session.get(Endpoint, made["id"])
        assert row is not None
        assert row.unsubscribe_token is not None
        token = row.unsubscribe_token
    page = api.client.get(f"/v1/unsubscribe/{token}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in page.text
    assert api.client.get(f"/v1/endpoints/{made['id']}", headers=api.a).json()["enabled"]

    # What a mail provider sends (RFC 8058): no key, a form body.
    response = api.client.post(
        f"/v1/unsubscribe/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    read = api.client.get(f"/v1/endpoints/{made['id']}", headers=api.a).json()
    assert read["enabled"] is False
    assert read["disabled_reason"] == "unsubscribed"
    assert api.client.get(f"/v1/endpoints/{other['id']}", headers=api.a).json()["enabled"]
    assert api.client.post(f"/v1/unsubscribe/{token}").status_code == 200  # again: no change

    entries = [e for e in audit_entries(api) if e["action"] == "endpoint.unsubscribe"]
    assert len(entries) == 1
    assert entries[0]["api_key_id"] is None
    assert entries[0]["tenant_id"] == api.tenant_a
    assert entries[0]["before"]["enabled"] is True
    assert entries[0]["after"]["enabled"] is False
    assert token not in str(audit_entries(api))


def test_an_unknown_unsubscribe_token_is_404(api: Api) -> None:
    assert_problem(api.client.get("/v1/unsubscribe/not-a-token"), 404)
    assert_problem(api.client.post("/v1/unsubscribe/not-a-token"), 404)


# --------------------------------------------------------------------------------------------
# Subscriptions and rules


def test_subscription_is_created_with_its_rules_each_with_an_id(api: Api) -> None:
    target_id = site(api)
    endpoint_id = email(api)["id"]
    made = subscription(
        api,
        [endpoint_id],
        scope="target",
        target_id=target_id,
        rules=[NEVER, {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 30}],
        digest_bands=["moderate", "low", "moderate"],
    )
    assert made["scope"] == "target"
    assert made["target_id"] == target_id
    assert made["tag"] is None
    assert made["endpoint_ids"] == [endpoint_id]
    assert made["digest_bands"] == ["low", "moderate"]
    assert [r["kind"] for r in made["rules"]] == ["threshold", "event"]
    assert all(isinstance(r["id"], int) for r in made["rules"])
    assert made["rules"][0]["clear_at"] == 99
    read = api.client.get(f"/v1/subscriptions/{made['id']}", headers=api.a).json()
    assert read == made
    listed = api.client.get("/v1/subscriptions", headers=api.a).json()
    assert listed["subscriptions"] == [made]
    assert listed["next_cursor"] is None
    with api.app.state.sessions() as session:
        rules = session.execute(select(Rule).order_by(Rule.id)).scalars().all()
        assert [(r.kind, r.enabled, r.seeded) for r in rules] == [
            ("threshold", True, False),
            ("event", True, False),
        ]


def test_invalid_subscriptions_are_422_naming_the_fields(api: Api) -> None:
    mine = email(api)["id"]
    theirs = email(api, headers=api.b)["id"]
    their_site = site(api, headers=api.b)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"scope": "target"}, {"target_id"}),
        ({"scope": "tag"}, {"tag"}),
        ({"scope": "all", "tag": "mines"}, {"tag"}),
        ({"scope": "target", "target_id": their_site}, {"target_id"}),
        ({"endpoint_ids": [mine, theirs]}, {"endpoint_ids.1"}),
        ({"endpoint_ids": [mine, mine]}, {"endpoint_ids.1"}),
        ({"endpoint_ids": []}, {"endpoint_ids"}),
        ({"endpoint_ids": list(range(1, 22))}, {"endpoint_ids"}),
        ({"endpoint_ids": [2**31]}, {"endpoint_ids.0"}),
        ({"rules": []}, {"rules"}),
        ({"rules": [ALWAYS] * 21}, {"rules"}),
        ({"rules": [{"kind": "threshold"}]}, {"rules.0.threshold.raise_at"}),
        ({"digest_bands": ["severe"]}, {"digest_bands.0"}),
        ({"colour": "red"}, {"colour"}),
        ({"enabled": 0}, {"enabled"}),
    ]
    for fields, named in cases:
        body = {"name": "w", "scope": "all", "endpoint_ids": [mine], "rules": [ALWAYS], **fields}
        response = api.client.post("/v1/subscriptions", json=body, headers=api.a)
        doc = assert_problem(response, 422)
        assert error_fields(doc) == named, (fields, doc)
    assert api.client.get("/v1/subscriptions", headers=api.a).json()["subscriptions"] == []


def test_changing_a_subscription_scope_re_evaluates_every_rule(api: Api) -> None:
    target_id = site(api)
    endpoint_id = email(api)["id"]
    made = subscription(api, [endpoint_id], scope="target", target_id=target_id)
    api.drain_alerts()

    def seeded() -> list[bool]:
        with api.app.state.sessions() as session:
            return list(session.execute(select(Rule.seeded)).scalars())

    assert seeded() == [True]
    url = f"/v1/subscriptions/{made['id']}"
    renamed = api.client.patch(url, json={"name": "renamed"}, headers=api.a).json()
    assert renamed["name"] == "renamed"
    assert seeded() == [True]

    doc = assert_problem(api.client.patch(url, json={"scope": "tag"}, headers=api.a), 422)
    assert error_fields(doc) == {"tag"}
    patched = api.client.patch(url, json={"scope": "tag", "tag": "mines"}, headers=api.a)
    assert patched.status_code == 200, patched.text
    assert patched.json()["scope"] == "tag"
    assert patched.json()["target_id"] is None
    assert seeded() == [False]

    other = email(api, headers=api.b)["id"]
    doc = assert_problem(api.client.patch(url, json={"endpoint_ids": [other]}, headers=api.a), 422)
    assert error_fields(doc) == {"endpoint_ids.0"}


def test_rules_are_added_replaced_and_deleted_but_never_the_last_one(api: Api) -> None:
    made = subscription(api, [email(api)["id"]])
    first = made["rules"][0]["id"]
    base = f"/v1/subscriptions/{made['id']}/rules"
    added = created(api.client.post(base, json=NEVER, headers=api.a))
    assert added["kind"] == "threshold"
    assert added["raise_at"] == 100

    with api.app.state.sessions.begin() as session:
        session.execute(update(Rule).values(seeded=True))
    replaced = api.client.put(
        f"{base}/{added['id']}", json={"kind": "threshold", "raise_at": 90}, headers=api.a
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["raise_at"] == 90
    assert replaced.json()["id"] == added["id"]
    with api.app.state.sessions() as session:
        rule = session.get(Rule, added["id"])
        assert rule is not None
        assert rule.seeded is False
        assert rule.params["raise_at"] == 90

    event = {"kind": "event", "trigger": "kidnapping_nearby"}
    # A valid rule, but of another kind than the stored one: a conflict, not a bad request.
    doc = assert_problem(api.client.put(f"{base}/{added['id']}", json=event, headers=api.a), 409)
    assert error_fields(doc) == {"kind"}
    assert doc["type"].endswith("/rule-kind")

    assert api.client.delete(f"{base}/{first}", headers=api.a).status_code == 204
    doc = assert_problem(api.client.delete(f"{base}/{added['id']}", headers=api.a), 409)
    assert doc["type"].endswith("last-rule")
    rules = api.client.get(f"/v1/subscriptions/{made['id']}", headers=api.a).json()["rules"]
    assert [r["id"] for r in rules] == [added["id"]]
    assert_problem(api.client.delete(f"{base}/{first}", headers=api.a), 404)


def test_every_configuration_change_is_audited_with_before_and_after_and_no_secret(
    hooks: Api,
) -> None:
    hook = webhook(hooks)
    rotated = hooks.client.post(f"/v1/endpoints/{hook['id']}/rotate-secret", headers=hooks.a)
    hooks.client.patch(f"/v1/endpoints/{hook['id']}", json={"name": "renamed"}, headers=hooks.a)
    sub = subscription(hooks, [hook["id"]])
    rules = f"/v1/subscriptions/{sub['id']}/rules"
    rule = created(hooks.client.post(rules, json=NEVER, headers=hooks.a))
    hooks.client.put(
        f"{rules}/{rule['id']}", json={"kind": "threshold", "raise_at": 95}, headers=hooks.a
    )
    hooks.client.delete(f"{rules}/{rule['id']}", headers=hooks.a)
    hooks.client.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": False}, headers=hooks.a)
    hooks.client.delete(f"/v1/subscriptions/{sub['id']}", headers=hooks.a)
    hooks.client.delete(f"/v1/endpoints/{hook['id']}", headers=hooks.a)

    response = hooks.client.get("/v1/audit-log", headers=hooks.a)
    assert hook["secret"] not in response.text
    assert rotated.json()["secret"] not in response.text
    assert "whsec_" not in response.text
    entries = {e["action"]: e for e in response.json()["entries"]}
    assert list(entries) == [
        "endpoint.create",
        "endpoint.rotate_secret",
        "endpoint.update",
        "subscription.create",
        "rule.create",
        "rule.update",
        "rule.delete",
        "subscription.update",
        "subscription.delete",
        "endpoint.delete",
    ]
    assert all(e["tenant_id"] == hooks.tenant_a and e["api_key_id"] for e in entries.values())
    assert entries["endpoint.create"]["before"] is None
    assert entries["endpoint.create"]["after"]["url"] == HOOK
    assert entries["endpoint.update"]["before"]["name"] == "ops hook"
    assert entries["endpoint.update"]["after"]["name"] == "renamed"
    assert entries["endpoint.rotate_secret"]["after"]["secrets_in_grace"] == 1
    assert entries["subscription.create"]["after"]["rules"][0]["raise_at"] == 0
    assert entries["rule.update"]["before"]["raise_at"] == 100
    assert entries["rule.update"]["after"]["raise_at"] == 95
    assert entries["rule.delete"]["after"] is None
    assert entries["subscription.update"]["before"]["enabled"] is True
    assert entries["subscription.update"]["after"]["enabled"] is False
    assert entries["subscription.delete"]["after"] is None
    assert entries["endpoint.delete"]["before"]["name"] == "renamed"
    assert audit_entries(hooks, hooks.b) == []


# --------------------------------------------------------------------------------------------
# Alerts


def test_alerts_are_listed_by_filter_and_read_with_their_history(api: Api) -> None:
    alert = firing_alert(api)
    assert alert["score"] is not None
    assert alert["band"] is not None
    assert alert["incident_id"] is None
    assert alert["sequence"] == 1

    def ids(**params: Any) -> list[int]:
        page = api.client.get("/v1/alerts", params=params, headers=api.a)
        assert page.status_code == 200, page.text
        return [a["id"] for a in page.json()["alerts"]]

    assert ids(state="firing") == [alert["id"]]
    assert ids(state="normal") == []
    assert ids(target_id=alert["target_id"], subscription_id=alert["subscription_id"]) == [
        alert["id"]
    ]
    assert ids(target_id=alert["target_id"] + 1000) == []
    assert ids(since=iso(datetime.now(UTC) - timedelta(hours=1))) == [alert["id"]]
    assert ids(since=iso(datetime.now(UTC) + timedelta(hours=1))) == []
    assert ids(until=iso(datetime.now(UTC) - timedelta(hours=1))) == []
    assert ids(after=alert["id"]) == []
    assert api.client.get("/v1/alerts", headers=api.b).json()["alerts"] == []

    detail = api.client.get(f"/v1/alerts/{alert['id']}", headers=api.a).json()
    assert detail["events"], detail
    assert detail["events"][0]["to_state"] == "firing"
    assert detail["events"][0]["notified"] == "firing"
    ats = [e["at"] for e in detail["events"]]
    assert ats == sorted(ats, reverse=True)
    assert detail["change"] is not None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "burning"}, "state"),
        ({"since": "2025-06-01T00:00:00"}, "since"),
        ({"since": "1735689600"}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"target_id": str(2**31)}, "target_id"),
    ],
)
def test_alert_filters_are_validated_as_query_fields(
    api: Api, params: dict[str, str], field: str
) -> None:
    doc = assert_problem(api.client.get("/v1/alerts", params=params, headers=api.a), 422)
    assert {(e["field"], e["in"]) for e in doc["errors"]} == {(field, "query")}


def test_only_an_active_alert_can_be_acknowledged(api: Api) -> None:
    alert = firing_alert(api)
    url = f"/v1/alerts/{alert['id']}/acknowledge"
    acked = api.client.post(url, headers=api.a)
    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledged_at"] is not None
    entry = next(e for e in audit_entries(api) if e["action"] == "alert.acknowledge")
    assert acked.json()["acknowledged_by"] == entry["api_key_id"]
    assert entry["before"]["acknowledged_at"] is None
    assert entry["after"]["acknowledged_at"] is not None

    with api.app.state.sessions.begin() as session:
        session.execute(update(Alert).values(state="normal", acknowledged_at=None))
    doc = assert_problem(api.client.post(url, headers=api.a), 409)
    assert "normal" in doc["detail"]


def test_snooze_until_a_time_or_until_the_band_rises_and_end_it(api: Api) -> None:
    alert = firing_alert(api)
    url = f"/v1/alerts/{alert['id']}/snooze"
    now = datetime.now(UTC)
    for body, field in [
        ({"until": iso(now - timedelta(minutes=1))}, "until"),
        ({"until": iso(now + timedelta(days=31))}, "until"),
        ({"until": "2030-01-01T00:00:00"}, "until"),
        ({"until": iso(now + timedelta(hours=1)), "until_band_rises": True}, "until"),
        ({}, "until"),
        ({"until_band_rises": False}, "until_band_rises"),
    ]:
        doc = assert_problem(api.client.post(url, json=body, headers=api.a), 422)
        assert error_fields(doc) == {field}, body

    until = now + timedelta(hours=3)
    snoozed = api.client.post(url, json={"until": iso(until)}, headers=api.a).json()
    assert datetime.fromisoformat(snoozed["snoozed_until"]) == until
    assert snoozed["snoozed_band"] is None
    by_band = api.client.post(url, json={"until_band_rises": True}, headers=api.a).json()
    assert by_band["snoozed_band"] == alert["band"]
    assert by_band["snoozed_until"] is None
    ended = api.client.delete(url, headers=api.a)
    assert ended.status_code == 200
    assert ended.json()["snoozed_band"] is None
    assert ended.json()["snoozed_until"] is None
    actions = [e["action"] for e in audit_entries(api) if e["resource"].startswith("alert/")]
    assert actions == ["alert.snooze", "alert.snooze", "alert.unsnooze"]


# --------------------------------------------------------------------------------------------
# Deliveries


def test_test_notification_is_queued_and_readable_as_a_delivery(hooks: Api) -> None:
    hook = webhook(hooks)
    queued = created(hooks.client.post(f"/v1/endpoints/{hook['id']}/test", headers=hooks.a), 202)
    assert queued["status"] == "pending"
    assert queued["event_type"] == "endpoint.test"
    assert queued["message_id"].startswith("msg_")
    assert queued["endpoint_id"] == hook["id"]
    detail = hooks.client.get(f"/v1/deliveries/{queued['id']}", headers=hooks.a).json()
    assert detail["payload"]["type"] == "endpoint.test"
    assert detail["payload"]["data"]["endpoint"] == {"id": hook["id"], "name": hook["name"]}
    assert detail["attempt_log"] == []

    hooks.client.patch(f"/v1/endpoints/{hook['id']}", json={"enabled": False}, headers=hooks.a)
    assert_problem(hooks.client.post(f"/v1/endpoints/{hook['id']}/test", headers=hooks.a), 409)


def test_delivery_detail_lists_every_attempt_in_order(hooks: Api) -> None:
    hook = webhook(hooks)
    queued = created(hooks.client.post(f"/v1/endpoints/{hook['id']}/test", headers=hooks.a), 202)
    started = datetime.now(UTC)
    with hooks.app.state.sessions.begin() as session:
        for number, (outcome, code, body) in enumerate(
            [("retry", 500, "oops"), ("retry", None, None), ("delivered", 204, "")], start=1
        ):
            session.add(
                DeliveryAttempt(
                    delivery_id=queued["id"], number=number,
                    started_at=started + timedelta(seconds=number), duration_ms=12.5 * number,
                    outcome=outcome, status_code=code,
                    error_class=None if code else "timeout", error=None if code else "timed out",
                    response_body=body, worker="w1",
                )
            )  # fmt: skip
    detail = hooks.client.get(f"/v1/deliveries/{queued['id']}", headers=hooks.a).json()
    log = detail["attempt_log"]
    assert [a["number"] for a in log] == [1, 2, 3]
    assert [a["status_code"] for a in log] == [500, None, 204]
    assert log[1]["error_class"] == "timeout"
    assert log[1]["error"] == "timed out"
    assert log[0]["response_body"] == "oops"
    assert log[2]["duration_ms"] == 37.5


def test_replay_keeps_the_message_id_and_refuses_a_delivery_being_sent(hooks: Api) -> None:
    hook = webhook(hooks)
    queued = created(hooks.client.post(f"/v1/endpoints/{hook['id']}/test", headers=hooks.a), 202)
    set_delivery(hooks, queued["id"], status="failed", attempts=8, next_attempt_at=None)
    url = f"/v1/deliveries/{queued['id']}/replay"
    replayed = created(hooks.client.post(url, headers=hooks.a), 202)
    assert replayed["status"] == "pending"
    assert replayed["message_id"] == queued["message_id"]
    assert replayed["next_attempt_at"] is not None
    with hooks.app.state.sessions() as session:
        row = session.get(Delivery, queued["id"])
        assert row is not None
        assert row.schedule_offset == 8

    set_delivery(hooks, queued["id"], status="sending")
    doc = assert_problem(hooks.client.post(url, headers=hooks.a), 409)
    assert doc["type"].endswith("delivery-in-flight")


def test_recover_replays_failed_deliveries_since_a_time_within_the_window(hooks: Api) -> None:
    hook = webhook(hooks)
    ids = [
        created(hooks.client.post(f"/v1/endpoints/{hook['id']}/test", headers=hooks.a), 202)["id"]
        for _ in range(3)
    ]
    now = datetime.now(UTC)
    set_delivery(hooks, ids[0], status="failed", created_at=now - timedelta(days=2))
    set_delivery(hooks, ids[1], status="failed")
    set_delivery(hooks, ids[2], status="succeeded")

    since = iso(now - timedelta(days=1))
    recovered = hooks.client.post("/v1/deliveries/recover", json={"since": since}, headers=hooks.a)
    assert created(recovered, 202) == {"replayed": [ids[1]]}
    statuses = hooks.client.get("/v1/deliveries", headers=hooks.a).json()["deliveries"]
    assert [d["status"] for d in statuses] == ["failed", "pending", "succeeded"]
    # Tenant B has nothing to recover, whatever A has.
    other = hooks.client.post(
        "/v1/deliveries/recover", json={"since": iso(now - timedelta(days=3))}, headers=hooks.b
    )
    assert created(other, 202) == {"replayed": []}

    too_old = iso(now - hooks.settings.replay_window - timedelta(minutes=1))
    response = hooks.client.post("/v1/deliveries/recover", json={"since": too_old}, headers=hooks.a)
    assert error_fields(assert_problem(response, 422)) == {"since"}
    naive = hooks.client.post(
        "/v1/deliveries/recover", json={"since": "2030-01-01T00:00:00"}, headers=hooks.a
    )
    assert error_fields(assert_problem(naive, 422)) == {"since"}


def test_deliveries_are_listed_by_status_endpoint_alert_and_time(hooks: Api) -> None:
    first, second = webhook(hooks, "one"), webhook(hooks, "two")
    a = created(hooks.client.post(f"/v1/endpoints/{first['id']}/test", headers=hooks.a), 202)
    b = created(hooks.client.post(f"/v1/endpoints/{second['id']}/test", headers=hooks.a), 202)
    set_delivery(hooks, a["id"], status="failed")

    def ids(**params: Any) -> list[int]:
        page = hooks.client.get("/v1/deliveries", params=params, headers=hooks.a)
        assert page.status_code == 200, page.text
        return [d["id"] for d in page.json()["deliveries"]]

    assert ids() == [a["id"], b["id"]]
    assert ids(status="failed") == [a["id"]]
    assert ids(status="pending", endpoint_id=second["id"]) == [b["id"]]
    assert ids(endpoint_id=first["id"], status="pending") == []
    assert ids(alert_id=1) == []
    assert ids(since=iso(datetime.now(UTC) + timedelta(minutes=5))) == []
    assert ids(limit=1) == [a["id"]]
    assert (
        hooks.client.get("/v1/deliveries", params={"limit": 1}, headers=hooks.a).json()[
            "next_cursor"
        ]
        == a["id"]
    )
    assert ids(after=a["id"]) == [b["id"]]
    doc = assert_problem(
        hooks.client.get("/v1/deliveries", params={"status": "lost"}, headers=hooks.a), 422
    )
    assert error_fields(doc) == {"status"}
    assert hooks.client.get("/v1/deliveries", headers=hooks.b).json()["deliveries"] == []


def test_delivery_statuses_are_the_outbox_statuses() -> None:
    assert {s.value for s in DeliveryStatus} == set(outbox.STATUSES)


# --------------------------------------------------------------------------------------------
# Keys and tenants


def test_keys_without_alert_roles_or_tenant_get_403(api: Api) -> None:
    for headers in (api.a_read, api.ingest, api.admin):
        for method, path in (
            ("GET", "/v1/endpoints"),
            ("GET", "/v1/subscriptions"),
            ("GET", "/v1/alerts"),
            ("GET", "/v1/deliveries"),
            ("POST", "/v1/deliveries/recover"),
        ):
            response = api.client.request(
                method, path, headers=headers, json={"since": iso(datetime.now(UTC))}
            )
            assert_problem(response, 403)


def test_another_tenant_gets_404_for_tenant_a_resources_and_cannot_change_them(api: Api) -> None:
    alert = firing_alert(api)
    endpoint_id = api.client.get("/v1/endpoints", headers=api.a).json()["endpoints"][0]["id"]
    delivery = created(api.client.post(f"/v1/endpoints/{endpoint_id}/test", headers=api.a), 202)
    sub = api.client.get(f"/v1/subscriptions/{alert['subscription_id']}", headers=api.a).json()
    rule_id = sub["rules"][0]["id"]
    attempts = [
        ("GET", f"/v1/endpoints/{endpoint_id}", None),
        ("PATCH", f"/v1/endpoints/{endpoint_id}", {"enabled": False}),
        ("DELETE", f"/v1/endpoints/{endpoint_id}", None),
        ("POST", f"/v1/endpoints/{endpoint_id}/test", None),
        ("GET", f"/v1/subscriptions/{sub['id']}", None),
        ("PATCH", f"/v1/subscriptions/{sub['id']}", {"enabled": False}),
        ("POST", f"/v1/subscriptions/{sub['id']}/rules", NEVER),
        ("PUT", f"/v1/subscriptions/{sub['id']}/rules/{rule_id}", NEVER),
        ("DELETE", f"/v1/subscriptions/{sub['id']}/rules/{rule_id}", None),
        ("DELETE", f"/v1/subscriptions/{sub['id']}", None),
        ("GET", f"/v1/alerts/{alert['id']}", None),
        ("POST", f"/v1/alerts/{alert['id']}/acknowledge", None),
        ("POST", f"/v1/alerts/{alert['id']}/snooze", {"until_band_rises": True}),
        ("GET", f"/v1/deliveries/{delivery['id']}", None),
        ("POST", f"/v1/deliveries/{delivery['id']}/replay", None),
    ]
    for method, path, body in attempts:
        response = api.client.request(method, path, headers=api.b, json=body)
        assert_problem(response, 404)
    # B cannot use A's endpoints or targets in its own subscription either.
    body = {
        "name": "B",
        "scope": "target",
        "target_id": alert["target_id"],
        "endpoint_ids": [endpoint_id],
        "rules": [ALWAYS],
    }
    doc = assert_problem(api.client.post("/v1/subscriptions", json=body, headers=api.b), 422)
    assert error_fields(doc) == {"target_id", "endpoint_ids.0"}
    # Nothing of A's changed.
    assert api.client.get(f"/v1/subscriptions/{sub['id']}", headers=api.a).json() == sub
    assert (
        api.client.get(f"/v1/alerts/{alert['id']}", headers=api.a).json()["acknowledged_at"] is None
    )


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({**ALWAYS, "cooldown": False}, "rules.0.threshold.cooldown"),
        ({**ALWAYS, "pending": True}, "rules.0.threshold.pending"),
        ({**ALWAYS, "repeat_every": False}, "rules.0.threshold.repeat_every"),
        ({**ALWAYS, "flap_changes": True}, "rules.0.threshold.flap_changes"),
        ({**ALWAYS, "flap_changes": "3"}, "rules.0.threshold.flap_changes"),
        ({"kind": "event", "trigger": "kidnapping_nearby", "radius_km": "50"},
         "rules.0.event.radius_km"),
        ({"kind": "event", "trigger": "kidnapping_nearby", "max_age": False},
         "rules.0.event.max_age"),
    ],
)  # fmt: skip
def test_rule_fields_of_the_wrong_json_type_are_422_naming_them(
    api: Api, rule: dict[str, Any], field: str
) -> None:
    mine = email(api)["id"]
    body = {"name": "w", "scope": "all", "endpoint_ids": [mine], "rules": [rule]}

    doc = assert_problem(api.client.post("/v1/subscriptions", json=body, headers=api.a), 422)

    assert field in error_fields(doc), doc
    assert api.client.get("/v1/subscriptions", headers=api.a).json()["subscriptions"] == []


def test_repeat_every_below_fifteen_minutes_is_refused_naming_it(api: Api) -> None:
    mine = email(api)["id"]
    for too_often in ("PT1S", "PT14M59S"):
        rule = {**ALWAYS, "repeat_every": too_often}
        body = {"name": "w", "scope": "all", "endpoint_ids": [mine], "rules": [rule]}
        doc = assert_problem(api.client.post("/v1/subscriptions", json=body, headers=api.a), 422)
        assert "rules.0.threshold.repeat_every" in error_fields(doc), doc
        assert "15 minutes" in json.dumps(doc)
    body = {
        "name": "w",
        "scope": "all",
        "endpoint_ids": [mine],
        "rules": [{**ALWAYS, "repeat_every": "PT15M"}],
    }
    assert api.client.post("/v1/subscriptions", json=body, headers=api.a).status_code == 201


def test_a_stored_rule_repeating_faster_than_the_floor_stays_readable_and_repeats_at_it(
    api: Api,
) -> None:
    mine = email(api)["id"]
    body = {"name": "w", "scope": "all", "endpoint_ids": [mine], "rules": [ALWAYS]}
    sub = api.client.post("/v1/subscriptions", json=body, headers=api.a).json()
    with api.app.state.sessions.begin() as session:
        row = session.execute(select(Rule)).scalar_one()
        row.params = {**row.params, "repeat_every": "PT1S"}  # stored before the floor existed

    read = api.client.get(f"/v1/subscriptions/{sub['id']}", headers=api.a)
    assert read.status_code == 200, read.text
    stored = schemas.parse_rule("threshold", {**ALWAYS, "repeat_every": "PT1S"})
    assert isinstance(stored, schemas.ThresholdRuleIn)
    assert stored.threshold().repeat_every == schemas.MIN_REPEAT


def test_rule_durations_are_iso_8601_text_or_seconds(api: Api) -> None:
    mine = email(api)["id"]
    rule = {**ALWAYS, "cooldown": "PT45M", "pending": 600, "keep_firing": 0.5}
    body = {"name": "w", "scope": "all", "endpoint_ids": [mine], "rules": [rule]}

    made = created(api.client.post("/v1/subscriptions", json=body, headers=api.a))

    stored = made["rules"][0]
    assert (stored["cooldown"], stored["pending"], stored["keep_firing"]) == (
        "PT45M", "PT10M", "PT0.5S"
    )  # fmt: skip
