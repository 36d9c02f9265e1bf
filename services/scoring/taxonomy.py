"""The closed vocabularies of incidents and targets: categories, precisions, lifecycles, modes."""

from enum import StrEnum


class Category(StrEnum):
    """What happened; each category has its own weight, decay and reach in the model."""

    ARMED_ASSAULT = "armed_assault"
    ARMED_CLASH = "armed_clash"
    IED = "ied"
    INDIRECT_FIRE = "indirect_fire"
    VBIED = "vbied"
    SUICIDE_BOMBING = "suicide_bombing"
    AIR_DRONE_STRIKE = "air_drone_strike"
    ANTI_AIRCRAFT_FIRE = "anti_aircraft_fire"
    KIDNAPPING = "kidnapping"
    EXPLICIT_THREAT = "explicit_threat"
    LOOTING = "looting"
    TERRITORY_SEIZURE = "territory_seizure"
    BASE_ESTABLISHED = "base_established"
    POLITICAL_STATEMENT = "political_statement"
    OTHER_VIOLENCE = "other_violence"


class Component(StrEnum):
    """The parts a score is split into."""

    VIOLENCE = "violence"
    THREATS = "threats"
    KIDNAPPING = "kidnapping"
    ESCALATION = "escalation"
    # The probability of a place with no incidents at all (the calibration's floor).
    BACKGROUND = "background"


class TimePrecision(StrEnum):
    """How exactly the occurrence time is known (ACLED time_precision 1, 2, 3)."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class LocationPrecision(StrEnum):
    """How exactly the location is known (ACLED geo_precision 1, 2, 3)."""

    EXACT = "exact"
    NEAR = "near"
    REGION = "region"


class Lifecycle(StrEnum):
    """Where a report stands; retracted incidents no longer count."""

    DEVELOPING = "developing"
    CONFIRMED = "confirmed"
    UPDATED = "updated"
    RETRACTED = "retracted"


class TargetType(StrEnum):
    """Who or what the incident was aimed at."""

    MILITARY = "military"
    CIVILIANS = "civilians"
    FOREIGN_FIRM = "foreign_firm"
    MINING = "mining"
    LOGISTICS = "logistics"
    AVIATION = "aviation"
    HUMANITARIAN = "humanitarian"
    GOVERNMENT = "government"
    OTHER = "other"


class Sector(StrEnum):
    """Industry sectors of sites, of threatened firms and of kidnap victims."""

    MINING = "mining"
    LOGISTICS = "logistics"
    ENERGY = "energy"
    CONSTRUCTION = "construction"
    AGRICULTURE = "agriculture"
    HUMANITARIAN = "humanitarian"
    TELECOM = "telecom"
    OTHER = "other"


class Mode(StrEnum):
    """How a corridor is travelled."""

    ROAD = "road"
    AIR = "air"
    RIVER = "river"


class TargetKind(StrEnum):
    """What is scored: registered sites and corridors, or ad-hoc points and lines."""

    SITE = "site"
    CORRIDOR = "corridor"


class Band(StrEnum):
    """Five bands over the 0-100 score."""

    LOW = "low"
    MODERATE = "moderate"
    ELEVATED = "elevated"
    HIGH = "high"
    CRITICAL = "critical"


# Bands in order, lowest first: "is this band above that one" everywhere reads this one table.
BAND_RANK: dict[Band, int] = {band: rank for rank, band in enumerate(Band)}
