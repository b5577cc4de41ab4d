"""One colour per niche name, the same in every panel and every figure.

A niche called ``"N3"`` is always drawn in ``NICHE_COLORS[3]``: names of the form ``N<int>`` (what
:func:`nichekd.tl.teacher_niches` writes, and what the student inherits) index a fixed list directly. Other
names take their position in the natural sort order of all names being coloured. Colours are stored
scanpy-style as ``uns[f"{key}_colors"]``, aligned with the column's categories, so scanpy and squidpy plots
reuse them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import anndata as ad
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex

# scanpy's default_20: familiar to users and readable on H&E
NICHE_COLORS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc", "#8c564b", "#e377c2", "#b5bd61", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
    "#ad494a", "#8c6d31",
)  # fmt: skip
NA_COLOR = "#d3d3d3"
_NICHE_NAME = re.compile(r"^N(\d+)$")


def natural_key(name: object) -> tuple:
    """Sort key that puts ``"N2"`` before ``"N10"``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name)))


def _colour_list(n: int) -> list[str]:
    """``n`` distinct colours: the fixed 20 first, then a longer list so that colours do not repeat."""
    if n <= len(NICHE_COLORS):
        return list(NICHE_COLORS)
    from scanpy.plotting.palettes import default_102

    extra = [c for c in default_102 if c.lower() not in NICHE_COLORS]
    colours = list(NICHE_COLORS) + extra
    if n > len(colours):  # beyond ~100 niches distinct colours stop being useful anyway
        colours = [to_hex(colormaps["hsv"](i / n)) for i in range(n)]
    return colours


def niche_palette(names: Iterable[object]) -> dict[str, str]:
    """Deterministic ``{name: hex colour}`` for niche names.

    Parameters
    ----------
    names
        Niche names (categories); duplicates are ignored.

    Returns
    -------
    Mapping from each name (as ``str``) to a hex colour.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pl.niche_palette(["N1", "N0"])["N1"] == nk.pl.niche_palette(["N5", "N1"])["N1"]
    True
    """
    unique = sorted({str(n) for n in names}, key=natural_key)
    numbers = [_NICHE_NAME.match(n) for n in unique]
    if unique and all(numbers):
        idx = {n: int(m.group(1)) for n, m in zip(unique, numbers, strict=True)}
    else:
        idx = {n: i for i, n in enumerate(unique)}
    colours = _colour_list(max(idx.values(), default=0) + 1)
    return {n: colours[i % len(colours)] for n, i in idx.items()}


def _categories(adata: ad.AnnData, key: str) -> list[str]:
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories]
    return sorted({str(v) for v in col.dropna()}, key=natural_key)


def resolve_palette(
    names: Sequence[str], palette: Mapping[str, str] | Sequence[str] | str | None = None
) -> dict[str, str]:
    """``{name: hex}`` from a user palette (dict, list in natural name order, or colormap name) or the default."""
    ordered = sorted({str(n) for n in names}, key=natural_key)
    base = niche_palette(ordered)
    if palette is None:
        return base
    try:
        if isinstance(palette, str):
            cmap = colormaps[palette]
            n = max(len(ordered), 1)
            return {name: to_hex(cmap(i / max(n - 1, 1))) for i, name in enumerate(ordered)}
        if isinstance(palette, Mapping):
            return {**base, **{str(k): to_hex(v) for k, v in palette.items()}}
        colours = [to_hex(c) for c in palette]
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"palette could not be read as colours: {err}. Pass a dict {{niche: colour}}."
        ) from err
    if len(colours) < len(ordered):
        raise ValueError(
            f"palette has {len(colours)} colours for {len(ordered)} niches {ordered}; "
            "pass at least one colour per niche, or a dict {niche: colour}."
        )
    return dict(zip(ordered, colours, strict=False))


def set_niche_colors(
    adata: ad.AnnData,
    *,
    keys: str | Sequence[str],
    palette: Mapping[str, str] | Sequence[str] | str | None = None,
) -> dict[str, str]:
    """Store one shared niche palette as ``uns[f"{key}_colors"]`` for each key.

    Every key gets the colour of each of its categories from one mapping built over the union of all keys'
    categories, so a teacher niche and the student niche of the same name share a colour.

    Parameters
    ----------
    adata
        Table with the categorical niche columns in ``obs``.
    keys
        One or more ``obs`` columns.
    palette
        ``None`` for the deterministic default (:func:`niche_palette`), a dict ``{niche: colour}`` (names left
        out keep their default colour), a list of colours in natural name order, or a matplotlib colormap name.

    Returns
    -------
    The ``{name: hex colour}`` mapping that was stored.

    Examples
    --------
    >>> import nichekd as nk
    >>> colours = nk.pl.set_niche_colors(adata, keys=["teacher_niche", "student_niche"])
    >>> adata.uns["teacher_niche_colors"][:3]  # doctest: +SKIP
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    for key in keys:
        if key not in adata.obs:
            raise KeyError(f"No column {key!r} in obs; available: {list(adata.obs.columns)}.")
    names = [c for key in keys for c in _categories(adata, key)]
    mapping = resolve_palette(names, palette)
    for key in keys:
        adata.uns[f"{key}_colors"] = [mapping[c] for c in _categories(adata, key)]
    return mapping
