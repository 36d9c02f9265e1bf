"""Scenario 9: a score oscillating around its threshold does not flood the receiver."""

from __future__ import annotations

from collections import Counter

from tests.scenarios.harness import Api, Database, Receiver, Riskalert, holds_for, wait_until
from tests.test_rescoring import east_of_base

CROSSINGS = 20


def test_score_oscillating_20_times_around_the_threshold_notifies_at_most_firing_and_resolved(
    riskalert: Riskalert, database: Database, receiver: Receiver
) -> None:
    api = Api(riskalert.serve())
    site = api.create_site("Mine", *east_of_base(0))
    hook = api.create_webhook("ops", receiver.url("/flap"))
    receiver.expect("/flap", hook["secret"])
    rule = {"kind": "threshold", "raise_at": 60, "clear_at": 40}  # default cooldown and flapping
    api.subscribe([hook["id"]], [rule], target_id=site)
    wait_until(database.idle, what="the site to be scored and the rule seeded")

    for i in range(CROSSINGS):
        value, band = (70.0, "high") if i % 2 == 0 else (30.0, "moderate")
        database.push_score(api.tenant_id, site, value, band)
    wait_until(database.idle, what="every score change to be evaluated and sent")
    holds_for(database.idle, seconds=0.5, what="the pipeline staying idle")

    kinds = Counter(r.event_type for r in receiver.got("/flap"))
    assert set(kinds) <= {"alert.firing", "alert.resolved", "alert.flapping"}, kinds
    # A firing and a resolved, or a firing and then one flapping notice: never more.
    assert max(kinds.values()) == 1, kinds
    assert 1 <= sum(kinds.values()) <= 2, kinds
    [alert] = api.alerts()
    assert alert["state"] == "flapping"
    sequences = [r.alert["sequence"] for r in receiver.got("/flap")]
    assert sequences == sorted(set(sequences))
