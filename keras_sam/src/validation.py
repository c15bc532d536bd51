"""Argument checks shared by `SAMModel`'s options and the optimizers.

Each check raises a `TypeError` (wrong type) or a `ValueError` (wrong value)
whose message names the argument, the value received and what is allowed.
Booleans are never accepted as numbers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def _received(name: str, value: Any) -> str:
    return f"received {name}={value!r}."


def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """`value` is one of `allowed` (strings, or `None`)."""
    if not isinstance(value, (str, type(None))) or value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {list(allowed)}; "
            + _received(name, value)
        )


def check_bool(name: str, value: Any) -> None:
    """`value` is `True` or `False` (not `1`, not `numpy.True_`)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be True or False; " + _received(name, value)
        )


def check_real(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    high_allowed: bool = False,
) -> None:
    """`low <= value < high` (`<= high` with `high_allowed`; `high=None`:
    no upper bound), finite."""
    if high is None:
        allowed = f"a float >= {low}"
    else:
        allowed = f"a float in [{low}, {high}{']' if high_allowed else ')'}"
    if not is_real(value):
        raise TypeError(
            f"`{name}` must be {allowed}; " + _received(name, value)
        )
    above = high is not None and (
        value > high if high_allowed else value >= high
    )
    if not math.isfinite(value) or value < low or above:
        raise ValueError(
            f"`{name}` must be {allowed}; " + _received(name, value)
        )


def check_int(name: str, value: Any, low: int) -> None:
    """An int (not a bool) `>= low`."""
    if not is_int(value):
        raise TypeError(
            f"`{name}` must be an int >= {low}; " + _received(name, value)
        )
    if value < low:
        raise ValueError(
            f"`{name}` must be an int >= {low}; " + _received(name, value)
        )
