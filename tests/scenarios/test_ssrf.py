"""Scenario 10: internal webhook targets are refused when registered and at every attempt."""

from __future__ import annotations

import json
import socket

import pytest

from tests.scenarios.harness import Api, Receiver, Reply, Riskalert, free_port

REDIRECT_TO = "http://10.0.0.1/latest/meta-data/"


def loopback_name() -> str | None:
    """A host name other than `localhost` that resolves to loopback here (the machine's own)."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return None
    addresses = {info[4][0] for info in infos}
    return (
        name if addresses and all(a.startswith("127.") or a == "::1" for a in addresses) else None
    )


def test_internal_webhook_targets_are_refused_at_registration_naming_the_url(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    # The receiver's own port is allowlisted; any other loopback port is not.
    allow = json.dumps([f"127.0.0.1:{receiver.port}"])
    api = Api(riskalert.serve(inline_worker=False, RISKALERT_WEBHOOK_ALLOWLIST=allow))
    other = free_port()
    refused = {
        f"http://127.0.0.1:{other}/hook": "loopback",
        f"http://localhost:{other}/hook": "loopback",
        "http://169.254.169.254/latest/meta-data/": "link-local",
        "http://10.0.0.1/hook": "private",
        f"http://[::1]:{other}/hook": "loopback",
    }
    name = loopback_name()
    if name is not None:
        refused[f"http://{name}:{other}/hook"] = "loopback"
    for url, kind in refused.items():
        response = api.request(
            "POST", "/v1/endpoints", body={"kind": "webhook", "name": "x", "url": url}
        )
        assert response.status_code == 422, (url, response.text)
        problem = response.json()
        [error] = problem["errors"]
        assert error["field"] == "url", problem
        assert kind in error["reason"], (url, error)
    assert api.call("GET", "/v1/endpoints")["endpoints"] == []
    # The allowlisted receiver itself is accepted.
    api.create_webhook("fine", receiver.url("/fine"))
    if name is None:
        pytest.skip("no host name resolving to loopback here: that case was not checked")


def test_attempts_check_the_target_again_and_log_why_they_refused_or_stopped_at_a_redirect(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    bouncer = Receiver()  # a second receiver, on a port the worker does allow
    bouncer.start()
    try:
        both = json.dumps([f"127.0.0.1:{receiver.port}", f"127.0.0.1:{bouncer.port}"])
        api = Api(riskalert.serve(inline_worker=False, RISKALERT_WEBHOOK_ALLOWLIST=both))
        # Accepted when registered; the worker, configured without that exception, refuses it.
        refused = api.create_webhook("was allowed", receiver.url("/internal"))
        redirected = api.create_webhook("redirects", bouncer.url("/moved"))
        bouncer.expect("/moved", redirected["secret"])
        bouncer.script("/moved", [], then=Reply(302, headers={"Location": REDIRECT_TO}))
        only_bouncer = json.dumps([f"127.0.0.1:{bouncer.port}"])
        riskalert.worker("alerts", RISKALERT_WEBHOOK_ALLOWLIST=only_bouncer)

        blocked = api.send_test(refused["id"])
        bounced = api.send_test(redirected["id"])
        blocked_done = api.wait_delivery(blocked["id"], "failed")
        bounced_done = api.wait_delivery(bounced["id"], "failed")
    finally:
        bouncer.close()

    assert receiver.got() == []  # never reached
    log = blocked_done["attempt_log"]
    assert len(log) == 5  # the whole (compressed) schedule, every attempt checked again
    for attempt in log:
        assert (attempt["outcome"], attempt["status_code"]) == ("retry", None)
        assert attempt["error_class"] == "ssrf"
        assert attempt["error"] == "loopback address 127.0.0.1"
    log = bounced_done["attempt_log"]
    assert len(log) == len(bouncer.got("/moved")) == 5
    for attempt in log:
        assert (attempt["status_code"], attempt["error_class"]) == (302, "redirect")
        assert REDIRECT_TO in attempt["error"]
        assert "not followed" in attempt["error"]
    assert all(r.verified for r in bouncer.got("/moved"))
