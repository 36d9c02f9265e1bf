"""What a notification says: the webhook body (also rendered as email), built from values (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

EVENT_TYPES = (
    "alert.firing",
    "alert.resolved",
    "alert.escalated",
    "alert.repeat",
    "alert.flapping",
    "alert.triggered",
    "endpoint.test",
    "endpoint.disabled",
    "digest.daily",
)
# Bodies are kept well under the ~20 KB the Standard Webhooks guidance suggests.
MAX_TOP_INCIDENTS = 5


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def envelope(event_type: str, data: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The Standard Webhooks body: type, timestamp and data."""
    return {"type": event_type, "timestamp": iso(now), "data": dict(data)}


def target_feature(
    target_id: int, kind: str, name: str, coordinates: Sequence[Sequence[float]], tags: list[str]
) -> dict[str, Any]:
    """The target as a GeoJSON Feature."""
    geometry: dict[str, Any] = (
        {"type": "Point", "coordinates": list(coordinates[0])}
        if kind == "site"
        else {"type": "LineString", "coordinates": [list(c) for c in coordinates]}
    )
    return {
        "type": "Feature",
        "id": target_id,
        "geometry": geometry,
        "properties": {"kind": kind, "name": name, "tags": tags},
    }


def score_part(change: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The old and new score and band of the change behind a notification."""
    if change is None:
        return None
    return {
        "previous": change.get("previous"),
        "current": change["current"],
        "previous_band": change.get("previous_band"),
        "band": change["band"],
        "as_of": change["as_of"],
        "model_version": change["model_version"],
        "components": change.get("components", {}),
    }


def why(
    kind: str,
    reason: str,
    score: Mapping[str, Any] | None,
    top: Sequence[Mapping[str, Any]],
    trigger_why: str | None = None,
) -> str:
    """One plain sentence saying what changed and why."""
    parts: list[str] = []
    if trigger_why:
        parts.append(trigger_why[0].upper() + trigger_why[1:])
    if score is not None:
        previous = score.get("previous")
        now_part = f"{score['current']:.1f} ({score['band']})"
        if previous is None:
            parts.append(f"Score is {now_part}")
        else:
            verb = "rose" if score["current"] > previous else "fell"
            if score["current"] == previous:
                verb = "stayed"
            parts.append(
                f"Score {verb} from {previous:.1f} ({score.get('previous_band')}) to {now_part}"
            )
    if not trigger_why:
        parts.append(f"{kind}: {reason}")
    if top:
        lead = top[0]
        title = lead.get("title") or lead["category"].replace("_", " ")
        parts.append(f"largest contribution: {title}")
    return "; ".join(parts) + "."


def alert_data(
    *,
    alert: Mapping[str, Any],
    subscription: Mapping[str, Any],
    rule: Mapping[str, Any],
    target: Mapping[str, Any],
    change: Mapping[str, Any] | None,
    incident: Mapping[str, Any] | None,
    top_incidents: Sequence[Mapping[str, Any]],
    trigger_why: str | None = None,
) -> dict[str, Any]:
    """The `data` of an alert notification: what changed, for which target, under which rule."""
    score = score_part(change)
    top = [dict(t) for t in top_incidents[:MAX_TOP_INCIDENTS]]
    return {
        "alert": dict(alert),
        "subscription": dict(subscription),
        "rule": dict(rule),
        "target": dict(target),
        "score": score,
        "incident": dict(incident) if incident is not None else None,
        "top_incidents": top,
        "why": why(alert["kind"], alert["reason"], score, top, trigger_why),
    }
