"""The student's uncertainty (prediction entropy) mapped over the tissue."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.table import get_table, library_column
from ._grid import draw_grid, grid_axes, place_legend, prepare_grid
from ._spatial import Colouring
from ._utils import check_obs_key, check_save, finish


@inject_docs
def uncertainty(
    sdata,
    *,
    key: str = "student_niche_entropy",
    library: str | Sequence[str] | None = None,
    table_key: str = TABLE_KEY,
    library_key: str | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    microns_per_unit: float | None = None,
    cmap: str = "magma_r",
    vmin: float | None = None,
    vmax: float | None = None,
    show_split: bool = False,
    split_key: str = "split",
    method: str | None = None,
    scalebar: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | Sequence[str] | None = None,
) -> Axes | list[Axes] | None:
    """A continuous value, by default the student's prediction entropy, over the H&E (one panel per library).

    Parameters
    ----------
    sdata
        SpatialData (from nichekd's readers, spatialdata-io or your own code), or a bare AnnData table.
    key
        Numeric ``obs`` column; :func:`nichekd.tl.distill` writes ``"student_niche_entropy"``.
    library
        Section(s) to draw; ``None`` draws every library that has the value.
    table_key
        %(table_key)s
    library_key
        %(library_key)s
    image_key
        Image element; ``None`` picks the library's H&E, ``False`` draws no image.
    coordinate_system
        %(coordinate_system)s
    microns_per_unit
        %(microns_per_unit)s
    cmap
        Matplotlib colormap; the default makes confident areas light and uncertain ones dark.
    vmin
        Lower end of the colour scale (default: 0 for non-negative values, else the minimum); shared by panels.
    vmax
        Upper end of the colour scale (default: the maximum); shared by panels.
    show_split
        Outline the test region and hatch the buffer from ``obs[split_key]``.
    split_key
        %(split_key)s
    method
        ``"matplotlib"``, ``"datashader"`` or ``None`` (by size; see :func:`nichekd.pl.niche_map`).
    scalebar
        Draw a scale bar in microns.
    %(figure)s
    title
        One title per panel, or one string.

    Returns
    -------
    The axes (a list when there are several libraries), or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pl.uncertainty(sdata, show_split=True, show=False)  # doctest: +SKIP
    """
    table = get_table(sdata, table_key)
    check_obs_key(table, key, categorical=False, hint="Run nichekd.tl.distill first, or pass key=.")
    if cmap not in colormaps:
        raise ValueError(f"Unknown colormap {cmap!r}; pass a matplotlib colormap name such as 'magma_r'.")
    save_path = check_save(save)
    values = np.asarray(table.obs[key], dtype=float)
    if library is None:  # sections without the value (e.g. not predicted yet) would be empty panels
        _, labels = library_column(table, library_key)
        library = [lib for lib in dict.fromkeys(labels) if np.isfinite(values[labels == lib]).any()]
    lo = (0.0 if np.nanmin(values) >= 0 else float(np.nanmin(values))) if vmin is None else float(vmin)
    hi = float(np.nanmax(values)) if vmax is None else float(vmax)
    if not hi > lo:
        hi = lo + 1.0
    grid = prepare_grid(sdata, table, [key], library=sorted(library) if isinstance(library, list) else library,
                        table_key=table_key, library_key=library_key, coordinate_system=coordinate_system,
                        microns_per_unit=microns_per_unit, image_key=image_key, show_split=show_split,
                        split_key=split_key, method=method)  # fmt: skip
    fig, axes, user_ax = grid_axes(grid, ax, figsize, legend_width=1.4, wrap=3)
    norm = Normalize(lo, hi)
    colouring = Colouring(cmap=cmap, norm=norm)
    if title is None and len(axes) > 1:
        title = [p.library for p in grid.flat]
    split_handles, _ = draw_grid(table, grid, axes, {key: colouring}, show_split=show_split,
                                 split_key=split_key, method=method, table_key=table_key,
                                 title=title if title is not None else key, scalebar=scalebar)  # fmt: skip
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=key, shrink=0.6, pad=0.02)
    place_legend(fig, axes, split_handles, user_ax=user_ax, title=None)
    out = axes[0] if len(axes) == 1 else axes
    return finish(fig, out, save=save_path, show=show, user_ax=user_ax)
