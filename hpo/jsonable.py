"""Values as JSON carries them: no NaN or infinity (JSON has none), times in UTC with their offset."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every NaN/inf (also inside lists and dicts) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value


def utc_time(value: dt.datetime | None) -> str | None:
    """A time as ISO 8601 in UTC; a naive one is taken as the process's local time (as Optuna
    stores them)."""
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).isoformat()
