"""End to end: a site, a subscription with a threshold and a kidnapping rule, and the demo
timeline's kidnapping nearby: one signed webhook and one email, each saying why."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from services.scoring import demo
from tests.scenarios.harness import (
    Api,
    Database,
    Mailbox,
    Receiver,
    Riskalert,
    holds_for,
    wait_until,
)

DISTANCE_KM = 20.0


def demo_kidnapping(now: datetime) -> dict[str, Any]:
    """The demo timeline's kidnapping, reported as if it had just happened."""
    [body] = [b for b in demo.timeline() if b["category"] == "kidnapping"]
    return {
        **body,
        "occurred_at": (now - timedelta(hours=2)).isoformat(),
        "reported_at": (now - timedelta(hours=1)).isoformat(),
    }


def test_kidnapping_near_a_site_sends_one_signed_webhook_and_one_email_saying_why(
    riskalert: Riskalert, database: Database, receiver: Receiver, mailbox: Mailbox
) -> None:
    incident = demo_kidnapping(datetime.now(UTC))
    lon, lat = incident["location"]["coordinates"]
    site_lon = lon + DISTANCE_KM / (111.32 * math.cos(math.radians(lat)))
    api = Api(riskalert.serve())
    site = api.create_site("Kayes gold mine", lat, site_lon)
    hook = api.create_webhook("ops webhook", receiver.url("/e2e"))
    receiver.expect("/e2e", hook["secret"])
    mail = api.create_email("ops desk", "ops@example.com")
    rules = [
        {"kind": "threshold", "raise_at": 90, "clear_at": 80},
        {"kind": "event", "trigger": "kidnapping_nearby", "radius_km": 50},
    ]
    api.subscribe([hook["id"], mail["id"]], rules, target_id=site, name="Kayes watch")
    wait_until(database.idle, what="the site to be scored and the rules seeded")

    api.post_incident(incident)

    [request] = wait_until(lambda: receiver.answered("/e2e"), what="the webhook")
    [email] = wait_until(lambda: mailbox.to("ops@example.com"), what="the email")
    wait_until(database.idle, what="the rescoring and the pipeline to settle")
    assert api.site_score(site)["score"] < 90  # the threshold rule stays quiet
    holds_for(
        lambda: len(receiver.got("/e2e")) == 1 and len(mailbox.mails) == 1,
        seconds=1.0,
        what="exactly one webhook and one email",
    )

    assert request.verified_by == (hook["secret"],)
    assert len(request.body) < 20_000
    body = request.json
    assert body["type"] == "alert.triggered"
    data = body["data"]
    assert data["alert"]["state"] == "triggered"
    assert data["alert"]["sequence"] == 1
    assert data["target"]["type"] == "Feature"
    assert data["target"]["geometry"] == {"type": "Point", "coordinates": [site_lon, lat]}
    assert data["incident"]["title"] == incident["title"]
    assert data["incident"]["category"] == "kidnapping"
    assert abs(data["incident"]["distance_km"] - DISTANCE_KM) < 1
    assert data["rule"]["trigger"] == "kidnapping_nearby"
    why = data["why"]
    assert "kidnapping 20 km from the site" in why.lower()
    assert "50 km" in why

    [emailed] = [d for d in api.deliveries() if d["endpoint_id"] == mail["id"]]
    assert emailed["event_type"] == "alert.triggered"
    assert email.message["Message-ID"] == f"<{emailed['message_id']}@riskalert>"
    subject = email.message["Subject"]
    assert "KIDNAPPING" in subject
    assert "Kayes gold mine" in subject
    text, html = email.text(), email.html()
    assert incident["title"] in text
    assert why in " ".join(text.split())
    assert "kidnapping" in html.lower()
