"""When a new model version is published, what is stored against scores keeps its meaning.

The scoring service publishes model versions; the alerts service stores threshold rules on the
score. Neither imports the other: the scoring service describes the change (`ModelChange`) and
calls `carry_over` in the publishing unit of work, and each service that stores numbers on the
score scale registers a hook (`on_model_change`) that moves them when the scale changes and says
what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

SCALE_TOP = 100.0


@dataclass(frozen=True, slots=True)
class ModelChange:
    """A new model version replacing the one in force (both parameter documents as stored)."""

    old_version: int
    new_version: int
    old_params: dict[str, Any]
    new_params: dict[str, Any]
    # The four band thresholds (low|moderate|elevated|high|critical) of each version.
    old_thresholds: tuple[float, ...]
    new_thresholds: tuple[float, ...]
    # True when scores read differently (other bands, or a legacy version replaced): stored
    # values are then carried over band by band.
    rescaled: bool
    reason: str

    def carry(self, value: float) -> float:
        """A value on the old scale moved to the same place within its band on the new one:
        piecewise linear through 0, the band thresholds and 100, rounded to 0.1."""
        old = [0.0, *self.old_thresholds, SCALE_TOP]
        new = [0.0, *self.new_thresholds, SCALE_TOP]
        return round(float(np.interp(value, old, new)), 1)


Hook = Callable[[Session, ModelChange, datetime], list[dict[str, Any]]]
_HOOKS: dict[str, Hook] = {}


def on_model_change(name: str) -> Callable[[Hook], Hook]:
    """Register a hook (a decorator) that carries stored values over a model change."""

    def register(hook: Hook) -> Hook:
        _HOOKS[name] = hook
        return hook

    return register


def carry_over(
    session: Session, change: ModelChange, now: datetime
) -> dict[str, list[dict[str, Any]]]:
    """Run every registered hook in the caller's unit of work; what each listed, by hook name
    (hooks that listed nothing are left out)."""
    listed = {name: hook(session, change, now) for name, hook in sorted(_HOOKS.items())}
    return {name: entries for name, entries in listed.items() if entries}
