"""What free text (ACLED `notes`, UCDP `source_headline`) says that the codes do not.

Kidnappings hidden in an attack, threats against firms, and who was targeted: a mine, a
convoy, an airport, aid workers, foreign nationals. Each finding becomes a tag, and some a
category, a victim profile or (for a threat only) a target profile (docs/feeds.md lists them).
Patterns are English, as both data sets are coded in English.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.scoring.taxonomy import Category, Sector, TargetType

# The categories whose text says whom they apply to. A threat made to foreign mining firms is
# meant for them alone; an attack on a truck driver says who was hit, not who is safe.
SCOPED_BY_TEXT = frozenset({Category.EXPLICIT_THREAT})

KIDNAPPING = re.compile(
    r"\b(abduct\w*|kidnap\w*|hostages?|taken captive|held captive|forced disappearance)\b", re.I
)
THREAT = re.compile(
    r"\b(threat\w*|warn(ed|ing|s)?|ultimatum|vow\w* to (attack|target|strike)|"
    r"order(ed|s)? .{0,40}to (leave|stop|close))\b",
    re.I,
)
MINING = re.compile(
    # Not a bare "mine": in these data sets that is mostly the explosive kind.
    r"\b(mining|miners|gold|mine sites?|mine workers?|orpaill\w*|artisanal|quarr(y|ies)|"
    r"uranium|lithium|manganese)\b",
    re.I,
)
LOGISTICS = re.compile(
    r"\b(convoys?|trucks?|lorr(y|ies)|tankers?|transporters?|logistics|supply route|"
    r"buses|bus|drivers?)\b",
    re.I,
)
AVIATION = re.compile(
    r"\b(airports?|airstrips?|aircraft|airplanes?|planes?|helicopters?|flights?)\b", re.I
)
HUMANITARIAN = re.compile(
    r"\b(NGOs?|humanitarian|aid workers?|relief workers?|UN agency|WFP|UNICEF|MSF|ICRC)\b", re.I
)
FOREIGN_FIRM = re.compile(
    r"\b(foreign(-owned)? (firms?|compan(y|ies)|mining compan(y|ies)|operators?|interests)|"
    r"multinationals?|western compan(y|ies))\b",
    re.I,
)
FOREIGN_PEOPLE = re.compile(
    r"\b(foreign(ers| nationals?| workers?| citizens?| engineers?)|expatriates?|expats?|"
    r"westerners?)\b",
    re.I,
)
# Nationalities whose mention in a kidnapping marks the victims as expatriates here.
NATIONALITY = re.compile(
    r"\b(Chinese|Russian|Turkish|Indian|Pakistani|Iranian|Moroccan|Algerian|Tunisian|"
    r"Egyptian|Lebanese|Syrian|French|Italian|German|Spanish|Portuguese|British|Irish|"
    r"Canadian|American|Australian|South African|Romanian|Serbian|Bulgarian|Swiss|Austrian|"
    r"Belgian|Dutch|Polish|Czech|Swedish|Norwegian|Danish|Finnish|Japanese|Korean|Filipino|"
    r"Brazilian|Ukrainian|Belarusian|Israeli)\b"
)
CLAIMED = re.compile(
    r"\bclaim(?:ed|s|ing)?\b[^.]{0,60}?\b(?:kill(?:ed|ing)?|dead|deaths?)\b[^.]{0,20}?\b(\d{1,5})\b"
    r"|\bclaim(?:ed|s|ing)?\b[^.]{0,40}?\b(\d{1,5})\b[^.]{0,30}?\b(?:killed|dead|deaths)\b",
    re.I,
)


@dataclass
class Hints:
    """What a report's free text says."""

    tags: list[str] = field(default_factory=list)
    kidnapping: bool = False
    threat: bool = False
    target_type: TargetType | None = None
    sectors: list[Sector] = field(default_factory=list)
    foreign_firm: bool = False
    expatriate: bool = False
    nationality: str | None = None
    claimed_fatalities: int | None = None

    def profiles(self, category: Category) -> dict[str, dict[str, object]]:
        """The target and victim profiles of an incident of `category`, as report fields."""
        # A target profile limits the targets an incident counts for: only a threat's text
        # may set one. Elsewhere a sector named is the victims': it raises that sector's
        # targets and hides the incident from none.
        scoped = category in SCOPED_BY_TEXT
        return {
            "target_profile": {
                "foreign_owned_only": scoped and self.foreign_firm,
                "sectors": sorted(set(self.sectors)) if scoped else [],
            },
            "victim_profile": {
                "expatriate": self.expatriate,
                "nationality": self.nationality,
                "sector": self.sectors[0] if self.sectors else None,
            },
        }


def read(text: str) -> Hints:
    """The hints in one report's free text."""
    hints = Hints()
    if not text:
        return hints
    if KIDNAPPING.search(text):
        hints.kidnapping = True
        hints.tags.append("kidnapping")
    if THREAT.search(text):
        hints.threat = True
        hints.tags.append("threat")
    # The most specific target named wins the target type; every sector named is kept.
    for pattern, tag, target, sector in (
        (AVIATION, "aviation", TargetType.AVIATION, None),
        (MINING, "mining", TargetType.MINING, Sector.MINING),
        (LOGISTICS, "logistics", TargetType.LOGISTICS, Sector.LOGISTICS),
        (HUMANITARIAN, "humanitarian", TargetType.HUMANITARIAN, Sector.HUMANITARIAN),
    ):
        if pattern.search(text):
            hints.tags.append(tag)
            hints.target_type = hints.target_type or target
            if sector is not None:
                hints.sectors.append(sector)
    if FOREIGN_FIRM.search(text):
        hints.foreign_firm = True
        hints.tags.append("foreign-firm")
        hints.target_type = TargetType.FOREIGN_FIRM
    nationality = NATIONALITY.search(text)
    if FOREIGN_PEOPLE.search(text) or nationality:
        hints.expatriate = True
        hints.tags.append("foreign-nationals")
        hints.nationality = nationality.group(1) if nationality else None
    claimed = CLAIMED.search(text)
    if claimed:
        hints.claimed_fatalities = int(claimed.group(1) or claimed.group(2))
        hints.tags.append("claimed-fatalities")
    return hints
