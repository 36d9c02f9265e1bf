"""Request and response bodies of the alerts API, and the rule bodies stored with each rule."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from services.alerts import rules
from services.core.duration import BodyDuration
from services.core.ids import RowId
from services.core.problems import Problem
from services.scoring import schemas as scoring_schemas
from services.scoring.taxonomy import BAND_RANK, Band, Category


def _digits(low: str, high: str) -> str:
    """A regex for the numbers from `low` to `high`, both written with as many digits."""
    width = len(low)
    if low == high:
        return low
    if low == "0" * width and high == "9" * width:
        return "[0-9]" if width == 1 else f"[0-9]{{{width}}}"
    if width == 1:
        return f"[{low}-{high}]"
    rest = width - 1
    if low[0] == high[0]:
        return f"{low[0]}(?:{_digits(low[1:], high[1:])})"
    parts, first, last, tail = [], int(low[0]), int(high[0]), None
    if low[1:] != "0" * rest:
        parts.append(f"{low[0]}(?:{_digits(low[1:], '9' * rest)})")
        first += 1
    if high[1:] != "9" * rest:
        tail = f"{high[0]}(?:{_digits('0' * rest, high[1:])})"
        last -= 1
    if first <= last:
        lead = str(first) if first == last else f"[{first}-{last}]"
        parts.append(f"{lead}[0-9]{{{rest}}}")
    return "|".join([*parts, *([tail] if tail else [])])


def _whole_numbers(low: int, high: int) -> str:
    """A regex for the whole numbers from `low` to `high` (leading zeros allowed)."""
    parts = []
    for width in range(len(str(low)), len(str(high)) + 1):
        first, last = max(low, 10 ** (width - 1) if width > 1 else 0), min(high, 10**width - 1)
        if first <= last:
            parts.append(_digits(str(first), str(last)))
    return f"0*(?:{'|'.join(parts)})"


_UNITS = (("P", "D", 86400), ("PT", "H", 3600), ("PT", "M", 60), ("PT", "S", 1))


def duration_schema(low: timedelta, high: timedelta, *, above: bool = False) -> dict[str, Any]:
    """The request schema of a duration from `low` (exclusive when `above`) to `high`.

    The schema states ISO 8601 durations of one unit (P3D, PT12H, PT30M, PT90S) and numbers of
    seconds; the code also reads any other ISO 8601 duration within the same bounds (P1DT6H).
    """
    least, most = low.total_seconds(), high.total_seconds()
    forms = []
    for prefix, unit, seconds in _UNITS:
        first = math.floor(least / seconds) + 1 if above else math.ceil(least / seconds)
        last = math.floor(most / seconds)
        if first <= last:
            forms.append(f"{prefix}{_whole_numbers(first, last)}{unit}")
    return {
        "anyOf": [
            {"type": "string", "pattern": f"^(?:{'|'.join(forms)})$"},
            # A microsecond is the least a duration can be: less would read as no time at all.
            {"type": "number", "minimum": least + 1e-6 if above else least, "maximum": most},
        ]
    }


MAX_DURATION = timedelta(days=30)
Duration = Annotated[
    BodyDuration,
    Field(ge=timedelta(0), le=MAX_DURATION, description="ISO 8601 duration or seconds."),
    WithJsonSchema(duration_schema(timedelta(0), MAX_DURATION), mode="validation"),
]


def _level(value: object) -> object:
    """A score (0-100) or a band name, checked here so a bad value is one error on its field."""
    if isinstance(value, bool):
        raise ValueError("must be a score from 0 to 100 or a band name")
    if isinstance(value, int | float):
        if not 0 <= value <= 100:
            raise ValueError("a score must be from 0 to 100")
        return float(value)
    if isinstance(value, str) and value in Band.__members__.values():
        return Band(value)
    bands = ", ".join(b.value for b in Band)
    raise ValueError(f"must be a score from 0 to 100 or one of the bands: {bands}")


_SCORE_LEVEL = {"type": "number", "minimum": 0, "maximum": 100}
_BAND_LEVEL = {"enum": [b.value for b in Band]}
Level = Annotated[
    float | Band,
    BeforeValidator(_level),
    WithJsonSchema({"anyOf": [_SCORE_LEVEL, _BAND_LEVEL]}, mode="validation"),
]


class Strict(BaseModel):
    """A body that refuses unknown fields, so a misspelt option is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid")


class Metric(StrEnum):
    """What a threshold rule watches: the 0-100 score or the band."""

    SCORE = "score"
    BAND = "band"


# The least time between two repeats of a firing alert; and the validation context under which a
# stored rule is read (stored rules predating the floor stay readable).
MIN_REPEAT = timedelta(minutes=15)
STORED = "stored"
# New rules repeat no more often than MIN_REPEAT (stored ones may), and flap over some time.
RepeatEvery = Annotated[
    Duration, WithJsonSchema(duration_schema(MIN_REPEAT, MAX_DURATION), mode="validation")
]
FlapWindow = Annotated[
    Duration,
    WithJsonSchema(duration_schema(timedelta(0), MAX_DURATION, above=True), mode="validation"),
]


def _minutes(span: timedelta) -> int:
    return int(span.total_seconds() // 60)


def _kind_required(schema: dict[str, Any]) -> None:
    # A rule body names its kind: it is the discriminator the API reads it by.
    schema["required"] = ["kind", *schema.get("required", [])]


def _threshold_schema(schema: dict[str, Any]) -> None:
    _kind_required(schema)
    # Levels are bands when the metric is, scores otherwise. That clear_at is not above
    # raise_at, JSON Schema cannot say.
    levels = ("raise_at", "clear_at")
    schema["if"] = {"properties": {"metric": {"const": Metric.BAND.value}}, "required": ["metric"]}
    schema["then"] = {
        "properties": {name: {"anyOf": [_BAND_LEVEL, {"type": "null"}]} for name in levels}
    }
    schema["else"] = {
        "properties": {name: {"anyOf": [_SCORE_LEVEL, {"type": "null"}]} for name in levels}
    }


class ThresholdRuleIn(Strict):
    """Raise when the score (or band) reaches `raise_at`, clear when it falls below `clear_at`."""

    model_config = ConfigDict(json_schema_extra=_threshold_schema)

    kind: Literal["threshold"] = "threshold"
    metric: Metric = Metric.SCORE
    raise_at: Level = Field(description="Score (0-100) or band at which the alert raises.")
    clear_at: Level | None = Field(
        None,
        description=(
            "Score or band below which it clears (hysteresis); defaults to 10 points below "
            "raise_at for scores, to raise_at for bands."
        ),
    )
    pending: Duration = Field(timedelta(0), description="How long the condition must hold.")
    keep_firing: Duration = Field(
        timedelta(0), description="How long it stays firing after the condition clears."
    )
    cooldown: Duration = Field(
        timedelta(minutes=30), description="Least time between two firings (a band rise bypasses)."
    )
    repeat_every: RepeatEvery | None = Field(
        None,
        description=(
            "Re-notify while firing, this often: at least every 15 minutes (PT15M), so "
            "repeats stay humane."
        ),
    )
    flap_changes: Annotated[int, scoring_schemas.WholeNumber] = Field(
        2, ge=1, le=100, strict=True, description="Changes tolerated per flap_window."
    )
    flap_window: FlapWindow = Field(timedelta(minutes=30))

    @field_validator("repeat_every")
    @classmethod
    def _repeat_floor(cls, value: timedelta | None, info: ValidationInfo) -> timedelta | None:
        # New input only: a rule stored before the floor is read as it is, and evaluated at
        # the floor (threshold()).
        stored = bool(info.context and info.context.get(STORED))
        if value is not None and timedelta(0) < value < MIN_REPEAT and not stored:
            raise ValueError(f"repeat_every must be at least {_minutes(MIN_REPEAT)} minutes")
        return value

    @model_validator(mode="after")
    def _levels_match_metric(self) -> ThresholdRuleIn:
        if self.metric is Metric.SCORE:
            if isinstance(self.raise_at, Band):
                raise ValueError("raise_at must be a number (0-100) when metric is score")
            if self.clear_at is None:
                self.clear_at = max(0.0, self.raise_at - 10.0)
            if isinstance(self.clear_at, Band):
                raise ValueError("clear_at must be a number (0-100) when metric is score")
            if self.clear_at > self.raise_at:
                raise ValueError("clear_at must not be above raise_at")
        else:
            if not isinstance(self.raise_at, Band):
                raise ValueError("raise_at must be a band name when metric is band")
            if self.clear_at is None:
                self.clear_at = self.raise_at
            if not isinstance(self.clear_at, Band):
                raise ValueError("clear_at must be a band name when metric is band")
            if BAND_RANK[self.clear_at] > BAND_RANK[self.raise_at]:
                raise ValueError("clear_at must not be a higher band than raise_at")
        if self.repeat_every is not None and self.repeat_every <= timedelta(0):
            raise ValueError("repeat_every must be positive")
        if self.flap_window <= timedelta(0):
            raise ValueError("flap_window must be positive")
        return self

    def threshold(self) -> rules.ThresholdRule:
        """The pure rule evaluated by `rules.evaluate` (bands become ranks 0-4)."""
        names: dict[str, str] = {}
        if isinstance(self.raise_at, Band):
            assert isinstance(self.clear_at, Band)
            raise_at, clear_at = float(BAND_RANK[self.raise_at]), float(BAND_RANK[self.clear_at])
            names = {
                "measure": "band",
                "raise_name": self.raise_at.value,
                "clear_name": self.clear_at.value,
            }
        else:
            assert isinstance(self.clear_at, float | int)
            raise_at, clear_at = float(self.raise_at), float(self.clear_at)
        return rules.ThresholdRule(
            raise_at=raise_at,
            clear_at=clear_at,
            pending=self.pending,
            keep_firing=self.keep_firing,
            repeat_every=None if self.repeat_every is None else max(self.repeat_every, MIN_REPEAT),
            cooldown=self.cooldown,
            flap_changes=self.flap_changes,
            flap_window=self.flap_window,
            **names,
        )

    def measure(self, score: float, band: Band) -> float:
        """The value the rule compares: the score, or the band's rank."""
        return float(BAND_RANK[band]) if self.metric is Metric.BAND else score


class Trigger(StrEnum):
    """Events that alert at once, whatever the score."""

    KIDNAPPING_NEARBY = "kidnapping_nearby"
    THREAT_MATCHING = "threat_matching"
    INCIDENT_NEARBY = "incident_nearby"


def _event_schema(schema: dict[str, Any]) -> None:
    _kind_required(schema)
    # Categories are what incident_nearby matches, and only it.
    nearby = {"properties": {"trigger": {"const": Trigger.INCIDENT_NEARBY.value}}}
    schema["if"] = nearby
    schema["then"] = {"required": ["categories"], "properties": {"categories": {"minItems": 1}}}
    schema["else"] = {"properties": {"categories": {"maxItems": 0}}}


class EventRuleIn(Strict):
    """Alert at once on a matching incident near (or explicitly threatening) the target."""

    model_config = ConfigDict(json_schema_extra=_event_schema)

    kind: Literal["event"] = "event"
    trigger: Trigger
    radius_km: float = Field(
        50.0,
        gt=0,
        le=500,
        strict=True,
        description="Distance from the site or corridor (nearby triggers).",
    )
    categories: list[Category] = Field(
        default_factory=list,
        max_length=len(Category),
        description="Categories that trigger (incident_nearby); required there.",
    )
    severity: Band = Field(Band.CRITICAL, description="Severity, for digest routing.")
    max_age: Duration = Field(
        timedelta(days=3),
        description="Incidents that occurred longer ago than this (a backfill) do not trigger.",
    )

    @model_validator(mode="after")
    def _categories_for_incident_nearby(self) -> EventRuleIn:
        if self.trigger is Trigger.INCIDENT_NEARBY and not self.categories:
            raise ValueError("categories is required for incident_nearby")
        if self.trigger is not Trigger.INCIDENT_NEARBY and self.categories:
            raise ValueError(f"categories applies to incident_nearby only, not {self.trigger}")
        self.categories = sorted(set(self.categories))
        return self


RuleIn = Annotated[ThresholdRuleIn | EventRuleIn, Field(discriminator="kind")]


def parse_rule(kind: str, params: dict[str, object]) -> ThresholdRuleIn | EventRuleIn:
    """The validated rule body stored with a rule row."""
    if kind == "threshold":
        return ThresholdRuleIn.model_validate(params, context={STORED: True})
    return EventRuleIn.model_validate(params, context={STORED: True})


# --------------------------------------------------------------------------------------------
# API bodies: endpoints, subscriptions, alerts and deliveries

MAX_URL_LENGTH = 2048
MAX_ADDRESS_LENGTH = 254
MAX_GRACE = timedelta(days=7)
MAX_SNOOZE = timedelta(days=30)
MAX_ENDPOINTS_PER_SUBSCRIPTION = 20
MAX_RULES_PER_SUBSCRIPTION = 20
MAX_ALERT_EVENTS = 100

Name = Annotated[str, Field(min_length=1, max_length=200)]
Timestamp = scoring_schemas.Timestamp


class ApiIn(scoring_schemas.Strict):
    """A request body of the alerts API: unknown fields and NUL characters are refused."""


FieldErrors = list[tuple[tuple[str | int, ...], str]]


def invalid(errors: FieldErrors, title: str) -> ValidationError:
    """A validation error naming each field at fault, for model validators to raise."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("invalid", "{reason}", {"reason": reason}),
                loc=loc,
                input=None,
            )
            for loc, reason in errors
        ],
    )


def invalid_body(errors: FieldErrors, *, status: int = 422, slug: str = "validation") -> Problem:
    """The problem naming each body field at fault (checks that need the database): 422, or
    409 where the request is valid but conflicts with what is stored."""
    located = [
        (".".join(str(p) for p in loc), "".join(f"/{p}" for p in loc), reason)
        for loc, reason in errors
    ]
    return Problem(
        status,
        slug,
        f"invalid value in: {', '.join(sorted({field for field, _, _ in located}))}",
        errors=[
            {"in": "body", "pointer": pointer, "field": field, "reason": reason}
            for field, pointer, reason in located
        ],
    )


def _web_url(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("URL must be http(s)")
    if not parts.hostname:
        raise ValueError("URL needs a host")
    return value


# The URLs the schema states: an ASCII host name or address and an optional port. The code also
# takes user info and bracketed IPv6 hosts; the SSRF guard then decides (422 naming url).
_URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
    r"([/?#][!-~]*)?$"
)
WebhookUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description=(
            "https:// URL of the receiver; its host must resolve to public addresses only "
            "(the SSRF guard refuses others with a 422 naming url)."
        ),
        json_schema_extra={"format": "uri", "pattern": _URL_PATTERN},
    ),
    AfterValidator(_web_url),
]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# ASCII addresses only (a dot-atom local part, a host name; no quoted local parts, no IP
# literals): what every relay accepts. The schema states this very pattern, and no JSON Schema
# `format`, whose checkers differ (IDNA rules on `--`, say); the address's length is capped.
_EMAIL_PATTERN = (
    rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?$"
)
_EMAIL = re.compile(_EMAIL_PATTERN)


def _email_address(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("not an email address: a dot-atom local part, @, and a host name")
    return value


EmailAddress = Annotated[
    str,
    Field(
        min_length=3,
        max_length=MAX_ADDRESS_LENGTH,
        description="An ASCII email address.",
        json_schema_extra={"pattern": _EMAIL_PATTERN},
    ),
    AfterValidator(_email_address),
]


class EndpointKind(StrEnum):
    """How an endpoint is reached."""

    WEBHOOK = "webhook"
    EMAIL = "email"


# Deliveries in flight to one endpoint: a receiver that takes more is better served by more
# alerts workers than by one endpoint holding a whole worker's senders.
MAX_IN_FLIGHT = 32
MaxInFlight = Annotated[
    int, Field(ge=1, le=MAX_IN_FLIGHT, strict=True), scoring_schemas.WholeNumber
]


def _kind_fields(kind: EndpointKind, wanted: str, other: str) -> dict[str, Any]:
    return {
        "allOf": [
            {"properties": {"kind": {"const": kind.value}}},
            scoring_schemas.given(wanted),
            {"not": scoring_schemas.given(other)},
        ]
    }


class EndpointIn(ApiIn):
    """A new endpoint: `{kind: webhook, name, url}` or `{kind: email, name, address}`."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                _kind_fields(EndpointKind.WEBHOOK, "url", "address"),
                _kind_fields(EndpointKind.EMAIL, "address", "url"),
            ]
        }
    )

    kind: EndpointKind
    name: Name
    url: WebhookUrl | None = Field(None, description="Webhooks only.")
    address: EmailAddress | None = Field(None, description="Email only.")
    max_in_flight: MaxInFlight | None = Field(
        None,
        description=(
            "Deliveries sent to it at once, across every worker: what the receiver tolerates. "
            "Default (null): RISKALERT_ALERTS_ENDPOINT_SLOTS."
        ),
    )

    @model_validator(mode="after")
    def _fields_match_kind(self) -> EndpointIn:
        errors = _kind_errors(self.kind, url=self.url, address=self.address, new=True)
        if errors:
            raise invalid(errors, type(self).__name__)
        return self


def _kind_errors(
    kind: EndpointKind, *, url: str | None, address: str | None, new: bool
) -> FieldErrors:
    """Where `url` and `address` do not fit an endpoint of `kind`."""
    wanted, other = ("url", "address") if kind is EndpointKind.WEBHOOK else ("address", "url")
    given = {"url": url, "address": address}
    errors: FieldErrors = []
    if new and given[wanted] is None:
        errors.append(((wanted,), f"required for {kind.value} endpoints"))
    if given[other] is not None:
        errors.append(((other,), f"not applicable to {kind.value} endpoints"))
    return errors


def _endpoint_patch_schema(schema: dict[str, Any]) -> None:
    not_nullable("name", "url", "address", "enabled")(schema)
    # An endpoint has a url (webhook) or an address (email), never both.
    schema["not"] = scoring_schemas.given("url", "address")


class EndpointPatch(ApiIn):
    """Changes to an endpoint; absent fields stay as they are.

    `url` applies to webhooks and `address` to email endpoints: the other is refused (422).
    """

    model_config = ConfigDict(json_schema_extra=_endpoint_patch_schema)

    name: Name | None = None
    url: WebhookUrl | None = Field(None, description="Webhooks only; checked again.")
    address: EmailAddress | None = Field(None, description="Email only.")
    enabled: StrictBool | None = Field(
        None, description="true re-enables a disabled endpoint and forgets its failures."
    )
    max_in_flight: MaxInFlight | None = Field(
        None, description="Deliveries sent to it at once; null returns to the default."
    )

    @model_validator(mode="after")
    def _no_nulls(self) -> EndpointPatch:
        errors = _null_errors(self, set(type(self).model_fields) - {"max_in_flight"})
        if errors:
            raise invalid(errors, type(self).__name__)
        return self

    def kind_errors(self, kind: EndpointKind) -> FieldErrors:
        """Where this patch does not fit an endpoint of `kind`."""
        return _kind_errors(kind, url=self.url, address=self.address, new=False)


def not_nullable(*names: str) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` saying that the patch fields `names` may be left out, never null."""

    def drop_null(schema: dict[str, Any]) -> None:
        for name in names:
            field = schema["properties"][name]
            kept = [s for s in field.pop("anyOf") if s != {"type": "null"}]
            for key, value in (kept[0] if len(kept) == 1 else {"anyOf": kept}).items():
                field.setdefault(key, value)

    return drop_null


def _null_errors(model: BaseModel, not_nullable: set[str]) -> FieldErrors:
    return [
        ((name,), "must not be null")
        for name in sorted(model.model_fields_set & not_nullable)
        if getattr(model, name) is None
    ]


class RotateSecretIn(ApiIn):
    """How long the current secret keeps signing after the rotation."""

    grace: (
        Annotated[
            BodyDuration,
            Field(ge=timedelta(0), le=MAX_GRACE),
            WithJsonSchema(duration_schema(timedelta(0), MAX_GRACE), mode="validation"),
        ]
        | None
    ) = Field(
        None, description="ISO 8601 duration or seconds, at most 7 days; default from settings."
    )


class EndpointOut(BaseModel):
    """An endpoint, without its secrets."""

    id: int
    kind: EndpointKind
    name: str
    url: str | None
    address: str | None
    enabled: bool
    max_in_flight: int | None = Field(
        None, description="Deliveries sent to it at once; null: the service's default."
    )
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_success_at: datetime | None
    secrets_in_grace: int | None = Field(
        None, description="Webhooks: rotated-out secrets still signing."
    )
    secret_rotated_at: datetime | None = Field(
        None, description="Webhooks: when the current secret replaced another."
    )
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    """An endpoint with its new signing secret, shown in this response only."""

    secret: str | None = Field(
        description="Webhooks: the `whsec_...` signing secret, never shown again (null in "
        "the replay of a creation retried with its Idempotency-Key)."
    )


class EndpointPage(BaseModel):
    """A page of endpoints; pass `next_cursor` as `after` for the next page."""

    endpoints: list[EndpointOut]
    next_cursor: int | None


class SubscriptionScope(StrEnum):
    """Which of the tenant's targets a subscription watches."""

    TARGET = "target"
    TAG = "tag"
    ALL = "all"


def scope_errors(scope: SubscriptionScope, target_id: int | None, tag: str | None) -> FieldErrors:
    """Where `target_id` and `tag` do not fit `scope`."""
    errors: FieldErrors = []
    for field, value, needed_by in (
        ("target_id", target_id, SubscriptionScope.TARGET),
        ("tag", tag, SubscriptionScope.TAG),
    ):
        if scope is needed_by and value is None:
            errors.append(((field,), f"required when scope is {needed_by.value}"))
        elif scope is not needed_by and value is not None:
            errors.append(((field,), f"only applies when scope is {needed_by.value}"))
    return errors


def duplicate_errors(ids: list[int], field: str) -> FieldErrors:
    """An error at each position repeating an earlier id."""
    return [((field, i), f"{v} is listed twice") for i, v in enumerate(ids) if v in ids[:i]]


EndpointIds = Annotated[
    list[RowId],
    Field(
        min_length=1,
        max_length=MAX_ENDPOINTS_PER_SUBSCRIPTION,
        description="Distinct ids of the tenant's endpoints.",
        json_schema_extra={"uniqueItems": True},
    ),
]
DigestBands = Annotated[
    list[Band],
    Field(max_length=len(Band), description="Bands sent in the daily digest instead of at once."),
]
Tag = scoring_schemas.Tag


def _scope_fields(scope: SubscriptionScope, *, allowed: str | None) -> dict[str, Any]:
    """The fields a scope takes: `allowed` (required) and neither of the others."""
    return {
        "allOf": [
            {"properties": {"scope": {"const": scope.value}}},
            *([scoring_schemas.given(allowed)] if allowed else []),
            *(
                {"not": scoring_schemas.given(field)}
                for field in ("target_id", "tag")
                if field != allowed
            ),
        ]
    }


class SubscriptionIn(ApiIn):
    """What to watch (one target, a tag, or everything), where to notify, and under which rules."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                _scope_fields(SubscriptionScope.TARGET, allowed="target_id"),
                _scope_fields(SubscriptionScope.TAG, allowed="tag"),
                _scope_fields(SubscriptionScope.ALL, allowed=None),
            ]
        }
    )

    name: Name
    scope: SubscriptionScope
    target_id: RowId | None = Field(None, description="The site or corridor (scope target).")
    tag: Tag | None = Field(None, description="Targets carrying this tag (scope tag).")
    endpoint_ids: EndpointIds
    rules: Annotated[list[RuleIn], Field(min_length=1, max_length=MAX_RULES_PER_SUBSCRIPTION)]
    digest_bands: DigestBands = []
    enabled: StrictBool = True

    @model_validator(mode="after")
    def _consistent(self) -> SubscriptionIn:
        errors = scope_errors(self.scope, self.target_id, self.tag)
        errors += duplicate_errors(self.endpoint_ids, "endpoint_ids")
        if errors:
            raise invalid(errors, type(self).__name__)
        self.digest_bands = sorted(set(self.digest_bands), key=BAND_RANK.__getitem__)
        return self


def _subscription_patch_schema(schema: dict[str, Any]) -> None:
    not_nullable("name", "scope", "endpoint_ids", "digest_bands", "enabled")(schema)
    # A new scope takes no field of another scope (what the stored scope takes is checked on
    # the stored subscription); a subscription has a target or a tag, never both.
    schema["allOf"] = [
        {
            "if": {"properties": {"scope": {"const": scope.value}}, "required": ["scope"]},
            "then": {
                "not": {"anyOf": [scoring_schemas.given(field) for field in others]},
            },
        }
        for scope, others in (
            (SubscriptionScope.TARGET, ("tag",)),
            (SubscriptionScope.TAG, ("target_id",)),
            (SubscriptionScope.ALL, ("target_id", "tag")),
        )
    ]
    schema["not"] = scoring_schemas.given("target_id", "tag")


class SubscriptionPatch(ApiIn):
    """Changes to a subscription; absent fields stay (target_id and tag may be set to null)."""

    model_config = ConfigDict(json_schema_extra=_subscription_patch_schema)

    name: Name | None = None
    scope: SubscriptionScope | None = Field(
        None, description="Changing it re-evaluates every rule against current scores."
    )
    target_id: RowId | None = None
    tag: Tag | None = None
    endpoint_ids: EndpointIds | None = None
    digest_bands: DigestBands | None = None
    enabled: StrictBool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SubscriptionPatch:
        errors = _null_errors(self, set(type(self).model_fields) - {"target_id", "tag"})
        errors += duplicate_errors(self.endpoint_ids or [], "endpoint_ids")
        if errors:
            raise invalid(errors, type(self).__name__)
        if self.digest_bands is not None:
            self.digest_bands = sorted(set(self.digest_bands), key=BAND_RANK.__getitem__)
        return self


class ThresholdRuleOut(ThresholdRuleIn):
    """A stored threshold rule."""

    id: int


class EventRuleOut(EventRuleIn):
    """A stored event rule."""

    id: int


RuleOut = Annotated[ThresholdRuleOut | EventRuleOut, Field(discriminator="kind")]


class SubscriptionOut(BaseModel):
    """A subscription with its rules."""

    id: int
    name: str
    scope: SubscriptionScope
    target_id: int | None
    tag: str | None
    endpoint_ids: list[int]
    digest_bands: list[Band]
    enabled: bool
    rules: list[RuleOut]
    created_at: datetime
    updated_at: datetime


class SubscriptionPage(BaseModel):
    """A page of subscriptions; pass `next_cursor` as `after` for the next page."""

    subscriptions: list[SubscriptionOut]
    next_cursor: int | None


class AlertStateName(StrEnum):
    """Where an alert stands (event alerts are `triggered` once and stay so)."""

    NORMAL = "normal"
    PENDING = "pending"
    FIRING = "firing"
    RECOVERING = "recovering"
    FLAPPING = "flapping"
    TRIGGERED = "triggered"


ACKNOWLEDGEABLE = frozenset(
    {
        AlertStateName.FIRING,
        AlertStateName.RECOVERING,
        AlertStateName.FLAPPING,
        AlertStateName.TRIGGERED,
    }
)


class AlertOut(BaseModel):
    """The state of one rule for one target (and, for event rules, one incident)."""

    id: int
    subscription_id: int
    rule_id: int
    target_id: int
    incident_id: int | None = Field(description="The incident behind an event alert.")
    state: AlertStateName
    since: datetime
    score: float | None
    band: Band | None
    sequence: int
    last_notified_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: int | None = Field(description="The API key that acknowledged it.")
    snoozed_until: datetime | None
    snoozed_band: Band | None = Field(description="Snoozed until the band rises above this one.")
    created_at: datetime
    updated_at: datetime


class AlertEventOut(BaseModel):
    """One step of an alert's history: a state change or a notification."""

    id: int
    at: datetime
    from_state: str
    to_state: str
    score: float | None
    band: str | None
    notified: str = Field(description="What was sent, or none (with the reason why not).")
    reason: str


class AlertDetail(AlertOut):
    """An alert with the last score change behind it and its recent history, newest first."""

    change: dict[str, Any] | None
    events: list[AlertEventOut]


class AlertPage(BaseModel):
    """A page of alerts; pass `next_cursor` as `after` for the next page."""

    alerts: list[AlertOut]
    next_cursor: int | None


class SnoozeIn(ApiIn):
    """Hold an alert's notifications until a time, or until its band rises (exactly one)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [scoring_schemas.given("until"), scoring_schemas.given("until_band_rises")]
        }
    )

    until: Timestamp | None = Field(None, description="A future time, at most 30 days ahead.")
    until_band_rises: Literal[True] | None = Field(
        None, description="Hold notifications until the band rises above the current one."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SnoozeIn:
        if (self.until is None) == (self.until_band_rises is None):
            raise invalid(
                [(("until",), "give exactly one of until and until_band_rises")],
                type(self).__name__,
            )
        return self


class DeliveryStatus(StrEnum):
    """Where a delivery stands (see outbox)."""

    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


class DeliveryOut(BaseModel):
    """One notification to one endpoint."""

    id: int
    endpoint_id: int
    alert_id: int | None
    event_type: str
    message_id: str = Field(description="The webhook-id (and email Message-ID); kept on replay.")
    sequence: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None


class AttemptOut(BaseModel):
    """One try of a delivery."""

    number: int
    started_at: datetime
    duration_ms: float
    outcome: str
    status_code: int | None
    error_class: str | None
    error: str | None
    response_body: str | None = Field(description="At most max_response_bytes of the answer.")


class DeliveryDetail(DeliveryOut):
    """A delivery with its body and every attempt, oldest first."""

    payload: dict[str, Any]
    attempt_log: list[AttemptOut]


class DeliveryPage(BaseModel):
    """A page of deliveries by id; pass `next_cursor` as `after` for the next page."""

    deliveries: list[DeliveryOut]
    next_cursor: int | None


class RecoverIn(ApiIn):
    """Replay every failed delivery created since a time (within the replay window)."""

    since: Timestamp


class Recovered(BaseModel):
    """The deliveries queued again."""

    replayed: list[int]
