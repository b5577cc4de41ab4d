"""Argument and input validation shared by the public functions: one rule per kind of value, one message style.

Every argument check raises :class:`ValueError` (or :class:`TypeError` for a value of the wrong kind) naming
the argument, the value given and the allowed range, before the calling function reads or writes anything.
The data checks (:func:`check_counts`, :func:`check_zero_counts`, :func:`check_neighbour_target`) run once
the table is read, before any heavy work, and name what is wrong and the fix.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# seeds go to numpy, torch and scikit-learn; scikit-learn's (legacy numpy) limit is the tightest
MAX_SEED = 2**32 - 1
# values of a log-transformed matrix stay below this (log1p of 1e6 counts per cell is 13.8): non-integer
# "counts" all below it were normalised and log-transformed already
LOG_MAX = 20.0
# a share of observations without any count above which results are distorted (they all get one latent)
ZERO_COUNT_WARN_FRACTION = 0.1


def _number(name: str, value: Any, *, integer: bool) -> float | int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real | np.integer | np.floating):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}).")
    if isinstance(value, numbers.Integral | np.integer):
        return int(value)  # exact, however large (no float overflow)
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if integer and not v.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return int(v) if integer else v


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]`` (a whole float such as ``3.0`` is accepted).

    Examples
    --------
    >>> check_int("epochs", 3)
    3
    """
    v = int(_number(name, value, integer=True))
    if v < minimum or (maximum is not None and v > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}.")
    return v


def check_optional_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int | None:
    """``None``, or an integer in ``[minimum, maximum]``.

    Examples
    --------
    >>> check_optional_int("n_components", None) is None
    True
    """
    return None if value is None else check_int(name, value, minimum=minimum, maximum=maximum)


def check_seed(name: str, value: Any) -> int:
    """A seed: an integer (Python or numpy) in ``[0, 2**32 - 1]``; no float, bool or ``None``.

    Examples
    --------
    >>> check_seed("random_state", 0)
    0
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral | np.integer):
        raise TypeError(
            f"{name} must be an integer seed in [0, {MAX_SEED}], got {value!r} ({type(value).__name__})."
        )
    if not 0 <= int(value) <= MAX_SEED:
        raise ValueError(f"{name} must be an integer seed in [0, {MAX_SEED}], got {value!r}.")
    return int(value)


def check_positive(name: str, value: Any, *, unit: str = "", maximum: float | None = None) -> float:
    """A finite number ``> 0`` (temperatures, radii, learning rates, sizes in microns), at most ``maximum``.

    Examples
    --------
    >>> check_positive("temperature", 2.0)
    2.0
    """
    v = float(_number(name, value, integer=False))
    if v <= 0 or (maximum is not None and v > maximum):
        upper = "" if maximum is None else f" of at most {maximum:g}"
        raise ValueError(
            f"{name} must be a positive number{' of ' + unit if unit else ''}{upper}, got {value!r}."
        )
    return v


def check_optional_positive(
    name: str, value: Any, *, unit: str = "", maximum: float | None = None
) -> float | None:
    """``None``, or a finite number ``> 0``.

    Examples
    --------
    >>> check_optional_positive("radius_um", None) is None
    True
    """
    return None if value is None else check_positive(name, value, unit=unit, maximum=maximum)


def check_nonnegative(name: str, value: Any, *, unit: str = "") -> float:
    """A finite number ``>= 0`` (weight decay, buffers, margins).

    Examples
    --------
    >>> check_nonnegative("weight_decay", 0.0)
    0.0
    """
    v = float(_number(name, value, integer=False))
    if v < 0:
        raise ValueError(
            f"{name} must be zero or positive{' (' + unit + ')' if unit else ''}, got {value!r}."
        )
    return v


def check_optional_nonnegative(name: str, value: Any, *, unit: str = "") -> float | None:
    """``None``, or a finite number ``>= 0``.

    Examples
    --------
    >>> check_optional_nonnegative("buffer_um", 0)
    0.0
    """
    return None if value is None else check_nonnegative(name, value, unit=unit)


def check_fraction(name: str, value: Any, *, low_open: bool = False, high_open: bool = True) -> float:
    """A fraction in ``[0, 1)`` by default; ``low_open`` / ``high_open`` exclude the ends.

    Examples
    --------
    >>> check_fraction("val_fraction", 0.1)
    0.1
    """
    v = float(_number(name, value, integer=False))
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v < 1 if high_open else v <= 1
    if not (lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a fraction in {interval}, got {value!r}.")
    return v


def check_optional_fraction(name: str, value: Any, **kwargs: bool) -> float | None:
    """``None``, or a fraction (see :func:`check_fraction`).

    Examples
    --------
    >>> check_optional_fraction("saturation_threshold", None) is None
    True
    """
    return None if value is None else check_fraction(name, value, **kwargs)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """One of ``choices`` (compared by type and value: ``1`` is not ``"1"``, ``True`` is not ``1``).

    Examples
    --------
    >>> check_choice("grid", "hex", ("hex", "square"))
    'hex'
    """
    for c in choices:
        if value is c:
            return value
        if isinstance(c, str) and isinstance(value, str) and value == c:
            return c
        integral = (numbers.Integral, np.integer)
        if isinstance(c, integral) and not isinstance(c, bool) and isinstance(value, integral):
            if not isinstance(value, bool | np.bool_) and int(value) == int(c):
                return c
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")


def check_number_list(
    name: str,
    values: Any,
    *,
    integer: bool = False,
    minimum: float = 0.0,
    open_minimum: bool = True,
    max_length: int | None = None,
    allow_empty: bool = True,
) -> tuple:
    """A sequence of finite numbers ``> minimum`` (``>=`` with ``open_minimum=False``), not a string.

    Examples
    --------
    >>> check_number_list("context_scales", (2, 4))
    (2.0, 4.0)
    """
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of numbers, got {values!r} ({type(values).__name__}).")
    out = tuple(_number(f"each value of {name}", v, integer=integer) for v in values)
    if not out and not allow_empty:
        raise ValueError(f"{name} must hold at least one value, got {values!r}.")
    low = [v for v in out if (v <= minimum if open_minimum else v < minimum)]
    if low:
        bound = f"{'>' if open_minimum else '>='} {minimum:g}"
        raise ValueError(f"{name} must be {'integers' if integer else 'numbers'} {bound}, got {values!r}.")
    if max_length is not None and len(out) > max_length:
        raise ValueError(f"{name} may hold at most {max_length} values, got {len(out)}.")
    return tuple(int(v) for v in out) if integer else tuple(float(v) for v in out)


def check_key(name: str, value: Any, *, optional: bool = False) -> str | None:
    """A key argument (``table_key=``, ``library_key=``, ``teacher_key=``, ...): a string naming a table, a column
    or an ``obsm`` entry (``None`` too where ``optional``), refused with a :class:`TypeError` naming the argument
    before pandas or anndata see it (a list would fail there as "unhashable type").

    Examples
    --------
    >>> check_key("table_key", "table")
    'table'
    >>> check_key("library_key", None, optional=True) is None
    True
    """
    if value is None and optional:
        return None
    if not isinstance(value, str):
        kind = "a string (or None)" if optional else "a string"
        raise TypeError(f"{name} must be {kind} naming one key, got {value!r} ({type(value).__name__}).")
    return value


def check_keys(name: str, values: Any) -> list[str]:
    """A string or a list of strings (``predictions=``), each a key; returned as a list.

    Examples
    --------
    >>> check_keys("predictions", "student_niche")
    ['student_niche']
    """
    if isinstance(values, str):
        return [values]
    if isinstance(values, Mapping) or not isinstance(values, Iterable):
        raise TypeError(
            f"{name} must be a string or a list of strings, got {values!r} ({type(values).__name__})."
        )
    out = list(values)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must be a string or a list of strings, got {values!r} (holding {bad[0]!r}).")
    return out


# spatialdata's rule for the names it writes to zarr (spatialdata._core.validation.check_valid_name, and for
# table columns check_valid_dataframe_column_name): letters, digits, "_", "-", "."; not "." or ".."; not "__..."
NAME_CHARACTERS = "_-."
NAME_RULE = (
    "a non-empty string of letters, digits, '_', '-' and '.', not '.' or '..' and not starting with '__' "
    "(obs columns not '_index'), the names spatialdata can write to zarr"
)


def invalid_name(name: Any, *, column: bool = False) -> str | None:
    """Why spatialdata could not write ``name`` (an element name, a table key, or with ``column`` an obs/var
    column) to zarr, or ``None`` when it can. The same rule as spatialdata 0.7's ``check_valid_name``.

    Examples
    --------
    >>> invalid_name("student_niche") is None
    True
    >>> invalid_name("a/b")
    "'a/b' has a character other than letters, digits, '_', '-' and '.'"
    """
    if not isinstance(name, str):
        return f"{name!r} is not a string but a {type(name).__name__}"
    if not name:
        return "the name is empty"
    if name in (".", ".."):
        return f"{name!r} is not a name"
    if name.startswith("__"):
        return f"{name!r} starts with '__'"
    if not all(c.isalnum() or c in NAME_CHARACTERS for c in name):
        return f"{name!r} has a character other than letters, digits, '_', '-' and '.'"
    if column and name == "_index":
        return "'_index' is reserved for the index of a table's columns"
    return None


# ------------------------------------------------------------------------------------------------- data
def check_neighbour_target(
    value: float,
    sizes: Mapping[str, int],
    *,
    name: str = "n_neighbors_target",
    what: str = "section",
    unit: str = "observations",
) -> None:
    """Refuse a neighbour count that the data cannot give, before any neighbour list is allocated.

    ``sizes`` maps each group the neighbours come from (a section) to its number of observations; a cell of
    the smallest group has at most ``size - 1`` neighbours.

    Examples
    --------
    >>> check_neighbour_target(10, {"s1": 500, "s2": 300})
    """
    if not sizes:
        return
    smallest = min(sizes, key=lambda k: sizes[k])
    n = int(sizes[smallest])
    if value >= n:
        raise ValueError(
            f"{name}={value!r} asks for more neighbours than the data has: the smallest {what}, {smallest!r}, "
            f"has {n} {unit}, so at most {max(n - 1, 0)} neighbours each. Lower {name} (below {n}; 10 is the "
            f"default) or drop that {what}."
        )


def _data(x: Any) -> np.ndarray:
    from scipy import sparse

    return x.data if sparse.issparse(x) else np.asarray(x)


def _n_fractional(data: np.ndarray, chunk: int = 1 << 24) -> int:
    """Number of non-integer entries, in chunks (no full-size temporary for large matrices)."""
    flat = data.reshape(-1)
    return int(sum(np.count_nonzero(flat[s : s + chunk] % 1) for s in range(0, flat.size, chunk)))


def check_counts(
    x: Any, where: str = "X", *, integers: bool = False, fix: str | None = None, warn: bool = True
) -> None:
    """Raise unless ``x`` holds counts: numeric, finite, non-negative, and (``integers=True``) integers.

    ``integers=True`` (the readers, which read raw count files) refuses any non-integer value. Otherwise
    (functions that normalise the counts themselves: teacher, cell types, scVI) non-integer values all below
    :data:`LOG_MAX` are refused as already log-normalised (normalising them again would be silent nonsense),
    and other non-integer values (e.g. ambient-corrected counts) are used with a warning (``warn=False``: without,
    e.g. when the same table was checked already).

    Examples
    --------
    >>> check_counts(np.array([[0, 3], [1, 2]]))
    """
    fix = fix or "Put the raw counts in X (e.g. from adata.layers['counts'] or adata.raw)."
    data = _data(x)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"{where} must be numeric counts, got dtype {data.dtype}. {fix}")
    if data.size == 0:
        return
    if not np.isfinite(data).all():
        raise ValueError(f"{where} has NaN or infinite values: counts are finite. {fix}")
    if (data < 0).any():
        raise ValueError(f"{where} has negative values: it looks normalised or scaled, not raw counts. {fix}")
    if np.issubdtype(data.dtype, np.integer):
        return
    fractional = _n_fractional(data)
    if not fractional:
        return
    top = float(data.max())
    if integers:
        raise ValueError(
            f"{where} has non-integer values (largest {top:.3g}): it looks normalised or log-transformed, not "
            f"raw counts. {fix}"
        )
    if top < LOG_MAX:
        raise ValueError(
            f"{where} has non-integer values (largest {top:.3g}): it looks log-normalised already, and "
            f"normalising it again would be silently wrong. {fix}"
        )
    if not warn:
        return
    warnings.warn(
        f"{where} has non-integer values ({fractional} entries): they are used as counts "
        f"(normalised per observation, log-transformed). If {where} is already normalised, {fix[0].lower()}"
        f"{fix[1:]}",
        UserWarning,
        stacklevel=3,
    )


def check_zero_counts(
    x: Any,
    where: str = "X",
    *,
    warn_fraction: float = ZERO_COUNT_WARN_FRACTION,
    fix: str = "or pass use_rep= with a latent in obsm",
    stacklevel: int = 3,
) -> None:
    """Refuse a count matrix in which every observation sums to zero; warn when more than ``warn_fraction``
    of them do (they all get the same latent, one niche or cluster between them).

    Examples
    --------
    >>> check_zero_counts(np.array([[0, 3], [1, 2]]))
    """
    n = x.shape[0]
    if n == 0:
        return
    totals = np.asarray(x.sum(axis=1)).ravel()
    zero = int((totals <= 0).sum())
    if zero == n:
        raise ValueError(
            f"{where} has no counts: all {n} observations sum to zero, so every one would get the same "
            f"latent (one niche or cluster). Check that {where} holds the count matrix (not an empty "
            f"placeholder), {fix}."
        )
    if zero > warn_fraction * n:
        warnings.warn(
            f"{zero} of {n} observations ({zero / n:.0%}) have no counts in {where}: they all get the same "
            "latent and blur the niches or clusters. Drop them first, e.g. adata = adata[np.asarray(adata.X.sum(1)).ravel() "
            "> 0].copy() (or sc.pp.filter_cells(adata, min_counts=1)).",
            UserWarning,
            stacklevel=stacklevel,
        )
