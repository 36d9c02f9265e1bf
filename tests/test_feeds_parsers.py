"""ACLED and UCDP rows read into incident reports: codes, dates, free text, lines and variants.

Pure: no database. The synthetic generator (services/feeds/synth.py) supplies whole files in
every column set and date style, and ground truth for kidnappings and threats in the notes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from services.feeds import acled, importer, synth, ucdp
from services.feeds import hints as free_text
from services.feeds.rows import (
    Deletion,
    FileError,
    Item,
    NoRecords,
    Parsed,
    Rejected,
    csv_rows,
    spreadsheet_cell,
)
from services.scoring.taxonomy import (
    Category,
    LocationPrecision,
    Sector,
    TargetType,
    TimePrecision,
)

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
NOW = datetime(2025, 7, 1, tzinfo=UTC)
START, END = date(2024, 1, 1), date(2025, 1, 1)
SYNTH_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def unix(moment: datetime) -> str:
    """ACLED's `timestamp` text for a moment."""
    return str(int(moment.timestamp()))


def acled_row(**fields: str) -> dict[str, str]:
    """A complete ACLED row (newer column set) of a clash near Boni; `fields` override."""
    row = {
        "event_id_cnty": "MLI1001",
        "event_date": "2025-06-01",
        "year": "2025",
        "time_precision": "1",
        "disorder_type": "Political violence",
        "event_type": "Battles",
        "sub_event_type": "Armed clash",
        "actor1": "JNIM: Group for Support of Islam and Muslims",
        "assoc_actor_1": "",
        "inter1": "Rebel group",
        "actor2": "Military Forces of Mali (2021-)",
        "assoc_actor_2": "",
        "inter2": "State forces",
        "interaction": "Rebel group-State forces",
        "civilian_targeting": "",
        "iso": "466",
        "region": "Western Africa",
        "country": "Mali",
        "admin1": "Mopti",
        "admin2": "Douentza",
        "admin3": "Boni",
        "location": "Boni",
        "latitude": "15.03",
        "longitude": "-1.98",
        "geo_precision": "1",
        "source": "AFP",
        "source_scale": "International",
        "notes": "On 1 June 2025, JNIM clashed with soldiers near Boni.",
        "fatalities": "4",
        "tags": "",
        "timestamp": unix(datetime(2025, 6, 4, 10, tzinfo=UTC)),
    }
    row.update(fields)
    return row


def ucdp_row(**fields: str) -> dict[str, str]:
    """A GED row of a state-based clash near Boulkessi; `fields` override."""
    row = {
        "id": "640001",
        "relid": "MLI-2025-1-001",
        "year": "2025",
        "type_of_violence": "1",
        "conflict_name": "Mali: Government",
        "dyad_name": "Government of Mali - JNIM",
        "side_a": "Government of Mali",
        "side_b": "JNIM",
        "source_headline": "Jihadists and soldiers clash at Boulkessi",
        "where_prec": "1",
        "where_description": "Boulkessi village",
        "adm_1": "Tombouctou region",
        "adm_2": "Niafunke cercle",
        "latitude": "15.15",
        "longitude": "-1.93",
        "country": "Mali",
        "country_id": "432",
        "date_prec": "1",
        "date_start": "2025-06-01 00:00:00.000",
        "date_end": "2025-06-01 00:00:00.000",
        "deaths_a": "14",
        "deaths_b": "6",
        "deaths_civilians": "0",
        "deaths_unknown": "0",
        "best": "20",
        "high": "30",
        "low": "14",
    }
    row.update(fields)
    return row


def parsed(result: Parsed | Rejected) -> Parsed:
    """The report a row was read into; fails the test, with the reason, if it was rejected."""
    assert isinstance(result, Parsed), result
    return result


def read_acled(**fields: str) -> Parsed:
    return parsed(acled.parse(acled_row(**fields), 2, NOW))


def read_ucdp(**fields: str) -> Parsed:
    return parsed(ucdp.parse(ucdp_row(**fields), 2, NOW))


def csv_text(rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def items_of(fmt: importer.Format, text: str, now: datetime = NOW) -> list[Item]:
    return list(importer.items(fmt, io.StringIO(text, newline=""), now))


def fixture_items(fmt: importer.Format, name: str) -> list[Item]:
    with (FIXTURES / name).open(encoding="utf-8-sig", newline="") as stream:
        return list(importer.items(fmt, stream, NOW))


def reports(items: Iterable[Item]) -> list[Parsed]:
    out = []
    for item in items:
        assert isinstance(item, Parsed), item
        out.append(item)
    return out


# ACLED sub-event types as ACLED writes them, with their event type and the category each
# must become (the table of docs/domain.md, extended to every type ACLED codes).
SUB_EVENT_CATEGORIES: dict[str, tuple[str, Category]] = {
    "Attack": ("Violence against civilians", Category.ARMED_ASSAULT),
    "Armed clash": ("Battles", Category.ARMED_CLASH),
    "Government regains territory": ("Battles", Category.ARMED_CLASH),
    "Non-state actor overtakes territory": ("Battles", Category.TERRITORY_SEIZURE),
    "Remote explosive/landmine/IED": ("Explosions/Remote violence", Category.IED),
    "Shelling/artillery/missile attack": ("Explosions/Remote violence", Category.INDIRECT_FIRE),
    "Air/drone strike": ("Explosions/Remote violence", Category.AIR_DRONE_STRIKE),
    "Suicide bomb": ("Explosions/Remote violence", Category.SUICIDE_BOMBING),
    "Grenade": ("Explosions/Remote violence", Category.ARMED_ASSAULT),
    "Chemical weapon": ("Explosions/Remote violence", Category.OTHER_VIOLENCE),
    "Abduction/forced disappearance": ("Violence against civilians", Category.KIDNAPPING),
    "Sexual violence": ("Violence against civilians", Category.ARMED_ASSAULT),
    "Looting/property destruction": ("Strategic developments", Category.LOOTING),
    "Headquarters or base established": ("Strategic developments", Category.BASE_ESTABLISHED),
    "Disrupted weapons use": ("Strategic developments", Category.OTHER_VIOLENCE),
    "Non-violent transfer of territory": ("Strategic developments", Category.POLITICAL_STATEMENT),
    "Violent demonstration": ("Riots", Category.OTHER_VIOLENCE),
    "Mob violence": ("Riots", Category.OTHER_VIOLENCE),
    "Excessive force against protesters": ("Protests", Category.ARMED_ASSAULT),
    "Peaceful protest": ("Protests", Category.POLITICAL_STATEMENT),
    "Protest with intervention": ("Protests", Category.POLITICAL_STATEMENT),
    "Agreement": ("Strategic developments", Category.POLITICAL_STATEMENT),
    "Arrests": ("Strategic developments", Category.POLITICAL_STATEMENT),
    "Change to group/activity": ("Strategic developments", Category.POLITICAL_STATEMENT),
    "Other": ("Strategic developments", Category.POLITICAL_STATEMENT),
}
OLD_EVENT_CATEGORIES: dict[str, Category] = {
    "Battle-No change of territory": Category.ARMED_CLASH,
    "Battle-Government regains territory": Category.ARMED_CLASH,
    "Battle-Non-state actor overtakes territory": Category.TERRITORY_SEIZURE,
    "Violence against civilians": Category.ARMED_ASSAULT,
    "Remote violence": Category.OTHER_VIOLENCE,
    "Riots/Protests": Category.POLITICAL_STATEMENT,
    "Strategic development": Category.POLITICAL_STATEMENT,
    "Headquarters or base established": Category.BASE_ESTABLISHED,
    "Non-violent transfer of territory": Category.POLITICAL_STATEMENT,
}
NEUTRAL_NOTES = "On 1 June 2025, an event took place near Boni."


def test_the_expected_tables_cover_every_code_the_parser_knows() -> None:
    assert {s.casefold() for s in SUB_EVENT_CATEGORIES} == set(acled.SUB_EVENT_TYPES)
    assert {e.casefold() for e in OLD_EVENT_CATEGORIES} == set(acled.OLD_EVENT_TYPES)


@pytest.mark.parametrize(("sub", "expected"), list(SUB_EVENT_CATEGORIES.items()))
def test_every_acled_sub_event_type_maps_to_its_category(
    sub: str, expected: tuple[str, Category]
) -> None:
    event_type, category = expected
    report = read_acled(sub_event_type=sub, event_type=event_type, notes=NEUTRAL_NOTES)
    assert report.incident.category is category
    assert report.warnings == ()
    assert report.incident.title == f"{sub} in Boni"
    assert "unmapped-event-type" not in report.incident.tags


def test_sub_event_type_is_read_whatever_its_case() -> None:
    report = read_acled(sub_event_type="AIR/DRONE STRIKE", notes=NEUTRAL_NOTES)
    assert report.incident.category is Category.AIR_DRONE_STRIKE


def test_disrupted_weapons_use_is_tagged_as_disrupted() -> None:
    report = read_acled(
        sub_event_type="Disrupted weapons use",
        event_type="Strategic developments",
        notes=NEUTRAL_NOTES,
    )
    assert "disrupted" in report.incident.tags


@pytest.mark.parametrize(("event_type", "category"), list(OLD_EVENT_CATEGORIES.items()))
def test_every_old_acled_event_type_maps_to_its_category(
    event_type: str, category: Category
) -> None:
    report = read_acled(event_type=event_type, sub_event_type="", notes=NEUTRAL_NOTES)
    assert report.incident.category is category
    assert report.warnings == ()


@pytest.mark.parametrize(
    ("notes", "category"),
    [
        ("A roadside bomb exploded under an army truck near Boni.", Category.IED),
        ("A military vehicle hit a mine near Boni.", Category.IED),
        ("A car bomb exploded at the gate of the camp.", Category.VBIED),
        ("A suicide attacker blew himself up at the market.", Category.SUICIDE_BOMBING),
        ("A drone struck a gathering of militants.", Category.AIR_DRONE_STRIKE),
        ("Militants fired mortar shells at the camp.", Category.INDIRECT_FIRE),
        ("Unknown remote violence near Boni.", Category.OTHER_VIOLENCE),
    ],
)
def test_old_remote_violence_is_refined_from_its_notes(notes: str, category: Category) -> None:
    report = read_acled(event_type="Remote violence", sub_event_type="", notes=notes)
    assert report.incident.category is category


@pytest.mark.parametrize(
    ("event_type", "sub"),
    [("Explosions/Remote violence", "Remote explosive/landmine/IED"), ("Remote violence", "")],
)
def test_a_mine_that_was_hit_is_an_explosive_not_the_mining_sector(
    event_type: str, sub: str
) -> None:
    report = read_acled(
        event_type=event_type,
        sub_event_type=sub,
        notes="On 1 June 2025, a military vehicle hit a mine near Boni. 3 soldiers were killed.",
    )
    incident = report.incident
    assert incident.category is Category.IED
    assert incident.target_type is not TargetType.MINING
    assert incident.target_profile.sectors == []
    assert incident.victim_profile.sector is None
    assert "mining" not in incident.tags


def test_a_gold_mine_is_the_mining_sector() -> None:
    report = read_acled(
        sub_event_type="Attack",
        event_type="Violence against civilians",
        notes="On 1 June 2025, gunmen attacked artisanal miners at a gold mine site near Boni.",
    )
    assert report.incident.target_type is TargetType.MINING
    assert report.incident.victim_profile.sector is Sector.MINING


def test_a_non_violent_transfer_of_territory_is_a_strategic_development_not_violence() -> None:
    notes = "On 1 June 2025, the army withdrew from its camp in Boni and JNIM took it over."
    new = read_acled(
        event_type="Strategic developments",
        sub_event_type="Non-violent transfer of territory",
        notes=notes,
    )
    old = read_acled(event_type="Non-violent transfer of territory", sub_event_type="", notes=notes)
    assert new.incident.category is Category.POLITICAL_STATEMENT
    assert old.incident.category is Category.POLITICAL_STATEMENT


# An attack's notes naming its victims' sector, or a foreign firm, and the sector named.
VICTIM_NOTES: list[tuple[str, Sector]] = [
    ("On 1 June 2025, JNIM shot dead a truck driver on the road near Boni.", Sector.LOGISTICS),
    ("On 1 June 2025, gunmen stopped a bus near Boni and killed two passengers.", Sector.LOGISTICS),
    ("On 1 June 2025, JNIM ambushed a convoy near Boni, killing 4.", Sector.LOGISTICS),
    ("On 1 June 2025, gunmen killed 3 people at a gold panning site near Boni.", Sector.MINING),
    ("On 1 June 2025, gunmen attacked the office of an NGO in Boni.", Sector.HUMANITARIAN),
    ("On 1 June 2025, gunmen attacked a camp of a foreign mining company near Boni.",
     Sector.MINING),
]  # fmt: skip


@pytest.mark.parametrize(("notes", "sector"), VICTIM_NOTES)
def test_an_attack_naming_its_victims_sector_hides_from_no_target(
    notes: str, sector: Sector
) -> None:
    report = read_acled(
        event_type="Violence against civilians", sub_event_type="Attack", notes=notes
    )
    incident = report.incident
    assert incident.category is Category.ARMED_ASSAULT
    # The sector raises matching targets; it limits nobody.
    assert incident.victim_profile.sector is sector
    assert incident.target_profile.sectors == []
    assert incident.target_profile.foreign_owned_only is False


@pytest.mark.parametrize(
    "headline",
    ["Burkina Faso: gunmen kill 5 truck drivers near Djibo",
     "Mali: jihadists kill 6 workers of a foreign mining company near Kayes"],
)  # fmt: skip
def test_a_ucdp_event_naming_its_victims_sector_hides_from_no_target(headline: str) -> None:
    incident = read_ucdp(type_of_violence="3", source_headline=headline).incident
    assert incident.victim_profile.sector is not None
    assert incident.target_profile.sectors == []
    assert incident.target_profile.foreign_owned_only is False


@pytest.mark.parametrize("category", list(Category))
def test_only_an_explicit_threat_limits_whom_it_applies_to(category: Category) -> None:
    found = free_text.read("JNIM threatened the convoys of foreign mining companies.")
    profiles = found.profiles(category)
    assert profiles["victim_profile"]["sector"] is Sector.MINING
    if category is Category.EXPLICIT_THREAT:
        assert profiles["target_profile"] == {
            "foreign_owned_only": True,
            "sectors": [Sector.LOGISTICS, Sector.MINING],
        }
    else:
        assert profiles["target_profile"] == {"foreign_owned_only": False, "sectors": []}


@pytest.mark.parametrize("value", ["2020-08-01", "01 August 2020", "1 August 2020"])
def test_both_acled_date_styles_read_as_the_same_day(value: str) -> None:
    report = read_acled(event_date=value, timestamp="")
    assert report.incident.occurred_at == datetime(2020, 8, 1, tzinfo=UTC)


@pytest.mark.parametrize("value", ["not a date", "2020-13-01", "32 August 2020", ""])
def test_a_bad_event_date_is_rejected_naming_event_date(value: str) -> None:
    result = acled.parse(acled_row(event_id_cnty="MLI7", event_date=value), 5, NOW)
    assert isinstance(result, Rejected)
    assert result.line == 5
    assert result.source_id == "MLI7"
    assert result.reason.startswith("event_date: ")


def test_hxl_row_is_skipped_and_lines_count_the_header_the_tags_and_wrapped_notes() -> None:
    header = ["event_id_cnty", "event_date", "notes"]
    text = csv_text(
        [
            header,
            ["#event+code", "#date+occurred", "#description"],
            ["MLI1", "2025-06-01", "first line\nsecond line"],
            ["MLI2", "2025-06-02", "one line"],
            ["MLI3", "2025-06-03", "extra", "field"],
            [],
            ["MLI4", "2025-06-04", "after a blank line"],
        ]
    )
    rows = list(csv_rows(io.StringIO(text, newline="")))
    assert rows[0] == (3, {"event_id_cnty": "MLI1", "event_date": "2025-06-01",
                           "notes": "first line\nsecond line"})  # fmt: skip
    assert rows[1] == (5, {"event_id_cnty": "MLI2", "event_date": "2025-06-02",
                           "notes": "one line"})  # fmt: skip
    assert isinstance(rows[2], Rejected)
    assert rows[2].line == 6
    assert rows[2].reason == "expected 3 fields as in the header, found 4"
    assert isinstance(rows[3], tuple)
    assert rows[3][0] == 8
    assert len(rows) == 4


def test_without_hxl_row_the_first_record_is_line_two_and_a_bom_is_dropped() -> None:
    text = "\ufeffEvent_ID_Cnty,Event_Date\nMLI1,2025-06-01\n"
    assert list(csv_rows(io.StringIO(text, newline=""))) == [
        (2, {"event_id_cnty": "MLI1", "event_date": "2025-06-01"})
    ]


def test_a_hxl_tagged_portal_export_reads_from_line_three() -> None:
    found = reports(fixture_items("acled", "acled_hdx.csv"))
    assert [(p.line, p.incident.source_id) for p in found] == [(3, "BFA7001"), (4, "BFA7002")]
    first = found[0].incident
    assert first.country == "BFA"  # the iso3 column
    assert first.occurred_at == datetime(2020, 8, 1, tzinfo=UTC)
    assert first.category is Category.ARMED_ASSAULT
    assert first.target_type is TargetType.CIVILIANS  # inter2 7 in the older numeric codes
    assert found[1].incident.target_type is TargetType.MILITARY  # inter2 1


def test_a_record_with_a_wrong_field_count_is_rejected_and_the_next_is_read() -> None:
    found = fixture_items("acled", "acled_export.csv")
    by_line = {item.line: item for item in found}
    assert set(by_line) == set(range(2, 10))
    short = by_line[8]
    assert isinstance(short, Rejected)
    assert short.reason == "expected 31 fields as in the header, found 10"
    after = by_line[9]
    assert isinstance(after, Parsed)
    assert after.incident.source_id == "MLI9008"


def test_an_unreadable_record_is_rejected_and_the_next_keeps_its_line() -> None:
    header = acled_row()
    huge = acled_row(event_id_cnty="MLI1", notes="x" * 200_000)
    fine = acled_row(event_id_cnty="MLI2")
    text = csv_text([list(header), list(huge.values()), list(fine.values())])
    found = items_of("acled", text)
    assert isinstance(found[0], Rejected)
    assert found[0].line == 2
    assert found[0].reason.startswith("unreadable CSV record")
    assert isinstance(found[1], Parsed)
    assert (found[1].line, found[1].incident.source_id) == (3, "MLI2")


@pytest.mark.parametrize(
    ("code", "precision"),
    [("1", TimePrecision.DAY), ("2", TimePrecision.WEEK), ("3", TimePrecision.MONTH)],
)
def test_acled_time_precision_codes(code: str, precision: TimePrecision) -> None:
    report = read_acled(time_precision=code)
    assert report.incident.occurred_precision is precision
    assert report.warnings == ()


@pytest.mark.parametrize(
    ("code", "precision"),
    [("1", LocationPrecision.EXACT), ("2", LocationPrecision.NEAR),
     ("3", LocationPrecision.REGION)],
)  # fmt: skip
def test_acled_geo_precision_codes(code: str, precision: LocationPrecision) -> None:
    report = read_acled(geo_precision=code)
    assert report.incident.location_precision is precision
    assert report.warnings == ()


@pytest.mark.parametrize("code", ["9", "0", ""])
def test_an_unknown_time_precision_is_kept_as_a_month_with_a_warning(code: str) -> None:
    report = read_acled(time_precision=code)
    assert report.incident.occurred_precision is TimePrecision.MONTH
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("time_precision ")
    assert "unknown" in report.warnings[0]
    assert "time_precision" in str(report.incident.source_fields["warnings"])


@pytest.mark.parametrize("code", ["4", "0", ""])
def test_an_unknown_geo_precision_is_kept_as_region_wide_with_a_warning(code: str) -> None:
    report = read_acled(geo_precision=code)
    assert report.incident.location_precision is LocationPrecision.REGION
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("geo_precision ")
    assert "unknown" in report.warnings[0]


def test_an_unknown_event_type_is_kept_as_other_violence_with_a_warning() -> None:
    report = read_acled(sub_event_type="Zombie uprising", notes=NEUTRAL_NOTES)
    assert report.incident.category is Category.OTHER_VIOLENCE
    assert "unmapped-event-type" in report.incident.tags
    assert len(report.warnings) == 1
    assert "Zombie uprising" in report.warnings[0]
    assert report.incident.source_fields["sub_event_type"] == "Zombie uprising"


def test_kidnapping_hidden_in_an_attack_becomes_a_kidnapping_of_expatriates() -> None:
    report = read_acled(
        event_type="Violence against civilians",
        sub_event_type="Attack",
        civilian_targeting="Civilian targeting",
        inter2="Civilians",
        notes=(
            "On 3 June 2025, gunmen abducted two Chinese nationals working for a gold mining "
            "company near Kayes."
        ),
    )
    incident = report.incident
    assert incident.category is Category.KIDNAPPING
    assert "kidnapping" in incident.tags
    assert incident.victim_profile.expatriate is True
    assert incident.victim_profile.nationality == "Chinese"
    assert incident.victim_profile.sector is Sector.MINING
    assert incident.target_profile.sectors == []


def test_hostages_taken_in_an_ambush_are_a_kidnapping_of_unnamed_expatriates() -> None:
    report = read_acled(
        event_type="Violence against civilians",
        sub_event_type="Attack",
        notes="JNIM ambushed a vehicle near Boni and took two expatriate engineers hostage.",
    )
    assert report.incident.category is Category.KIDNAPPING
    assert report.incident.victim_profile.expatriate is True
    assert report.incident.victim_profile.nationality is None


# Every nationality the synthetic generator writes into kidnapping notes.
@pytest.mark.parametrize(
    "nationality",
    ["Chinese", "Turkish", "Indian", "Iranian", "Moroccan", "Russian", "Egyptian", "Lebanese"],
)
def test_workers_kidnapped_named_by_nationality_are_expatriates(nationality: str) -> None:
    report = read_acled(
        event_type="Violence against civilians",
        sub_event_type="Attack",
        notes=(
            "JNIM attacked a convoy of a logistics company near Boni; three "
            f"{nationality} workers were kidnapped and the trucks burned."
        ),
    )
    assert report.incident.category is Category.KIDNAPPING
    assert report.incident.victim_profile.expatriate is True
    assert report.incident.victim_profile.nationality == nationality


def test_a_threat_in_a_strategic_statement_is_an_explicit_threat_scoped_to_its_region() -> None:
    report = read_acled(
        event_type="Strategic developments",
        sub_event_type="Other",
        admin1="Kayes",
        geo_precision="3",
        notes=(
            "On 5 June 2025, JNIM threatened foreign mining companies operating in western Mali "
            "and ordered them to stop work."
        ),
    )
    incident = report.incident
    assert incident.category is Category.EXPLICIT_THREAT
    assert incident.scope is not None
    assert incident.scope.countries == ["MLI"]
    assert incident.scope.admin1 == ["Kayes"]
    assert incident.target_profile.foreign_owned_only is True
    assert incident.target_profile.sectors == [Sector.MINING]
    assert incident.target_type is TargetType.FOREIGN_FIRM
    assert "threat" in incident.tags


def test_a_threat_without_a_region_is_scoped_to_the_whole_country() -> None:
    report = read_acled(
        event_type="Strategic developments",
        sub_event_type="Other",
        admin1="",
        notes="JNIM threatened to attack convoys supplying Gao and told transporters to stop.",
    )
    assert report.incident.category is Category.EXPLICIT_THREAT
    assert report.incident.scope is not None
    assert report.incident.scope.countries == ["MLI"]
    assert report.incident.scope.admin1 == []
    assert report.incident.target_type is TargetType.LOGISTICS


def test_a_statement_without_a_threat_stays_a_political_statement() -> None:
    report = read_acled(
        event_type="Strategic developments",
        sub_event_type="Other",
        notes="JNIM released a communique rejecting the army's claims.",
    )
    assert report.incident.category is Category.POLITICAL_STATEMENT
    assert report.incident.scope is None


@pytest.mark.parametrize(
    ("sub", "event_type", "notes", "category"),
    [
        ("Peaceful protest", "Protests",
         "Women marched in Boni to demand the release of abducted relatives.",
         Category.POLITICAL_STATEMENT),
        ("Peaceful protest", "Protests",
         "Traders protested against threats by JNIM and warned of a strike.",
         Category.POLITICAL_STATEMENT),
        ("Protest with intervention", "Protests",
         "Police dispersed residents protesting against kidnappings on the road.",
         Category.POLITICAL_STATEMENT),
        ("Violent demonstration", "Riots",
         "Youths burned tyres in Boni in protest at the threats made against the town.",
         Category.OTHER_VIOLENCE),
        ("Violent demonstration", "Riots",
         "Youths burned tyres in Boni in protest at the kidnapping of a trader.",
         Category.OTHER_VIOLENCE),
        ("Excessive force against protesters", "Protests",
         "Police fired on protesters demanding the release of abducted relatives.",
         Category.ARMED_ASSAULT),
    ],
)  # fmt: skip
def test_protest_notes_about_threats_or_abductions_keep_the_protest_category(
    sub: str, event_type: str, notes: str, category: Category
) -> None:
    report = read_acled(
        disorder_type="Demonstrations", event_type=event_type, sub_event_type=sub, notes=notes
    )
    assert report.incident.category is category
    assert report.incident.scope is None


@pytest.mark.parametrize(
    ("notes", "claimed"),
    [
        ("JNIM attacked the camp. JNIM claimed to have killed 30 soldiers.", 30),
        ("IS Sahel claimed the attack, saying it killed 45 soldiers.", 45),
        ("JNIM claimed 20 soldiers dead in the ambush.", 20),
        ("JNIM attacked the camp; 12 soldiers were killed.", None),
    ],
)
def test_claimed_fatalities_come_from_the_notes_and_acled_fatalities_are_best(
    notes: str, claimed: int | None
) -> None:
    report = read_acled(notes=notes, fatalities="12")
    assert report.incident.fatalities.best == 12
    assert report.incident.fatalities.claimed == claimed
    assert ("claimed-fatalities" in report.incident.tags) is (claimed is not None)


def test_empty_fatalities_are_unknown_and_bad_ones_are_rejected() -> None:
    assert read_acled(fatalities="").incident.fatalities.best is None
    result = acled.parse(acled_row(fatalities="many"), 2, NOW)
    assert isinstance(result, Rejected)
    assert result.reason.startswith("fatalities: ")


def test_reported_at_is_the_timestamp_when_edited_within_a_week_of_the_event() -> None:
    edited = datetime(2025, 6, 4, 10, tzinfo=UTC)
    incident = read_acled(event_date="2025-06-01", timestamp=unix(edited)).incident
    assert incident.reported_at == edited
    assert incident.reported_at_estimated is True
    assert incident.source_updated_at == edited
    assert incident.source_fields["reported_at_basis"] == "timestamp"


@pytest.mark.parametrize(
    ("code", "reported"),
    [("1", datetime(2024, 3, 9, tzinfo=UTC)), ("2", datetime(2024, 3, 15, tzinfo=UTC)),
     ("3", datetime(2024, 4, 8, tzinfo=UTC))],
)  # fmt: skip
def test_reported_at_of_a_backfilled_event_is_its_date_plus_its_span_plus_a_week(
    code: str, reported: datetime
) -> None:
    edited = datetime(2025, 2, 1, tzinfo=UTC)  # a much later re-edit: no first-report time
    incident = read_acled(event_date="2024-03-01", time_precision=code, timestamp=unix(edited))
    assert incident.incident.reported_at == reported
    assert incident.incident.reported_at_estimated is True
    assert incident.incident.source_updated_at == edited
    assert incident.incident.source_fields["reported_at_basis"] == "event_date + 7 days"


def test_reported_at_without_a_timestamp_is_estimated_too() -> None:
    incident = read_acled(event_date="2024-03-01", timestamp="").incident
    assert incident.reported_at == datetime(2024, 3, 9, tzinfo=UTC)
    assert incident.source_updated_at is None


def test_an_edit_time_before_the_event_is_no_report_time() -> None:
    incident = read_acled(event_date="2024-03-05", timestamp=unix(datetime(2024, 3, 1, tzinfo=UTC)))
    assert incident.incident.reported_at == datetime(2024, 3, 13, tzinfo=UTC)
    assert incident.incident.source_fields["reported_at_basis"] == "event_date + 7 days"


@pytest.mark.parametrize("edited", [None, datetime(2025, 6, 5, tzinfo=UTC)])
def test_reported_at_is_never_after_now(edited: datetime | None) -> None:
    now = datetime(2025, 6, 3, 12, tzinfo=UTC)
    row = acled_row(event_date="2025-06-01", timestamp=unix(edited) if edited else "")
    incident = parsed(acled.parse(row, 2, now)).incident
    assert incident.reported_at == now


def test_the_iso3_column_gives_the_country() -> None:
    assert read_acled(iso3="NER", country="Mali").incident.country == "NER"


def test_a_numeric_iso_code_is_read_through_the_country_name() -> None:
    incident = read_acled(iso="854", country="Burkina Faso", event_id_cnty="BFA1").incident
    assert incident.country == "BFA"
    assert incident.source_fields["iso"] == "854"


def test_an_unknown_country_name_falls_back_to_the_event_id_prefix() -> None:
    assert read_acled(country="Atlantis", event_id_cnty="NER77").incident.country == "NER"


def test_a_country_nothing_names_is_kept_without_a_code_and_with_a_warning() -> None:
    report = read_acled(country="Atlantis", event_id_cnty="77")
    assert report.incident.country is None
    assert report.warnings == ("country 'Atlantis' unknown: kept without a code",)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("latitude", "", "latitude: missing"),
        ("latitude", "95", "latitude: 95.0 is outside -90..90"),
        ("longitude", "east", "longitude: not a number: 'east'"),
        ("event_id_cnty", "", "event_id_cnty: missing"),
        ("timestamp", "yesterday", "timestamp: not a Unix time or ISO date: 'yesterday'"),
    ],
)
def test_rows_without_usable_required_fields_are_rejected_with_the_field(
    field: str, value: str, reason: str
) -> None:
    result = acled.parse(acled_row(**{field: value}), 4, NOW)
    assert isinstance(result, Rejected)
    assert (result.line, result.reason) == (4, reason)


def test_acled_api_page_values_are_strings_in_a_data_list() -> None:
    found = reports(fixture_items("acled", "acled_api_page.json"))
    assert [(p.line, p.incident.source_id) for p in found] == [(1, "NER5001"), (2, "NER5002")]
    strike, kidnap = (p.incident for p in found)
    assert strike.category is Category.AIR_DRONE_STRIKE
    assert strike.country == "NER"
    assert strike.location_precision is LocationPrecision.NEAR
    assert strike.fatalities.best == 7
    assert kidnap.category is Category.KIDNAPPING
    assert kidnap.victim_profile.expatriate is True
    assert kidnap.victim_profile.nationality == "Austrian"
    assert kidnap.target_type is TargetType.HUMANITARIAN


def test_acled_api_values_given_as_numbers_or_null_read_as_their_text() -> None:
    as_text = acled_row()
    typed: dict[str, Any] = dict(as_text)
    typed.update(
        latitude=15.03, longitude=-1.98, fatalities=4, time_precision=1, geo_precision=1,
        timestamp=int(as_text["timestamp"]), year=2025, tags=None,
    )  # fmt: skip
    from_text, from_numbers = (
        reports(items_of("acled", json.dumps({"data": [row]}))) for row in (as_text, typed)
    )
    assert from_numbers[0].incident == from_text[0].incident


def test_acled_api_pages_in_a_list_are_numbered_across_pages() -> None:
    events = synth.generate(5, 25, START, END)
    pages = synth.acled_api_pages(events, 10)
    found = reports(items_of("acled", json.dumps(pages)))
    assert [p.line for p in found] == list(range(1, 26))
    assert [p.incident.source_id for p in found] == [e.event_id_cnty for e in events]


def test_unreadable_json_is_one_rejection_with_its_line() -> None:
    found = items_of("acled", '{"data": [\n {"event_id_cnty": "MLI1",}\n]}')
    assert len(found) == 1
    assert isinstance(found[0], Rejected)
    assert found[0].line == 2
    assert found[0].reason.startswith("unreadable JSON")


def test_acled_deletions_read_unix_or_iso_times_and_reject_rows_without_an_id() -> None:
    found = items_of(
        "acled-deleted",
        "event_id_cnty,deleted_timestamp\nMLI1,1749686400\nMLI2,2025-06-12T00:00:00\n,1\n"
        "MLI3,soon\nMLI4,\n",
    )
    moment = datetime(2025, 6, 12, tzinfo=UTC)
    assert found[:2] == [Deletion(2, "acled", "MLI1", moment), Deletion(3, "acled", "MLI2", moment)]
    assert found[2] == Rejected(4, None, "event_id_cnty: missing")
    assert isinstance(found[3], Rejected)
    assert (found[3].line, found[3].source_id) == (5, "MLI3")
    assert found[3].reason.startswith("deleted_timestamp: ")
    assert found[4] == Deletion(6, "acled", "MLI4", None)


# --- UCDP GED --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "category", "tag"),
    [("1", Category.ARMED_CLASH, "state-based"), ("2", Category.ARMED_CLASH, "non-state"),
     ("3", Category.ARMED_ASSAULT, "one-sided")],
)  # fmt: skip
def test_ucdp_type_of_violence_gives_the_category(code: str, category: Category, tag: str) -> None:
    report = read_ucdp(type_of_violence=code, source_headline="Fighting near Boulkessi")
    assert report.incident.category is category
    assert report.incident.tags[:2] == ["ucdp", tag]
    assert report.warnings == ()


def test_an_unknown_type_of_violence_is_kept_as_other_violence_with_a_warning() -> None:
    report = read_ucdp(type_of_violence="4", source_headline="Fighting near Boulkessi")
    assert report.incident.category is Category.OTHER_VIOLENCE
    assert "unmapped-event-type" in report.incident.tags
    assert report.warnings == ("type_of_violence 4 unknown: kept, counted as other violence",)


def test_one_sided_violence_targets_civilians() -> None:
    incident = read_ucdp(type_of_violence="3", source_headline="Villagers killed").incident
    assert incident.target_type is TargetType.CIVILIANS


@pytest.mark.parametrize(
    ("headline", "code", "category"),
    [
        ("Mali: 5 soldiers killed by IED near Boni", "1", Category.IED),
        ("Mali: 3 killed in IED blast near Boni", "3", Category.IED),
        ("Mali: army drone strike kills 10 militants", "1", Category.AIR_DRONE_STRIKE),
        ("Burkina Faso: suicide bomber kills 8 at camp", "1", Category.SUICIDE_BOMBING),
        ("Mali: suicide car bomb kills 8 at camp", "1", Category.VBIED),
        ("Mali: 4 killed in shelling of Gao", "1", Category.INDIRECT_FIRE),
        ("Mali: rebels shot down army helicopter, crew killed", "1", Category.ANTI_AIRCRAFT_FIRE),
        ("Niger: gunmen abduct and kill 3 herders", "3", Category.KIDNAPPING),
        ("Mali: clashes near Boulkessi", "1", Category.ARMED_CLASH),
    ],
)
def test_ucdp_headline_refines_the_category(headline: str, code: str, category: Category) -> None:
    report = read_ucdp(type_of_violence=code, source_headline=headline)
    assert report.incident.category is category
    assert report.incident.title == headline


def test_ucdp_headline_naming_a_gold_mine_is_not_an_explosive() -> None:
    report = read_ucdp(
        type_of_violence="3",
        source_headline="Mali: gunmen kill 12 artisanal miners at gold mine near Kayes",
    )
    assert report.incident.target_type is TargetType.MINING
    assert report.incident.category is Category.ARMED_ASSAULT


@pytest.mark.parametrize(
    ("code", "precision"),
    [("1", LocationPrecision.EXACT), ("2", LocationPrecision.NEAR), ("3", LocationPrecision.NEAR),
     ("4", LocationPrecision.REGION), ("5", LocationPrecision.REGION),
     ("6", LocationPrecision.REGION), ("7", LocationPrecision.REGION)],
)  # fmt: skip
def test_ucdp_where_prec_codes(code: str, precision: LocationPrecision) -> None:
    report = read_ucdp(where_prec=code)
    assert report.incident.location_precision is precision
    assert report.warnings == ()


@pytest.mark.parametrize("code", ["8", ""])
def test_an_unknown_where_prec_is_kept_as_region_wide_with_a_warning(code: str) -> None:
    report = read_ucdp(where_prec=code)
    assert report.incident.location_precision is LocationPrecision.REGION
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("where_prec ")


@pytest.mark.parametrize(
    ("code", "precision"),
    [("1", TimePrecision.DAY), ("2", TimePrecision.WEEK), ("3", TimePrecision.MONTH)],
)
def test_ucdp_date_prec_codes(code: str, precision: TimePrecision) -> None:
    report = read_ucdp(date_prec=code)
    assert report.incident.occurred_precision is precision
    assert report.warnings == ()


@pytest.mark.parametrize("code", ["4", "5"])
def test_a_ucdp_date_coarser_than_a_month_is_read_as_a_month_with_a_warning(code: str) -> None:
    report = read_ucdp(date_prec=code)
    assert report.incident.occurred_precision is TimePrecision.MONTH
    assert report.warnings == (f"date_prec {code} is coarser than a month: read as a month",)
    assert "coarser" in str(report.incident.source_fields["warnings"])


def test_an_unknown_ucdp_date_prec_is_read_as_a_month_with_a_warning() -> None:
    report = read_ucdp(date_prec="9")
    assert report.incident.occurred_precision is TimePrecision.MONTH
    assert report.warnings == ("date_prec 9 unknown: kept, read as a month",)


def test_ucdp_low_best_high_are_kept() -> None:
    incident = read_ucdp().incident
    assert (incident.fatalities.low, incident.fatalities.best, incident.fatalities.high) == (
        14, 20, 30,
    )  # fmt: skip
    assert incident.fatalities.claimed is None
    assert incident.source_fields["deaths_a"] == "14"


def test_ucdp_best_is_the_sum_of_the_deaths_when_missing() -> None:
    incident = read_ucdp(best="", deaths_a="3", deaths_b="", deaths_civilians="4",
                         deaths_unknown="1", low="", high="").incident  # fmt: skip
    assert incident.fatalities.best == 8
    unknown = read_ucdp(best="", deaths_a="", deaths_b="", deaths_civilians="",
                        deaths_unknown="", low="", high="").incident  # fmt: skip
    assert unknown.fatalities.best is None


@pytest.mark.parametrize(("low", "best", "high"), [("21", "20", "30"), ("14", "20", "19")])
def test_ucdp_bounds_out_of_order_are_rejected(low: str, best: str, high: str) -> None:
    result = ucdp.parse(ucdp_row(low=low, best=best, high=high), 7, NOW)
    assert isinstance(result, Rejected)
    assert (result.line, result.source_id) == (7, "640001")
    assert result.reason.startswith("fatalities: ")
    assert "low <= best <= high" in result.reason


def test_a_ucdp_end_before_its_start_is_rejected() -> None:
    result = ucdp.parse(ucdp_row(date_end="2025-05-30 00:00:00.000"), 3, NOW)
    assert isinstance(result, Rejected)
    assert result.reason == "date_end: before date_start"


@pytest.mark.parametrize(
    ("name", "code"),
    [("Mali", "MLI"), ("Mali (Sahel)", "MLI"), ("Burkina Faso", "BFA"),
     ("Cote d'Ivoire (Ivory Coast)", "CIV"), ("Niger", "NER")],
)  # fmt: skip
def test_ucdp_country_names_with_brackets_read_as_the_country(name: str, code: str) -> None:
    report = read_ucdp(country=name)
    assert report.incident.country == code
    assert report.warnings == ()


def test_an_unknown_ucdp_country_is_kept_without_a_code_and_with_a_warning() -> None:
    report = read_ucdp(country="Yemen (North Yemen)")
    assert report.incident.country is None
    assert report.warnings == ("country 'Yemen (North Yemen)' unknown: kept without a code",)


def test_ucdp_regions_lose_their_suffix_as_acled_spells_them() -> None:
    incident = read_ucdp(adm_1="Gao region", adm_2="Ansongo cercle").incident
    assert (incident.admin1, incident.admin2) == ("Gao", "Ansongo")


def test_ucdp_reported_at_is_a_month_after_the_end_and_never_after_now() -> None:
    incident = read_ucdp(date_end="2025-06-03 00:00:00.000").incident
    assert incident.reported_at == datetime(2025, 7, 1, tzinfo=UTC)  # capped at NOW
    assert incident.reported_at_estimated is True
    old = parsed(ucdp.parse(ucdp_row(), 2, datetime(2026, 1, 1, tzinfo=UTC))).incident
    assert old.reported_at == datetime(2025, 7, 2, tzinfo=UTC)
    assert old.source_fields["reported_at_basis"] == "date_end + 31 days"


def test_the_ucdp_fixture_reads_two_rows_and_rejects_bounds_out_of_order() -> None:
    found = fixture_items("ucdp", "ucdp_ged.csv")
    assert [(i.line, type(i).__name__) for i in found] == [
        (2, "Parsed"), (3, "Parsed"), (4, "Rejected"),
    ]  # fmt: skip
    first = found[0]
    assert isinstance(first, Parsed)
    assert first.incident.admin1 == "Tombouctou"
    assert first.incident.actors == ["Government of Mali", "JNIM"]


def test_ucdp_api_pages_hold_rows_in_result_numbered_across_pages() -> None:
    typed: dict[str, Any] = {**ucdp_row(), "best": 20, "low": 14, "high": 30, "where_prec": 1,
                             "type_of_violence": 1, "latitude": 15.15, "longitude": -1.93,
                             "date_start": "2025-06-01T00:00:00", "date_end": None}  # fmt: skip
    second = {**typed, "id": 640009}
    pages = [
        {"TotalCount": 2, "TotalPages": 2, "NextPageUrl": "next", "Result": [typed]},
        {"TotalCount": 2, "TotalPages": 2, "NextPageUrl": "", "Result": [second]},
    ]
    found = reports(items_of("ucdp", json.dumps(pages)))
    assert [(p.line, p.incident.source_id) for p in found] == [(1, "640001"), (2, "640009")]
    assert found[0].incident == read_ucdp().incident.model_copy(
        update={"source_fields": found[0].incident.source_fields}
    )
    single = reports(items_of("ucdp", json.dumps(pages[0])))
    assert [p.incident.source_id for p in single] == ["640001"]


# --- the synthetic streams, whole -----------------------------------------------------------

SYNTH_KIND_CATEGORIES: dict[str, Category] = {
    "Attack": Category.ARMED_ASSAULT,
    "Armed clash": Category.ARMED_CLASH,
    "Remote explosive/landmine/IED": Category.IED,
    "Shelling/artillery/missile attack": Category.INDIRECT_FIRE,
    "Air/drone strike": Category.AIR_DRONE_STRIKE,
    "Suicide bomb": Category.VBIED,  # the generator's suicide bombers drive car bombs
    "Abduction/forced disappearance": Category.KIDNAPPING,
    "Looting/property destruction": Category.LOOTING,
    "Non-state actor overtakes territory": Category.TERRITORY_SEIZURE,
    "Headquarters or base established": Category.BASE_ESTABLISHED,
    "Other": Category.POLITICAL_STATEMENT,
    "Peaceful protest": Category.POLITICAL_STATEMENT,
    "Violent demonstration": Category.OTHER_VIOLENCE,
}
SIGNAL_CATEGORIES = {"kidnapping": Category.KIDNAPPING, "threat": Category.EXPLICIT_THREAT}


@pytest.fixture(scope="module")
def events() -> list[synth.Event]:
    return synth.generate(21, 400, START, END)


def synth_acled_text(
    events: Sequence[synth.Event],
    *,
    hxl: bool = False,
    date_style: Literal["iso", "long"] = "iso",
    columns: Literal["new", "old"] = "new",
) -> str:
    buf = io.StringIO()
    synth.write_acled_csv(events, buf, hxl=hxl, date_style=date_style, columns=columns)
    return buf.getvalue()


VARIANTS: list[dict[str, Any]] = [
    {},
    {"columns": "old"},
    {"hxl": True},
    {"date_style": "long"},
    {"columns": "old", "hxl": True, "date_style": "long"},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())) or "new")
def test_every_synthetic_acled_row_parses_in_every_variant(
    events: list[synth.Event], variant: dict[str, Any]
) -> None:
    found = reports(items_of("acled", synth_acled_text(events, **variant), SYNTH_NOW))
    first_line = 3 if variant.get("hxl") else 2
    assert [p.line for p in found] == list(range(first_line, first_line + len(events)))
    for report, event in zip(found, events, strict=True):
        incident = report.incident
        assert report.warnings == (), event.event_id_cnty
        assert incident.source_id == event.event_id_cnty
        assert incident.occurred_at.date() == event.day
        assert incident.occurred_precision is acled.TIME_PRECISION[event.time_precision]
        assert incident.location_precision is acled.GEO_PRECISION[event.geo_precision]
        assert incident.country == event.country
        assert incident.admin1 == event.admin1
        assert incident.location is not None
        assert incident.location.coordinates == (event.lon, event.lat)
        assert incident.fatalities.best == event.fatalities
        assert incident.source_updated_at == datetime.fromtimestamp(event.timestamp, UTC)
        assert incident.reported_at is not None
        assert incident.occurred_at <= incident.reported_at <= SYNTH_NOW
        if not event.signal:
            assert incident.category is SYNTH_KIND_CATEGORIES[event.sub_event_type], event.notes


def test_synthetic_variants_give_the_same_reports(events: list[synth.Event]) -> None:
    def incidents(text: str) -> list[Any]:
        return [p.incident for p in reports(items_of("acled", text, SYNTH_NOW))]

    new = incidents(synth_acled_text(events))
    assert incidents(synth_acled_text(events, hxl=True, date_style="long")) == new
    pages = synth.acled_api_pages(events, 150)
    assert incidents(json.dumps(pages)) == new
    # The older column set lacks disorder_type, civilian_targeting and tags, and codes inter
    # as numbers: only what those columns say may differ.
    for old, ref in zip(incidents(synth_acled_text(events, columns="old")), new, strict=True):
        assert old.category is ref.category
        assert (old.occurred_at, old.reported_at, old.location) == (
            ref.occurred_at, ref.reported_at, ref.location,
        )  # fmt: skip
        assert old.target_type == ref.target_type


def test_the_generators_kidnappings_and_threats_agree_with_the_parsed_category() -> None:
    # Ground truth: the generator's `signal` says what the notes reveal beyond the codes.
    truth = found = agreed = 0
    for seed in (1, 2, 3):
        events = synth.generate(seed, 1_000, START, END)
        for report, event in zip(
            reports(items_of("acled", synth_acled_text(events), SYNTH_NOW)), events, strict=True
        ):
            expected = SIGNAL_CATEGORIES.get(event.signal)
            got = report.incident.category
            flagged = got in (Category.KIDNAPPING, Category.EXPLICIT_THREAT)
            truth += expected is not None
            found += flagged
            agreed += expected is not None and got is expected
    assert truth > 200
    recall, precision = agreed / truth, agreed / found
    assert recall >= 0.95, (recall, precision)
    assert precision >= 0.95, (recall, precision)


def test_every_synthetic_ucdp_row_parses_csv_and_api_alike() -> None:
    # Seed 6 has UCDP-only rows dated to the year and the month (date_prec 4 and 5).
    rows = synth.ucdp_events(synth.generate(6, 1_000, START, END), 6)
    buf = io.StringIO()
    synth.write_ucdp_csv(rows, buf)
    found = reports(items_of("ucdp", buf.getvalue(), SYNTH_NOW))
    assert [p.line for p in found] == list(range(2, 2 + len(rows)))
    for report, row in zip(found, rows, strict=True):
        incident = report.incident
        assert incident.source_id == str(row.id)
        assert incident.country == row.country
        assert incident.occurred_at.date() == row.date_start
        fatalities = incident.fatalities
        assert (fatalities.low, fatalities.best, fatalities.high) == (row.low, row.best, row.high)
        if row.date_prec in (4, 5):
            assert report.warnings == (
                f"date_prec {row.date_prec} is coarser than a month: read as a month",
            )
        else:
            assert report.warnings == ()
    assert any(row.date_prec in (4, 5) for row in rows)
    page = {"Result": [synth.ucdp_values(row, 1) for row in rows]}
    from_api = reports(items_of("ucdp", json.dumps(page), SYNTH_NOW))
    assert [p.line for p in from_api] == list(range(1, 1 + len(rows)))
    for a, b in zip(from_api, found, strict=True):
        # relid holds the sequence within its conflict-year, which the page above does not.
        assert a.incident.model_copy(update={"source_fields": {}}) == b.incident.model_copy(
            update={"source_fields": {}}
        )


def test_synthetic_ucdp_rows_for_acled_events_describe_the_same_day_and_place() -> None:
    events = synth.generate(21, 600, START, END)
    rows = [r for r in synth.ucdp_events(events, 21) if r.event_key is not None]
    for row in rows:
        event = events[row.event_key or 0]
        report = parsed(ucdp.parse(synth.ucdp_values(row, 1), 2, SYNTH_NOW))
        assert abs(report.incident.occurred_at.date() - event.day) <= timedelta(days=1)
        assert report.incident.admin1 == event.admin1


# --- bad rows and bad files ------------------------------------------------------------------


def test_a_row_dated_9999_12_31_is_rejected_naming_the_date_not_an_overflow() -> None:
    found = items_of(
        "acled", csv_text([list(acled_row()), list(acled_row(event_date="9999-12-31").values())])
    )
    assert found == [Rejected(2, "MLI1001", "event_date: 9999-12-31 is not between 1900 and 2200")]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event_date": "31 December 9999"}, "event_date: 9999-12-31 is not between 1900 and 2200"),
        ({"event_date": "1066-10-14"}, "event_date: 1066-10-14 is not between 1900 and 2200"),
        ({"timestamp": "253402214400"}, "timestamp: 9999-12-31 is not between 1900 and 2200"),
        ({"timestamp": "9999-12-31T00:00:00"},
         "timestamp: 9999-12-31 is not between 1900 and 2200"),
    ],
)  # fmt: skip
def test_acled_dates_outside_the_plausible_years_are_rejected_on_their_field(
    fields: dict[str, str], reason: str
) -> None:
    assert acled.parse(acled_row(**fields), 2, NOW) == Rejected(2, "MLI1001", reason)


def test_ucdp_dates_outside_the_plausible_years_are_rejected_on_their_field() -> None:
    late = ucdp.parse(ucdp_row(date_start="9999-12-31", date_end="9999-12-31"), 2, NOW)
    assert late == Rejected(2, "640001", "date_start: 9999-12-31 is not between 1900 and 2200")
    edge = ucdp.parse(ucdp_row(date_end="9999-12-31T23:59:59-12:00"), 3, NOW)
    assert edge == Rejected(3, "640001", "date_end: out of range: '9999-12-31T23:59:59-12:00'")


def fail_acled_row(monkeypatch: pytest.MonkeyPatch, event_id: str, error: Exception) -> None:
    """Make the ACLED parser raise `error` on the row `event_id`, as an unforeseen bug would."""
    title = acled._title

    def failing(row: dict[str, str], category: Category) -> str:
        if row["event_id_cnty"] == event_id:
            raise error
        return title(row, category)

    monkeypatch.setattr(acled, "_title", failing)


def test_a_row_whose_parsing_fails_in_any_way_is_rejected_with_its_line_and_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_acled_row(monkeypatch, "MLI1002", ZeroDivisionError("division by zero"))
    rows = [acled_row(), acled_row(event_id_cnty="MLI1002"), acled_row(event_id_cnty="MLI1003")]
    found = items_of("acled", csv_text([list(rows[0]), *(list(r.values()) for r in rows)]))
    assert [p.incident.source_id for p in found if isinstance(p, Parsed)] == ["MLI1001", "MLI1003"]
    assert [r for r in found if isinstance(r, Rejected)] == [
        Rejected(3, "MLI1002", "not readable: ZeroDivisionError: division by zero")
    ]


def test_an_iso3_code_outside_iso_3166_is_no_code_and_the_country_name_is_read() -> None:
    report = read_acled(iso3="XXX", country="Niger", event_id_cnty="XYZ1")
    assert report.incident.country == "NER"
    unknown = read_acled(iso3="XXX", country="Atlantis", event_id_cnty="XYZ1")
    assert unknown.incident.country is None
    assert "country 'Atlantis' unknown: kept without a code" in unknown.warnings
    assert read_acled(country="Atlantis", event_id_cnty="BFA1").incident.country == "BFA"


HEADER = "event_id_cnty,event_date,notes\n"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("event_id_cnty;event_date\nMLI1;2025-06-01\n", 1,
         "the file uses ';' as its delimiter; export it comma-separated"),
        ("event_id_cnty\tevent_date\nMLI1\t2025-06-01\n", 1,
         "the file uses tabs as its delimiter; export it comma-separated"),
        ('"event_id_cnty,event_date\nMLI1,2025-06-01\n', 1,
         "a quote opened in the header row is never closed"),
        ("x" * 200_000, 1,
         "the header row cannot be read: a field is longer than 131072 characters (a quote never "
         "closed, or a file without line breaks?)"),
    ],
    ids=["semicolon", "tab", "header-quote", "no-line-breaks"],
)  # fmt: skip
def test_a_csv_file_that_cannot_be_imported_is_refused_naming_the_real_problem(
    text: str, line: int, reason: str
) -> None:
    with pytest.raises(FileError) as refused:
        csv_rows(io.StringIO(text, newline=""))
    assert (refused.value.line, refused.value.reason) == (line, reason)
    assert not isinstance(refused.value, NoRecords)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("", 1, "the file is empty"),
        (HEADER, 2, "the file has a header row but no records"),
        (HEADER + "#event+code,#date,#description\n\n", 2,
         "the file has a header row but no records"),
    ],
    ids=["empty", "header-only", "header-and-hxl-only"],
)  # fmt: skip
def test_a_csv_file_without_records_says_so(text: str, line: int, reason: str) -> None:
    with pytest.raises(NoRecords) as refused:
        csv_rows(io.StringIO(text, newline=""))
    assert (refused.value.line, refused.value.reason) == (line, reason)
    # Read leniently (a feed's empty answer), such a file is simply no item.
    assert items_of("acled", text) == []


def test_a_quote_never_closed_rejects_its_record_and_names_the_lines_it_swallowed() -> None:
    text = HEADER + 'MLI1,2025-06-01,fine\nMLI2,2025-06-02,"broken\nMLI3,2025-06-03,x\nMLI4,a,b\n'
    rows = list(csv_rows(io.StringIO(text, newline="")))
    assert rows == [
        (2, {"event_id_cnty": "MLI1", "event_date": "2025-06-01", "notes": "fine"}),
        Rejected(3, None, "a quote opened in this record is never closed: lines 3-5 were read "
                          "as one record"),
    ]  # fmt: skip
    last = list(csv_rows(io.StringIO(HEADER + 'MLI1,2025-06-01,"open', newline="")))
    assert last == [Rejected(2, None, "a quote opened in this record is never closed")]


def test_a_field_over_the_csv_size_limit_is_one_rejection_and_the_next_record_is_read() -> None:
    text = HEADER + "MLI1,2025-06-01," + "x" * 200_000 + "\nMLI2,2025-06-02,ok\n"
    rows = list(csv_rows(io.StringIO(text, newline="")))
    assert rows[0] == Rejected(
        2,
        None,
        "unreadable CSV record: a field is longer than 131072 characters (a quote never closed, "
        "or a file without line breaks?)",
    )
    assert rows[-1] == (3, {"event_id_cnty": "MLI2", "event_date": "2025-06-02", "notes": "ok"})


def test_json_nested_too_deeply_is_one_rejection_not_a_recursion_error() -> None:
    found = items_of("acled", "[" * 100_000)
    assert found == [Rejected(1, None, "JSON nested too deeply: API pages are four levels deep")]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("-12.5", "-12.5"),
        ("+3", "+3"),
        ("-1e5", "-1e5"),
        (-3, "-3"),
        (2.5, "2.5"),
        (None, ""),
        ("event_date: missing", "event_date: missing"),
        ("a=b", "a=b"),
    ],
)
def test_a_cell_a_spreadsheet_would_run_as_a_formula_is_quoted_but_a_number_is_not(
    value: object, cell: str
) -> None:
    assert spreadsheet_cell(value) == cell


def test_synthetic_exports_are_written_with_no_cell_neutralised() -> None:
    # The generator's values are numbers and words: a quote added to one would change the rows.
    events = synth.generate(3, 3000, START, END)
    acled_text, ucdp_text = io.StringIO(), io.StringIO()
    synth.write_acled_csv(events, acled_text)
    synth.write_ucdp_csv(synth.ucdp_events(events, 3), ucdp_text)
    cells = [
        cell
        for written in (acled_text, ucdp_text)
        for row in csv.reader(io.StringIO(written.getvalue()))
        for cell in row
    ]
    assert not [cell for cell in cells if cell.startswith("'")]
    assert any(cell.startswith("-") for cell in cells)  # negative longitudes, kept as numbers
