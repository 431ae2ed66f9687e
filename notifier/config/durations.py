"""Durations as the config writes them: seconds (``300``, ``0.5``) or with units, as Prometheus and
Alertmanager write them (``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``, ``500ms``).

A few lines of regular expression rather than a dependency: the grammar is Prometheus's duration
(``[0-9]+(ms|s|m|h|d|w)`` repeated, largest unit first), which no maintained Python library implements as
such, and a bare number stays seconds so that every existing config keeps its meaning.
"""

from __future__ import annotations

import math
import re
from typing import Final

UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_ORDER: Final = ["w", "d", "h", "m", "s", "ms"]
EXAMPLES: Final = "seconds (300) or a number with a unit: 90s, 30m, 2h, 7d, 1h30m"


def parse_duration(value: object) -> float:
    """Seconds of a duration setting; ValueError saying what is accepted otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration: {EXAMPLES}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration: {EXAMPLES}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration: {EXAMPLES}")
    text = value.strip()
    try:
        return float(text) if text and math.isfinite(float(text)) else _with_units(text, value)
    except ValueError:
        return _with_units(text, value)


def _with_units(text: str, original: str) -> float:
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{original!r} is not a duration: {EXAMPLES}")
    ranks = [_ORDER.index(u) for _, u in parts]
    if ranks != sorted(set(ranks)) or len(ranks) != len(set(ranks)):
        raise ValueError(f"{original!r}: write each unit once, largest first (e.g. 1h30m)")
    return sum(float(n) * UNITS[u] for n, u in parts)


def format_duration_setting(seconds: float) -> str:
    """``seconds`` as the config would write it most simply (``90s``, ``30m``, ``2h``)."""
    for unit in ("w", "d", "h", "m"):
        size = UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
