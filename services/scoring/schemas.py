"""Request and response bodies of the scoring API (GeoJSON in and out)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import iso3166
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, ValidationError

from services.core.api import deployment_bound
from services.core.auth import PLATFORM_ROLES, TENANT_ROLES, Role
from services.core.ids import RowId
from services.core.problems import MAX_FIELD_ERRORS, omitted_errors
from services.scoring.taxonomy import (
    Band,
    Category,
    Component,
    Lifecycle,
    LocationPrecision,
    Mode,
    Sector,
    TargetKind,
    TargetType,
    TimePrecision,
)

MAX_CORRIDOR_POINTS = 1000

# Numbers and flags of request bodies are strict: FastAPI validates the decoded JSON in
# Python mode, where lax pydantic would read "12.5" or true as a number and 0 as a flag. Strict
# floats still take JSON integers.
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False, strict=True)]
Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False, strict=True)]
Position = tuple[Longitude, Latitude]
# ISO 3166-1 alpha-3 as the iso3166 package lists them: the 249 assigned codes, and Kosovo's
# user-assigned XKX, which ACLED and UN bodies use.
COUNTRY_CODES = frozenset(iso3166.countries_by_alpha3)


def is_country_code(code: str) -> bool:
    """Whether `code` is an ISO 3166-1 alpha-3 country code."""
    return code in COUNTRY_CODES


def _country_code(value: str) -> str:
    if not is_country_code(value):
        raise ValueError(f"not an ISO 3166-1 alpha-3 country code: {value[:10]!r}")
    return value


CountryCode = Annotated[
    str,
    Field(
        description="ISO 3166-1 alpha-3, e.g. MLI, BFA, NER",
        json_schema_extra={"enum": sorted(COUNTRY_CODES)},
    ),
    AfterValidator(_country_code),
]
# A code as stored: checked against the list when written, but read back as it was, so a row
# stored before the check (or under an older list) is still served.
StoredCountryCode = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3, e.g. MLI, BFA, NER")
]
Kilometres = Annotated[float, Field(allow_inf_nan=False, strict=True)]
ShortText = Annotated[str, Field(max_length=100)]
Tag = Annotated[str, Field(min_length=1, max_length=64)]
# Strict: a long string of digits must not slip past max_length by reading as a number.
SourceValue = Annotated[str, Field(max_length=2000)] | StrictInt | StrictFloat | StrictBool | None


def _whole_number(value: Any) -> Any:
    # JSON Schema counts 8.0 as the integer 8, and so does the API; no other float is one.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = BeforeValidator(_whole_number)
Count = Annotated[int, Field(ge=0, le=1_000_000, strict=True), WholeNumber]
EARLIEST_YEAR, LATEST_YEAR = 1900, 2200
_NUL = "text must not contain NUL characters"
# Validation context key: the input holds no NUL characters, so nested models need not look.
NUL_FREE = "nul_free"


_DATE_TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _date_time_text(value: Any) -> Any:
    # pydantic would also read a number (or a numeric string) as Unix time; the API publishes
    # RFC 3339 date-time strings only, so anything else is refused rather than guessed.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _DATE_TIME_TEXT.match(value):
        raise ValueError("expected an RFC 3339 date-time such as 2025-06-01T12:00:00Z")
    return value


DateTimeText = BeforeValidator(_date_time_text)


def _plausible_time(value: datetime) -> datetime:
    # The year as written, so that TIMESTAMP_PATTERN states the bound exactly: an offset may
    # carry the UTC time a few hours past either end.
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"time must lie between {EARLIEST_YEAR} and {LATEST_YEAR}")
    return value.astimezone(UTC)


# RFC 3339 with a time zone, years 1900 to 2200: what Timestamp accepts, as the schema says it
# (the code also reads a space for T, seconds left out and offsets without a colon).
TIMESTAMP_PATTERN = (
    r"^(19[0-9]{2}|2[01][0-9]{2}|2200)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
TIMESTAMP_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "pattern": TIMESTAMP_PATTERN,
    "description": f"RFC 3339 with a time zone, years {EARLIEST_YEAR} to {LATEST_YEAR}.",
}
Timestamp = Annotated[
    AwareDatetime,
    DateTimeText,
    AfterValidator(_plausible_time),
    WithJsonSchema(TIMESTAMP_SCHEMA, mode="validation"),
]


def given(*names: str) -> dict[str, Any]:
    """The JSON Schema of an object in which each of `names` is present and not null."""
    return {
        "required": list(names),
        "properties": {name: {"not": {"type": "null"}} for name in names},
    }


def _nul_paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Where NUL characters hide in a JSON-like value (keys and strings)."""
    if isinstance(value, str) and "\x00" in value:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                yield (*path, key)
            yield from _nul_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_paths(item, (*path, index))


def _refuse_many_unknown(model: type[BaseModel], data: Any) -> None:
    """More unknown fields than a problem document lists: refused here, listing the first few
    and counting the rest, before pydantic builds one error per field (a second or more for a
    body of 100,000, with the server's event loop held meanwhile)."""
    if not isinstance(data, dict) or len(data) <= len(model.model_fields) + MAX_FIELD_ERRORS:
        return
    unknown = [key for key in data if key not in model.model_fields]
    if len(unknown) <= MAX_FIELD_ERRORS:
        return
    errors = [
        InitErrorDetails(type="extra_forbidden", loc=(key,), input=data[key])
        for key in unknown[:MAX_FIELD_ERRORS]
    ]
    errors.append(omitted_errors(len(unknown) - MAX_FIELD_ERRORS))
    raise ValidationError.from_exception_data(model.__name__, errors)


NUL_FREE_TEXT = "^[^\\x00]*$"


def _say_nul_free(node: Any) -> None:
    """Give each free text of a schema (a string with no pattern, enum or const, and the names
    of a mapping) the pattern that refuses NUL characters; other models' schemas say their own."""
    if not isinstance(node, dict) or "$ref" in node:
        return
    if node.get("type") == "string" and not {"pattern", "enum", "const"} & node.keys():
        node["pattern"] = NUL_FREE_TEXT
    if isinstance(node.get("additionalProperties"), dict):
        node.setdefault("propertyNames", {}).setdefault("pattern", NUL_FREE_TEXT)
    for keyword in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for child in node.get(keyword, []):
            _say_nul_free(child)
    for keyword in ("items", "additionalProperties"):
        _say_nul_free(node.get(keyword))


class Strict(BaseModel):
    """Refuses unknown fields (a typo is a 422, not a silent default) and NUL characters."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        for field in handler.resolve_ref_schema(schema).get("properties", {}).values():
            _say_nul_free(field)
        return schema

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any, info: ValidationInfo) -> Any:
        _refuse_many_unknown(cls, data)
        if info.context and info.context.get(NUL_FREE):
            return data  # the caller removed NUL characters already (importers do)
        # Raised as a ValidationError so each error points at the offending field, not the model.
        errors = [
            InitErrorDetails(type=PydanticCustomError("nul_character", _NUL), loc=loc, input="")
            for loc in _nul_paths(data)
        ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


class PointGeometry(Strict):
    """A GeoJSON Point, [longitude, latitude]."""

    type: Literal["Point"]
    coordinates: Position


# In requests the schema lists distinct positions, which are always accepted. The code asks less
# (two positions that differ, as a loop repeats one), which JSON Schema has no word for.
_DISTINCT_POSITIONS = {
    "type": "array",
    "items": TypeAdapter(Position).json_schema(),
    "minItems": 2,
    "maxItems": MAX_CORRIDOR_POINTS,
    "uniqueItems": True,
    "description": (
        "2 to 1,000 [longitude, latitude] positions, at least two of them different. A position "
        "may repeat (a loop) but the schema lists distinct ones."
    ),
}


class LineStringGeometry(Strict):
    """A GeoJSON LineString of 2 to 1,000 positions, not all the same."""

    type: Literal["LineString"]
    coordinates: Annotated[
        list[Position],
        Field(min_length=2, max_length=MAX_CORRIDOR_POINTS),
        WithJsonSchema(_DISTINCT_POSITIONS, mode="validation"),
    ]

    @model_validator(mode="after")
    def _has_length(self) -> LineStringGeometry:
        if len(set(self.coordinates)) < 2:
            raise ValueError("a LineString needs at least two distinct positions")
        return self


class AreaScope(Strict):
    """Where an area-scoped incident (threat, statement) applies, as stored."""

    countries: Annotated[list[StoredCountryCode], Field(min_length=1, max_length=60)]
    admin1: Annotated[list[ShortText], Field(max_length=100)] = []


class AreaScopeIn(AreaScope):
    """Where an area-scoped incident (threat, statement) applies."""

    countries: Annotated[list[CountryCode], Field(min_length=1, max_length=60)]


class TargetProfile(Strict):
    """Whom a threat or attack targets."""

    foreign_owned_only: StrictBool = False
    sectors: Annotated[list[Sector], Field(max_length=len(Sector))] = []


class VictimProfile(Strict):
    """Who the victims were (kidnappings)."""

    expatriate: StrictBool = False
    nationality: Annotated[str | None, Field(max_length=64)] = None
    sector: Sector | None = None


class Fatalities(Strict):
    """Claimed and independent casualty figures; scoring prefers the independent best."""

    claimed: Count | None = None
    low: Count | None = None
    best: Count | None = None
    high: Count | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Fatalities:
        known = [v for v in (self.low, self.best, self.high) if v is not None]
        if known != sorted(known):
            raise ValueError("independent fatalities must satisfy low <= best <= high")
        return self


class IncidentIn(Strict):
    """An incident report; (source, source_id) identifies it, so resending updates it.

    It is located by a Point or by an area scope (or both); `reported_at` is not before
    `occurred_at`, and neither lies in the future (beyond the allowed clock skew).
    """

    model_config = ConfigDict(json_schema_extra={"anyOf": [given("location"), given("scope")]})

    source: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    source_id: Annotated[str, Field(min_length=1, max_length=128)]
    category: Category
    occurred_at: Timestamp
    occurred_precision: TimePrecision = TimePrecision.DAY
    reported_at: Timestamp | None = Field(
        None, description="When the system could first know it; defaults to the time received."
    )
    reported_at_estimated: StrictBool = False
    location: PointGeometry | None = None
    location_precision: LocationPrecision = LocationPrecision.EXACT
    scope: Annotated[AreaScopeIn | None, Field(validate_default=True)] = None
    country: CountryCode | None = None
    admin1: ShortText | None = None
    admin2: ShortText | None = None
    location_name: Annotated[str | None, Field(max_length=200)] = None
    actors: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=20)] = []
    target_type: TargetType | None = None
    target_profile: TargetProfile = TargetProfile()
    victim_profile: VictimProfile = VictimProfile()
    fatalities: Fatalities = Fatalities()
    source_reliability: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)] = 0.7
    lifecycle: Lifecycle = Lifecycle.CONFIRMED
    title: Annotated[str, Field(max_length=200)] = ""
    description: Annotated[str, Field(max_length=4000)] = ""
    tags: Annotated[list[Tag], Field(max_length=32)] = []
    source_updated_at: Timestamp | None = Field(
        None,
        description=(
            "When the source last edited this report (ACLED `timestamp`); a resend older than "
            "the stored one is ignored."
        ),
    )
    source_fields: Annotated[
        dict[Annotated[str, Field(max_length=64)], SourceValue], Field(max_length=64)
    ] = Field({}, description="The source's own codes and figures, kept as given (at most 64).")

    @field_validator("scope")
    @classmethod
    def _located(cls, scope: AreaScopeIn | None, info: ValidationInfo) -> AreaScopeIn | None:
        # Runs after `location` (declared earlier), so the error names the field that is missing.
        if scope is None and info.data.get("location") is None and "location" in info.data:
            raise ValueError("give a location (Point) or an area scope (countries)")
        return scope

    @field_validator("reported_at")
    @classmethod
    def _after_occurrence(cls, reported: datetime | None, info: ValidationInfo) -> datetime | None:
        occurred = info.data.get("occurred_at")
        if reported is not None and occurred is not None and reported < occurred:
            raise ValueError("reported_at is before occurred_at")
        return reported


class IncidentBatchIn(Strict):
    """Up to `max_batch_items` incidents; each is validated and stored on its own."""

    items: Annotated[
        list[dict[str, Any]],
        Field(
            min_length=1,
            max_length=10_000,
            description=(
                "Incident objects (see IncidentIn), each refused on its own (NUL characters "
                "included); more than max_batch_items is a 413."
            ),
            json_schema_extra=deployment_bound("max_batch_items", "maxItems"),
        ),
    ]

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any, info: ValidationInfo) -> Any:
        # Items are validated one by one, NUL characters and all: a bad one is a rejected
        # item, not a refused batch (its key is the only other field, and unknown ones are
        # refused).
        _refuse_many_unknown(cls, data)
        return data


class SourceReport(BaseModel):
    """One source's report of an event, with its own figures."""

    id: int
    source: str
    source_id: str
    category: Category
    occurred_at: datetime
    reported_at: datetime
    fatalities: Fatalities
    lifecycle: Lifecycle
    source_updated_at: datetime | None


class IncidentProperties(BaseModel):
    """An incident's attributes as served."""

    source: str
    source_id: str
    category: Category
    occurred_at: datetime
    occurred_precision: TimePrecision
    reported_at: datetime
    reported_at_estimated: bool
    location_precision: LocationPrecision
    scope: AreaScope | None
    country: str | None
    admin1: str | None
    admin2: str | None
    location_name: str | None
    actors: list[str]
    target_type: TargetType | None
    target_profile: TargetProfile
    victim_profile: VictimProfile
    fatalities: Fatalities
    source_reliability: float
    lifecycle: Lifecycle
    title: str
    description: str
    tags: list[str]
    revision: int
    source_updated_at: datetime | None = None
    source_fields: dict[str, Any] = {}
    merged_into: int | None = Field(
        None, description="The incident this report is merged into (same event, another source)."
    )
    sources: list[SourceReport] = Field(
        [], description="Every report of the event: this one and those merged into it."
    )
    created_at: datetime
    updated_at: datetime


class IncidentFeature(BaseModel):
    """An incident as a GeoJSON Feature (geometry null when area-scoped)."""

    type: Literal["Feature"] = "Feature"
    id: int
    geometry: PointGeometry | None
    properties: IncidentProperties


class IncidentCollection(BaseModel):
    """A page of incidents; pass `next_cursor` as `after` for the next page."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[IncidentFeature]
    next_cursor: int | None


class ItemResult(BaseModel):
    """What happened to one item of a batch."""

    index: int
    status: Literal["created", "updated", "unchanged", "rejected"]
    id: int | None = None
    problem: dict[str, Any] | None = None


class BatchResult(BaseModel):
    """Per-item outcomes of a batch, and their counts."""

    results: list[ItemResult]
    created: int
    updated: int
    unchanged: int
    rejected: int


class SiteProperties(Strict):
    """A site's attributes: radius of interest and profile."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    radius_km: Annotated[Kilometres, Field(gt=0, le=500)] = 25.0
    sector: Sector | None = None
    foreign_owned: StrictBool = False
    expat_staff: StrictBool = False
    country: CountryCode
    admin1: ShortText | None = None
    tags: Annotated[list[Tag], Field(max_length=32)] = []


class CorridorProperties(Strict):
    """A corridor's attributes: buffer, mode and the countries it crosses."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    buffer_km: Annotated[Kilometres, Field(gt=0, le=100)] = 10.0
    mode: Mode = Mode.ROAD
    countries: Annotated[list[CountryCode], Field(min_length=1, max_length=20)]
    sector: Sector | None = None
    foreign_owned: StrictBool = False
    expat_staff: StrictBool = False
    tags: Annotated[list[Tag], Field(max_length=32)] = []


class SiteIn(Strict):
    """A site as a GeoJSON Feature with a Point geometry."""

    type: Literal["Feature"]
    geometry: PointGeometry
    properties: SiteProperties
    id: Annotated[StrictInt | StrictStr | None, WholeNumber] = Field(
        None, description="Ignored; the service assigns ids."
    )


class CorridorIn(Strict):
    """A corridor as a GeoJSON Feature with a LineString geometry."""

    type: Literal["Feature"]
    geometry: LineStringGeometry
    properties: CorridorProperties
    id: Annotated[StrictInt | StrictStr | None, WholeNumber] = Field(
        None, description="Ignored; the service assigns ids."
    )


class ScoreSummary(BaseModel):
    """The latest stored score of a target."""

    score: float
    band: Band
    as_of: datetime
    model_version: int


class SiteOutProperties(SiteProperties):
    """A stored site's attributes."""

    country: StoredCountryCode
    created_at: datetime
    updated_at: datetime
    current_score: ScoreSummary | None


class CorridorOutProperties(CorridorProperties):
    """A stored corridor's attributes."""

    countries: list[StoredCountryCode]
    created_at: datetime
    updated_at: datetime
    current_score: ScoreSummary | None


class SiteFeature(BaseModel):
    """A stored site."""

    type: Literal["Feature"] = "Feature"
    id: int
    geometry: PointGeometry
    properties: SiteOutProperties


class CorridorFeature(BaseModel):
    """A stored corridor."""

    type: Literal["Feature"] = "Feature"
    id: int
    geometry: LineStringGeometry
    properties: CorridorOutProperties


class SiteCollection(BaseModel):
    """A page of sites."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[SiteFeature]
    next_cursor: int | None


class CorridorCollection(BaseModel):
    """A page of corridors."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[CorridorFeature]
    next_cursor: int | None


class ContributionOut(BaseModel):
    """One incident behind a score, its share and why."""

    incident_id: int
    source: str
    source_id: str
    title: str
    category: Category
    component: Component
    points: float
    share: float
    factors: dict[str, float | str | None]
    why: str


class HotspotProperties(BaseModel):
    """A corridor piece's own score."""

    index: int
    score: float
    band: Band
    incident_count: int


class HotspotFeature(BaseModel):
    """A corridor piece and its score, worst first."""

    type: Literal["Feature"] = "Feature"
    geometry: LineStringGeometry
    properties: HotspotProperties


class TargetRef(BaseModel):
    """What was scored."""

    kind: TargetKind
    id: int | None = Field(None, description="None for ad-hoc geometries.")
    name: str | None = None


class AdjustmentOut(BaseModel):
    """A firm-specific factor on the odds of the fitted probability."""

    kind: str = Field(
        description="expatriate_kidnapping, victim_sector, foreign_firm_targeted, "
        "mining_targeted, corridor_mode or threats"
    )
    odds_factor: float
    incident_ids: list[int]
    why: str


class ForecastOut(BaseModel):
    """The question the probability answers (a parameter of the model version)."""

    distance_km: float
    horizon_days: float


class ScoreOut(BaseModel):
    """A score, its band and components, and the incidents behind it."""

    target: TargetRef
    score: float = Field(
        description=(
            "The calibrated probability, in percent (0-100), of a violent incident within "
            "forecast.distance_km of the target in the next forecast.horizon_days."
        )
    )
    probability: float = Field(description="The same probability as a fraction (0-1).")
    generic_probability: float = Field(
        description="The fitted probability before the firm-specific adjustments."
    )
    band: Band
    model_version: int
    as_of: datetime
    forecast: ForecastOut
    components: dict[Component, float] = Field(
        description="Points per component; they sum to score."
    )
    adjustments: list[AdjustmentOut] = Field(
        description="Factors on the odds from the target's profile, corridor mode and threats."
    )
    escalation: dict[str, float]
    incident_count: int
    contributions: list[ContributionOut]
    hotspots: list[HotspotFeature]


class ScoreHistoryPoint(BaseModel):
    """A target's score after one recorded change."""

    change_id: int
    as_of: datetime
    score: float
    band: Band
    previous_score: float | None
    previous_band: Band | None
    model_version: int
    cause: str


class ScoreHistory(BaseModel):
    """A target's score over time, oldest first."""

    target: TargetRef
    points: list[ScoreHistoryPoint]
    next_cursor: int | None


class AdhocProperties(Strict):
    """Profile of an ad-hoc point or line, and the time to score it as of."""

    radius_km: Annotated[Kilometres, Field(ge=0, le=500)] = 25.0
    mode: Mode = Mode.ROAD
    sector: Sector | None = None
    foreign_owned: StrictBool = False
    expat_staff: StrictBool = False
    countries: Annotated[list[CountryCode], Field(max_length=20)] = []
    as_of: Timestamp | None = Field(None, description="Defaults to now.")


class AdhocIn(Strict):
    """An ad-hoc GeoJSON Feature (Point or LineString) to score without registering it."""

    type: Literal["Feature"]
    geometry: Annotated[PointGeometry | LineStringGeometry, Field(discriminator="type")]
    properties: AdhocProperties = AdhocProperties()


class BacktestPoint(Strict):
    """A bare point for a backtest."""

    lon: Longitude
    lat: Latitude


class BacktestTarget(Strict):
    """A registered target for a backtest."""

    kind: TargetKind
    id: RowId


class BacktestIn(Strict):
    """Score every point (or target) at every time; points have no profile."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"minItems": 1}}}
                for name in ("points", "targets")
            ]
        }
    )

    points: Annotated[list[BacktestPoint], Field(max_length=100_000)] = []
    targets: Annotated[list[BacktestTarget], Field(max_length=1000)] = []
    times: Annotated[list[Timestamp], Field(min_length=1, max_length=10_000)]
    radius_km: Annotated[Kilometres, Field(ge=0, le=500)] = Field(
        25.0,
        description=(
            "Accepted for compatibility; it does not change a score, which is the probability "
            "of violence within the model's forecast distance of the point itself."
        ),
    )

    @model_validator(mode="after")
    def _something(self) -> BacktestIn:
        if not self.points and not self.targets:
            raise ValueError("give points or targets")
        return self


class BacktestOut(BaseModel):
    """scores[i][j] is the score of item i (points first, then targets) at times[j]."""

    model_version: int
    times: list[datetime]
    scores: list[list[float]]
    bands: list[list[Band]]


class ScoreChangeOut(BaseModel):
    """One change-feed entry."""

    id: int
    target: TargetRef
    model_version: int
    as_of: datetime
    previous_score: float | None
    score: float
    previous_band: Band | None
    band: Band
    components: dict[str, float]
    top_incidents: list[dict[str, Any]]
    cause: str
    created_at: datetime


class ScoreChangePage(BaseModel):
    """A page of the change feed; poll again with `after=next_cursor`."""

    changes: list[ScoreChangeOut]
    next_cursor: int


class TenantIn(Strict):
    """A new tenant."""

    name: Annotated[str, Field(min_length=1, max_length=200)]


class TenantOut(BaseModel):
    """A tenant."""

    id: int
    name: str
    created_at: datetime


def _roles(allowed: frozenset[Role]) -> dict[str, Any]:
    return {"properties": {"roles": {"items": {"enum": sorted(r.value for r in allowed)}}}}


class ApiKeyIn(Strict):
    """A new key: for a tenant (scores, targets) or for the platform (tenant_id null)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"allOf": [given("tenant_id"), _roles(TENANT_ROLES)]},
                {"allOf": [{"not": given("tenant_id")}, _roles(PLATFORM_ROLES)]},
            ]
        }
    )

    name: Annotated[str, Field(min_length=1, max_length=200)]
    tenant_id: RowId | None = None
    roles: Annotated[list[Role], Field(min_length=1, max_length=len(Role))]

    @model_validator(mode="after")
    def _roles_fit_the_owner(self) -> ApiKeyIn:
        # A tenant key must never reach platform-wide powers (other tenants, shared incidents).
        allowed = TENANT_ROLES if self.tenant_id is not None else PLATFORM_ROLES
        wrong = sorted(set(self.roles) - allowed)
        if wrong:
            owner = "a tenant key" if self.tenant_id is not None else "a platform key"
            raise ValueError(f"{owner} cannot hold {', '.join(wrong)}")
        return self


class ApiKeyOut(BaseModel):
    """A key's metadata (never the key itself)."""

    id: int
    name: str
    tenant_id: int | None
    prefix: str
    roles: list[Role]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    """A new key; `key` is shown this once and stored only as a hash."""

    key: str


class ModelVersionIn(Strict):
    """New model parameters (a full parameter document, as GET /v1/model returns)."""

    params: dict[str, Any] = Field(
        description=(
            "Every parameter of the model, each checked against the model's rules "
            "(docs/scoring.md): start from what GET /v1/model returns."
        )
    )
    note: Annotated[str, Field(min_length=1, max_length=500)]


class ModelVersionOut(BaseModel):
    """A model version."""

    version: int
    active: bool
    note: str
    created_by: str
    created_at: datetime
    params: dict[str, Any]
    report: dict[str, Any] | None = Field(
        None, description="The fit report of a fitted version (docs/scoring.md)."
    )
    carried_over: dict[str, list[dict[str, Any]]] | None = Field(
        None,
        description=(
            "On publication: the stored thresholds moved to keep their meaning (by band), "
            "per service, with each subscription and rule before and after."
        ),
    )


class ModelFitIn(Strict):
    """A fit of the model on the history the service holds (docs/scoring.md)."""

    dry_run: bool = Field(False, description="Report only; never publish.")
    force: bool = Field(False, description="Publish even if it does not beat the version in force.")
    origins: int = Field(40, ge=4, le=400, description="Forecast origins in time.")
    folds: int = Field(4, ge=1, le=12, description="Rolling-origin validation splits.")
    max_places: int = Field(
        2000, ge=50, le=20_000, description="Grid cells plus target points sampled."
    )


class ModelFitOut(BaseModel):
    """A model fit job and, once done, its report and outcome."""

    id: int
    status: Literal["pending", "running", "done", "failed"]
    dry_run: bool
    options: dict[str, Any]
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    model_version: int | None
    report: dict[str, Any] | None


class AuditEntryOut(BaseModel):
    """One audit log entry."""

    id: int
    tenant_id: int | None
    api_key_id: int | None
    action: str
    resource: str
    before: Any | None
    after: Any | None
    at: datetime


class AuditPage(BaseModel):
    """A page of the audit log."""

    entries: list[AuditEntryOut]
    next_cursor: int | None


class DeadLetterOut(BaseModel):
    """An item a pipeline could not process, set aside so the rest went on."""

    id: int
    pipeline: str = Field(
        description="Which pipeline set it aside: alerts.score_change, alerts.incident_change, "
        "alerts.seed, alerts.timers, alerts.digests, alerts.dispatch, scoring.incident_feed, "
        "scoring.rescore."
    )
    item: str = Field(description="What it was, e.g. `score_change 812, rule 7, target 3`.")
    tenant_id: int | None
    error_class: str
    error: str
    trace: str = Field(description="The stack trace, for whoever fixes the cause.")
    occurrences: int = Field(description="Times the item failed while this letter was open.")
    created_at: datetime
    last_at: datetime
    resolved_at: datetime | None
    resolved_by: int | None = Field(description="The API key that resolved it.")
    note: str | None


class DeadLetterPage(BaseModel):
    """A page of dead letters; pass `next_cursor` as `after` for the next page."""

    dead_letters: list[DeadLetterOut]
    next_cursor: int | None


class DeadLetterResolveIn(Strict):
    """Marks a dead letter dealt with, saying how."""

    note: str | None = Field(None, max_length=500, description="What was done about it.")
