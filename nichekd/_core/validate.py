"""Argument validation shared by the public functions: one rule per kind of number, one message style.

Every check raises :class:`ValueError` (or :class:`TypeError` for a non-number) naming the argument, the value
given and the allowed range, before the calling function reads or writes anything.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def _number(name: str, value: Any, *, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real | np.number):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}).")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    if not np.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]``.

    Examples
    --------
    >>> check_int("epochs", 3)
    3
    """
    v = _number(name, value, integer=True)
    if v < minimum or (maximum is not None and v > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ValueError(f"{name} must be at least {minimum}{upper}, got {value!r}.")
    return int(v)


def check_positive(name: str, value: Any, *, unit: str = "") -> float:
    """A finite number ``> 0`` (temperatures, radii, learning rates, sizes in microns).

    Examples
    --------
    >>> check_positive("temperature", 2.0)
    2.0
    """
    v = _number(name, value, integer=False)
    if v <= 0:
        raise ValueError(f"{name} must be a positive number{' of ' + unit if unit else ''}, got {value!r}.")
    return v


def check_nonnegative(name: str, value: Any) -> float:
    """A finite number ``>= 0`` (weight decay, dropout-like penalties).

    Examples
    --------
    >>> check_nonnegative("weight_decay", 0.0)
    0.0
    """
    v = _number(name, value, integer=False)
    if v < 0:
        raise ValueError(f"{name} must be zero or positive, got {value!r}.")
    return v


def check_fraction(name: str, value: Any, *, low_open: bool = False, high_open: bool = True) -> float:
    """A fraction in ``[0, 1)`` by default; ``low_open`` / ``high_open`` exclude the ends.

    Examples
    --------
    >>> check_fraction("val_fraction", 0.1)
    0.1
    """
    v = _number(name, value, integer=False)
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v < 1 if high_open else v <= 1
    if not (lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a fraction in {interval}, got {value!r}.")
    return v


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """One of ``choices``.

    Examples
    --------
    >>> check_choice("grid", "hex", ("hex", "square"))
    'hex'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
    return value
