"""Value checks shared by every edge that reads user settings (Config, losses, samplers, protocols).

Each check raises ConfigError naming the key, the value and what is allowed, and returns the
value normalised (floats as float). YAML and the command line give ints, floats, bools, strings and
None; a bool is never accepted as a number (YAML's `yes` would otherwise pass as 1).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from recbole_dsl.errors import ConfigError


def is_real(x) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_real(key: str, value, allowed: str, ok: Callable[[float], bool] = lambda v: True) -> float:
    """A finite number for which ``ok`` holds; ``allowed`` says what is expected in the message."""
    if not (is_real(value) and ok(value)):
        raise ConfigError(key, value, allowed)
    return float(value)


# Temperatures divide scores and strengths multiply them in the losses' float32 arithmetic (a loss
# takes 1 / tau and kappa * score): beyond these magnitudes a batch's logits overflow to inf and
# the loss to NaN, so such values are refused with the other checks, before anything is built.
TEMPERATURE_RANGE = (1e-6, 1e6)
MAX_STRENGTH = 1e6


def check_positive(key: str, value) -> float:
    """A temperature-like number > 0, within TEMPERATURE_RANGE."""
    lo, hi = TEMPERATURE_RANGE
    return check_real(key, value, f"a number > 0 in [{lo:g}, {hi:g}]", lambda v: lo <= v <= hi)


def check_strength(key: str, value, allowed: str) -> float:
    """A finite real number of magnitude at most MAX_STRENGTH; ``allowed`` says what it does."""
    return check_real(key, value, f"a real number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] ({allowed})",
                      lambda v: abs(v) <= MAX_STRENGTH)


# The largest int64: sizes, counts and seeds become tensor shapes, tensor values or numpy integers.
MAX_INT = 2**63 - 1


def check_int(key: str, value, minimum: int = 1, allowed: Optional[str] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, allowed or f"an integer >= {minimum}")
    if value > MAX_INT:
        raise ConfigError(key, value, allowed or f"an integer in [{minimum}, 2**63 - 1]",
                          hint="it does not fit in a 64-bit integer")
    return value


def check_bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "True or False")
    return value


def check_choice(key: str, value, choices: Sequence):
    if value not in choices:
        raise ConfigError(key, value, f"one of {list(choices)}")
    return value
