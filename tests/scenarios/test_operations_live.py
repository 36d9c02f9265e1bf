"""Operating several real processes: ticks run once per slot whatever the number of workers,
a request id follows an incident from the API through the workers' logs, SIGTERM lets the API
finish what it is serving, and /metrics sums several uvicorn workers."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from services.core.models import TickRun
from tests.scenarios.harness import (
    Api,
    Database,
    Proc,
    Receiver,
    Reply,
    Riskalert,
    seconds,
    wait_until,
)
from tests.test_rescoring import east_of_base, incident_body

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """The process's log records (JSON lines: its stderr is not a terminal)."""
    out = []
    for line in proc.err.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_three_workers_run_each_tick_once_per_slot(
    riskalert: Riskalert, database: Database
) -> None:
    fast = {
        "RISKALERT_RESCORE_INTERVAL": seconds(0.5),
        "RISKALERT_ALERTS_REAPER_INTERVAL": seconds(0.5),
        "RISKALERT_ALERTS_REEVALUATE_INTERVAL": seconds(0.5),
        "RISKALERT_LOG_LEVEL": "DEBUG",
    }
    workers = [riskalert.worker("all", **fast) for _ in range(3)]
    ticks = ("queue_decay", "alerts_reap", "alerts_reevaluate")

    def slots_claimed() -> Counter[str]:
        with database.reader() as session:
            return Counter(session.execute(select(TickRun.name)).scalars())

    wait_until(
        lambda: all(slots_claimed()[t] >= 12 for t in ticks),
        timeout=60,
        what="a dozen slots of each tick",
    )
    for worker in workers:
        assert worker.terminate() == 0
    ran: Counter[tuple[str, str]] = Counter()
    skipped: Counter[str] = Counter()
    for worker in workers:
        for line in json_lines(worker):
            if line.get("tick") in ticks:
                if line["event"].endswith(" ran"):
                    ran[(line["tick"], line["slot"])] += 1
                else:
                    skipped[line["tick"]] += 1
    with database.reader() as session:
        claims = {
            (name, slot.isoformat())
            for name, slot in session.execute(select(TickRun.name, TickRun.slot_at))
            if name in ticks
        }
    # Every slot claimed ran exactly once, in one of the three processes...
    assert set(ran) == claims
    assert max(ran.values()) == 1
    # ...while the other processes, firing for the same slots, found them taken.
    for tick in ticks:
        assert skipped[tick] > 0, f"no process ever found a {tick} slot taken"


def test_a_request_id_follows_an_incident_into_the_workers_and_secrets_stay_out_of_logs(
    riskalert: Riskalert, receiver: Receiver
) -> None:
    server = riskalert.serve(inline_worker=False)
    api = Api(server)
    site = api.create_site("Camp", *east_of_base(0))
    hook = api.create_webhook("ops", receiver.url("/ops"))
    receiver.expect("/ops", hook["secret"])
    receiver.script("/ops", [Reply(status=500)])  # the first attempt fails, the second lands
    rule = {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50}
    api.subscribe([hook["id"]], [rule], target_id=site)
    scoring = riskalert.worker("scoring")
    alerts = riskalert.worker("alerts")

    body = incident_body("k-live", *east_of_base(15), category="kidnapping")
    posted = server.http.post(
        "/v1/incidents", headers={**api.ingest, "X-Request-ID": "live-trace-1"}, json=body
    )
    assert posted.status_code == 201, posted.text
    assert posted.headers["x-request-id"] == "live-trace-1"
    wait_until(lambda: len(receiver.got("/ops")) == 2, timeout=30, what="the retried webhook")

    def traced(proc: Proc) -> list[str]:
        return [e["event"] for e in json_lines(proc) if e.get("request_id") == "live-trace-1"]

    assert "POST /v1/incidents 201" in traced(server.proc)
    assert any(e.startswith("incident feed") for e in traced(scoring))
    alert_lines = traced(alerts)
    assert f"incident {posted.json()['id']} triggered 1 event alert(s)" in alert_lines
    assert "webhook attempt: retry" in alert_lines
    secrets = [
        hook["secret"],
        api.key["Authorization"].removeprefix("Bearer "),
        api.ingest["Authorization"].removeprefix("Bearer "),
        api.admin["Authorization"].removeprefix("Bearer "),
    ]
    for proc in (server.proc, scoring, alerts):
        text = proc.output()
        assert text.strip()
        for secret in secrets:
            assert secret not in text, f"{proc.name} logged a secret"


def server_has_read_everything_sent(port: int) -> bool:
    """Whether an established connection to `port` exists and the server has read all that
    arrived on it (its receive queue in /proc/net/tcp is empty)."""
    established = [
        fields
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01"
    ]
    return bool(established) and all(int(f[4].split(":")[1], 16) == 0 for f in established)


def test_sigterm_lets_the_api_finish_a_request_in_flight(riskalert: Riskalert) -> None:
    server = riskalert.serve(inline_worker=False)
    api = Api(server)
    server.http.close()  # the only connection left is the upload's
    content = (FIXTURES / "acled_export.csv").read_bytes()
    started, go = threading.Event(), threading.Event()

    def slowly() -> Iterator[bytes]:
        yield content[:100]
        yield content[100:200]
        # Asked for a third part: the headers and the first two are on the wire.
        started.set()
        # The rest of the file only once the server has been told to stop.
        go.wait(timeout=20)
        yield content[200:]

    answer: dict[str, httpx.Response] = {}

    def upload() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answer["r"] = client.post(
                "/v1/imports/acled",
                headers={**api.ingest, "Content-Type": "text/csv"},
                content=slowly(),
            )

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert started.wait(timeout=20)
        # Once the server has read what was sent, the request is in its hands.
        wait_until(
            lambda: server_has_read_everything_sent(server.port),
            what="the server to read the start of the upload",
        )
        server.proc.sigterm()
        wait_until(lambda: "Shutting down" in server.proc.output(), what="the server's shutdown")
        # Shutting down, it waits for the request in flight rather than exiting.
        assert server.proc.running
    finally:
        go.set()
        uploader.join(timeout=30)
    response = answer["r"]
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] > 0
    # uvicorn ends by raising the signal it handled again, as its exit status says.
    assert server.proc.popen.wait(timeout=20) in (0, -signal.SIGTERM)


def test_metrics_of_several_uvicorn_workers_are_summed(riskalert: Riskalert) -> None:
    server = riskalert.serve("--workers", "2", inline_worker=False)
    url = server.url
    # New connections spread over both workers; without summing, a scrape would count only
    # the share of the worker answering it.
    for _ in range(40):
        with httpx.Client(base_url=url, timeout=10) as fresh:
            assert fresh.get("/healthz").status_code == 200
    for _ in range(4):
        with httpx.Client(base_url=url, timeout=10) as fresh:
            text = fresh.get("/metrics").text
        (count,) = [
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("riskalert_http_requests_total{")
            and 'route="/healthz"' in line
            and 'status="200"' in line
        ]
        assert count >= 40
    assert server.proc.terminate() == 0


def _wrong_key_statuses(url: str, forwarded_for: list[str]) -> list[int]:
    """Statuses of requests with a wrong key, each claiming another client address."""
    with httpx.Client(base_url=url, timeout=10) as client:
        return [
            client.get(
                "/v1/sites",
                headers={"Authorization": "Bearer rak_wrong", "X-Forwarded-For": address},
            ).status_code
            for address in forwarded_for
        ]


ROTATING = [f"203.0.113.{i}" for i in range(1, 7)]


def test_a_forwarded_for_header_from_an_untrusted_peer_does_not_reset_the_guessing_limit(
    riskalert: Riskalert,
) -> None:
    server = riskalert.serve(inline_worker=False, RISKALERT_RATE_LIMIT_UNAUTHENTICATED="3/minute")
    assert _wrong_key_statuses(server.url, ROTATING) == [401, 401, 401, 429, 429, 429]


def test_a_trusted_proxy_names_the_client_each_address_has_its_own_guessing_limit(
    riskalert: Riskalert,
) -> None:
    server = riskalert.serve(
        inline_worker=False,
        RISKALERT_RATE_LIMIT_UNAUTHENTICATED="3/minute",
        RISKALERT_TRUSTED_PROXIES='["127.0.0.0/8"]',
    )
    assert _wrong_key_statuses(server.url, ROTATING) == [401] * 6
    assert _wrong_key_statuses(server.url, ["198.51.100.1"] * 4) == [401, 401, 401, 429]
