"""Niches over the H&E: teacher and student side by side, one shared colour per niche name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.table import get_table
from ._grid import draw_grid, grid_axes, place_legend, prepare_grid
from ._palette import NA_COLOR, _categories, natural_key, resolve_palette
from ._spatial import Colouring, category_handles
from ._utils import as_categorical, as_list, check_obs_key, check_save, finish

DEFAULT_KEYS = ("teacher_niche", "student_niche")


@inject_docs
def niche_map(
    sdata,
    *,
    keys: str | Sequence[str] = DEFAULT_KEYS,
    library: str | Sequence[str] | None = None,
    table_key: str = TABLE_KEY,
    library_key: str | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    microns_per_unit: float | None = None,
    groups: str | Sequence[str] | None = None,
    palette: Mapping[str, str] | Sequence[str] | str | None = None,
    show_split: bool = False,
    split_key: str = "split",
    method: str | None = None,
    scalebar: bool = True,
    legend: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | Sequence[str] | None = None,
) -> Axes | list[Axes] | None:
    """Niches drawn over the H&E, one panel per key side by side and one row per library.

    The same niche name has the same colour in every panel and every figure (see
    :func:`nichekd.pl.niche_palette`); the colours are stored as ``uns[f"{key}_colors"]``.

    Parameters
    ----------
    sdata
        SpatialData (from nichekd's readers, spatialdata-io or your own code), or a bare AnnData table (drawn
        from ``obsm['spatial']`` without an image).
    keys
        Categorical ``obs`` columns, e.g. the teacher's and the student's niches. With the default, keys that
        do not exist yet are skipped (at least one must exist); named keys must all exist.
    library
        Section(s) to draw; ``None`` draws every library, one row each.
    table_key
        %(table_key)s
    library_key
        %(library_key)s
    image_key
        Image element; ``None`` picks the finest image of the library's coordinate system that holds its spots
        (constant placeholders skipped), ``False`` draws no image.
    coordinate_system
        %(coordinate_system)s
    microns_per_unit
        %(microns_per_unit)s
    groups
        Niches to colour; the others are drawn grey.
    palette
        ``{niche: colour}``, a list of colours in natural name order, or a colormap name; default: the fixed
        nichekd palette.
    show_split
        Outline the test region (dashed) and hatch the buffer from ``obs[split_key]``.
    split_key
        %(split_key)s
    method
        spatialdata-plot's rendering of the shapes: ``"matplotlib"`` (one patch per observation),
        ``"datashader"`` (rasterised, fast for large panels) or ``None``: datashader for panels of 10,000
        observations or more.
    scalebar
        Draw a scale bar in microns.
    legend
        Draw one niche legend to the right of the panels.
    %(figure)s
    title
        One title per panel, or one string (the figure title when there are several panels).

    Returns
    -------
    The axes (a list when there are several panels), or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(random_state=0)
    >>> nk.tl.teacher_niches(sdata)
    >>> nk.pl.niche_map(sdata, keys="teacher_niche", show_split=False, show=False)  # doctest: +SKIP
    """
    table = get_table(sdata, table_key)
    key_list = as_list(keys)
    if not key_list:
        raise ValueError("keys= is empty; name at least one niche column, e.g. 'teacher_niche'.")
    if tuple(key_list) == DEFAULT_KEYS:
        present = [k for k in key_list if k in table.obs]
        if not present:
            raise KeyError(
                f"Neither {DEFAULT_KEYS[0]!r} nor {DEFAULT_KEYS[1]!r} is in obs; run nichekd.tl.teacher_niches "
                "first or pass keys= naming your niche column."
            )
        key_list = present
    for key in key_list:
        check_obs_key(table, key, categorical=True, hint="Pass keys= naming niche columns.")
    save_path = check_save(save)
    all_names = [c for key in key_list for c in _categories(table, key)]
    mapping = resolve_palette(all_names, palette)
    group_list = as_list(groups) or None
    if group_list is not None:
        group_list = [str(g) for g in group_list]
        unknown = [g for g in group_list if g not in all_names]
        if unknown:
            raise ValueError(
                f"groups {unknown} are not niches of {key_list}; the niches are {sorted(set(all_names), key=natural_key)}."
            )
    grid = prepare_grid(sdata, table, key_list, library=library, table_key=table_key, library_key=library_key,
                        coordinate_system=coordinate_system, microns_per_unit=microns_per_unit,
                        image_key=image_key, show_split=show_split, split_key=split_key, method=method)  # fmt: skip
    fig, axes, user_ax = grid_axes(grid, ax, figsize, legend_width=1.4 if legend else 0.2)

    # everything is checked: from here on the table may be written (categoricals, colours)
    for key in key_list:
        as_categorical(table, key)
        table.uns[f"{key}_colors"] = [mapping[c] for c in _categories(table, key)]
    colouring = Colouring(palette=mapping, groups=group_list, na_color=NA_COLOR)
    split_handles, _ = draw_grid(table, grid, axes, dict.fromkeys(key_list, colouring), show_split=show_split,
                                 split_key=split_key, method=method, table_key=table_key, title=title,
                                 scalebar=scalebar)  # fmt: skip
    if legend:
        drawn = pd.concat([table.obs[p.key].iloc[p.rows].astype(object) for p in grid.flat])
        names = sorted({str(v) for v in drawn.dropna()}, key=natural_key)
        shown = [n for n in names if group_list is None or n in group_list]
        handles = category_handles(mapping, shown)
        grey = "other" if group_list is not None else ("no label" if drawn.isna().any() else None)
        if grey is not None:
            handles.append(Line2D([], [], marker="o", ls="", markersize=8, markerfacecolor=NA_COLOR,
                                  markeredgecolor="none", label=grey))  # fmt: skip
        place_legend(fig, axes, handles + split_handles, user_ax=user_ax, title="niche")
    out = axes[0] if len(axes) == 1 else axes
    return finish(fig, out, save=save_path, show=show, user_ax=user_ax)
