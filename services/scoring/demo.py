"""The demo data set: the mid-2025 Sahel timeline, and the demo firm's sites and corridors.

Coordinates are approximate, as in open reporting. Airports come from OpenFlights
(airports_sahel.csv, Open Database License; attribution: OpenFlights).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.auth import TENANT_ROLES, Role, hash_key
from services.core.models import ApiKey, Tenant
from services.scoring import incidents, queue, schemas, scores, targets

AIRPORTS_CSV = Path(__file__).with_name("airports_sahel.csv")
DEMO_TENANT = "Demo Mining & Logistics"
# Fixed keys so the README's curl examples work against a demo database, and nowhere else.
DEMO_TENANT_KEY = "rak_demo_tenant_key_do_not_use_in_production"
DEMO_INGEST_KEY = "rak_demo_ingest_key_do_not_use_in_production"
REPORT_DELAY = timedelta(hours=20)
# The demo's story time: after the timeline's last report (10 June), so every incident counts
# and few have decayed. The timeline is long past: `serve --demo` opens the dashboard's map at
# this moment instead of now (docs/demo.md).
STORY_AS_OF = datetime(2025, 6, 12, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Airport:
    """An airport from the OpenFlights extract."""

    name: str
    iata: str
    lat: float
    lon: float
    in_sahel: bool


def airports() -> dict[str, Airport]:
    """Airports by IATA code; rows outside the Sahel box (a miscoded heliport) are left out."""
    out: dict[str, Airport] = {}
    with AIRPORTS_CSV.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            airport = Airport(
                row["name"],
                row["iata"],
                float(row["latitude"]),
                float(row["longitude"]),
                row["in_sahel_bbox"] == "True",
            )
            if airport.iata and airport.in_sahel:
                out[airport.iata] = airport
    return out


def _at(day: str) -> str:
    return f"{day}T12:00:00Z"


def _incident(source_id: str, day: str, category: str, **fields: Any) -> dict[str, Any]:
    occurred = datetime.fromisoformat(_at(day))
    body: dict[str, Any] = {
        "source": "demo-timeline",
        "source_id": source_id,
        "category": category,
        "occurred_at": occurred.isoformat(),
        "reported_at": (occurred + REPORT_DELAY).isoformat(),
        "source_reliability": 0.8,
    }
    lat_lon = fields.pop("at", None)
    if lat_lon is not None:
        body["location"] = {"type": "Point", "coordinates": [lat_lon[1], lat_lon[0]]}
    body.update(fields)
    return body


def timeline() -> list[dict[str, Any]]:
    """The mid-2025 timeline from docs/domain.md as incident bodies."""
    tom = airports()["TOM"]
    return [
        _incident(
            "djibo-assault",
            "2025-05-11",
            "armed_assault",
            at=(14.10, -1.63),
            location_precision="near",
            country="BFA",
            admin1="Sahel",
            location_name="Djibo",
            actors=["JNIM"],
            target_type="military",
            fatalities={"low": 200, "best": 200},
            title="Assault on military positions in Djibo; base overrun and looted",
            description="Over 200 dead per local reports; at least 20 civilians buried next day.",
        ),
        _incident(
            "djibo-anti-aircraft",
            "2025-05-11",
            "anti_aircraft_fire",
            at=(14.10, -1.63),
            location_precision="near",
            country="BFA",
            location_name="Djibo",
            actors=["JNIM"],
            target_type="aviation",
            title="Captured anti-aircraft guns used against air support at Djibo",
        ),
        _incident(
            "boulkessi-assault",
            "2025-06-01",
            "armed_assault",
            at=(14.55, -1.40),
            location_precision="near",
            country="MLI",
            location_name="Boulkessi",
            actors=["JNIM"],
            target_type="military",
            fatalities={"claimed": 100, "best": 30},
            title="Assault on the army camp at Boulkessi",
            description="Over 100 soldiers killed claimed by the group; about 30 per media.",
        ),
        _incident(
            "timbuktu-airport-indirect-fire",
            "2025-06-02",
            "indirect_fire",
            at=(tom.lat, tom.lon),
            location_precision="exact",
            country="MLI",
            location_name="Timbuktu airport",
            actors=["JNIM"],
            target_type="aviation",
            title="Indirect fire on Timbuktu airport",
        ),
        _incident(
            "timbuktu-base-vbied",
            "2025-06-02",
            "vbied",
            at=(16.77, -3.00),
            location_precision="near",
            country="MLI",
            location_name="Timbuktu",
            actors=["JNIM"],
            target_type="military",
            title="Vehicle-borne IED on the army base in Timbuktu",
        ),
        _incident(
            "mahou-attack",
            "2025-06-05",
            "armed_assault",
            at=(12.10, -4.45),
            location_precision="near",
            country="MLI",
            admin1="Sikasso",
            location_name="Mahou",
            actors=["JNIM"],
            target_type="military",
            title="Attack on Mahou, repelled per authorities",
            description="The group published planning and drone-surveillance footage.",
        ),
        _incident(
            "threat-foreign-companies",
            "2025-06-07",
            "explicit_threat",
            scope={"countries": ["MLI", "BFA", "NER"]},
            target_profile={"foreign_owned_only": True, "sectors": []},
            target_type="foreign_firm",
            actors=["JNIM"],
            tags=["mining"],
            title="Video threat: international companies must seek authorization or be targeted",
        ),
        _incident(
            "kidnapping-sw-mali",
            "2025-06-07",
            "kidnapping",
            at=(12.30, -10.60),
            location_precision="region",
            occurred_precision="week",
            country="MLI",
            admin1="Kayes",
            victim_profile={"expatriate": True, "nationality": "Iranian", "sector": "mining"},
            target_type="foreign_firm",
            title="Iranian employee of a Turkish mining company kidnapped near the Guinea border",
        ),
        _incident(
            "communique-new-government",
            "2025-06-09",
            "political_statement",
            scope={"countries": ["MLI", "BFA", "NER"]},
            actors=["JNIM"],
            title="Communique rejecting Wagner's claims and calling for a new government",
        ),
    ]


def _site(name: str, lat: float, lon: float, country: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": name, "country": country, **props},
    }


def sites() -> list[dict[str, Any]]:
    """The demo firm's sites."""
    return [
        _site(
            "Keniéba gold mine (foreign-owned)",
            12.95,
            -11.20,
            "MLI",
            radius_km=30,
            sector="mining",
            foreign_owned=True,
            expat_staff=True,
            tags=["mine", "demo"],
        ),
        _site(
            "Sikasso gold mine (foreign-owned)",
            11.45,
            -5.85,
            "MLI",
            radius_km=30,
            sector="mining",
            foreign_owned=True,
            expat_staff=True,
            tags=["mine", "demo"],
        ),
        _site(
            "Northern Burkina mine (locally owned)",
            14.25,
            -0.90,
            "BFA",
            radius_km=30,
            sector="mining",
            foreign_owned=False,
            expat_staff=False,
            tags=["mine", "demo"],
        ),
        _site(
            "Bamako logistics depot",
            12.62,
            -7.98,
            "MLI",
            radius_km=15,
            sector="logistics",
            foreign_owned=True,
            expat_staff=True,
            tags=["depot", "demo"],
        ),
        _site(
            "Dakar office",
            14.72,
            -17.47,
            "SEN",
            radius_km=15,
            sector="logistics",
            foreign_owned=True,
            expat_staff=True,
            tags=["office", "demo"],
        ),
    ]


def corridors() -> list[dict[str, Any]]:
    """The demo firm's corridors: two roads and a charter air leg."""
    ap = airports()
    bko, tom = ap["BKO"], ap["TOM"]
    return [
        {
            "type": "Feature",
            "geometry": {
                "type": "LineString",
                "coordinates": [[-1.52, 12.37], [-1.53, 13.10], [-1.58, 13.60], [-1.63, 14.10]],
            },
            "properties": {
                "name": "Road Ouagadougou - Djibo",
                "mode": "road",
                "buffer_km": 10,
                "countries": ["BFA"],
                "sector": "logistics",
                "tags": ["road", "demo"],
            },
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "LineString",
                "coordinates": [[-8.00, 12.64], [-7.48, 11.42], [-6.50, 11.35], [-5.67, 11.32]],
            },
            "properties": {
                "name": "Road Bamako - Sikasso",
                "mode": "road",
                "buffer_km": 10,
                "countries": ["MLI"],
                "sector": "logistics",
                "tags": ["road", "demo"],
            },
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "LineString",
                "coordinates": [[bko.lon, bko.lat], [tom.lon, tom.lat]],
            },
            "properties": {
                "name": "Charter BKO - TOM",
                "mode": "air",
                "buffer_km": 10,
                "countries": ["MLI"],
                "foreign_owned": True,
                "expat_staff": True,
                "tags": ["air", "demo"],
            },
        },
    ]


def load(session: Session, now: datetime, model: scores.ActiveModel) -> int:
    """Load the demo tenant, keys, sites, corridors and timeline (idempotent); return tenant id."""
    tenant = session.execute(select(Tenant).where(Tenant.name == DEMO_TENANT)).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(name=DEMO_TENANT, created_at=now)
        session.add(tenant)
        session.flush()
        for name, raw, tenant_id, roles in (
            (
                "demo tenant key",
                DEMO_TENANT_KEY,
                tenant.id,
                [r.value for r in sorted(TENANT_ROLES)],
            ),
            ("demo ingest key", DEMO_INGEST_KEY, None, [Role.INCIDENTS_WRITE.value]),
        ):
            session.add(
                ApiKey(
                    tenant_id=tenant_id,
                    name=name,
                    prefix=raw[:12],
                    key_hash=hash_key(raw),
                    roles=roles,
                    created_at=now,
                )
            )
        for body in sites():
            targets.create(session, tenant.id, schemas.SiteIn.model_validate(body), now)
        for body in corridors():
            targets.create(session, tenant.id, schemas.CorridorIn.model_validate(body), now)
    for body in timeline():
        incidents.upsert(session, schemas.IncidentIn.model_validate(body), now)
    # Feed causes are a closed list (docs/architecture.md); the demo brings new incidents.
    queue.add_all(session, "incident", now)
    session.flush()
    return tenant.id
