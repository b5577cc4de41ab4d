"""A grid of tissue panels (rows: libraries, columns: keys), shared by the niche and uncertainty maps.

Preparing (finding elements, reading geometry, checking the coordinates land on the image) is separate from
drawing, so that every check runs before anything is written to the user's table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._spatial import (
    METHODS,
    SPLITS,
    Colouring,
    Panel,
    add_scalebar,
    choose_libraries,
    draw_panel,
    draw_split,
    make_panel,
    panel_source,
)
from ._utils import check_obs_key


@dataclass
class Grid:
    """Validated panels (rows: libraries, columns: keys) and the SpatialData they are drawn from."""

    panels: list[list[Panel]]
    source: Any  # the user's SpatialData, or one with circles made for tables that annotate no shapes

    @property
    def flat(self) -> list[Panel]:
        """Panels row by row."""
        return [p for row in self.panels for p in row]


def prepare_grid(
    sdata,
    table: ad.AnnData,
    keys: list[str],
    *,
    library,
    table_key: str,
    library_key: str | None,
    coordinate_system: str | None,
    microns_per_unit: float | None,
    image_key,
    show_split: bool,
    split_key: str,
    method: str | None,
) -> Grid:
    """Resolve and check everything the maps need; raises before anything is drawn or written."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if show_split:
        check_obs_key(table, split_key, hint="Run nichekd.pp.spatial_split first, or pass show_split=False.")
        values = set(table.obs[split_key].dropna().astype(str))
        if not values <= set(SPLITS):
            raise ValueError(f"obs[{split_key!r}] must hold {SPLITS}, found {sorted(values - set(SPLITS))}.")
    source, ctx, where = panel_source(
        sdata, table, table_key=table_key, library_key=library_key, coordinate_system=coordinate_system,
        microns_per_unit=microns_per_unit, image_key=image_key,
    )  # fmt: skip
    libraries = choose_libraries(ctx, library)
    panels = []
    for lib in libraries:
        first = make_panel(source, ctx, where, lib, keys[0], image_key=image_key)
        panels.append([first] + [replace(first, key=key) for key in keys[1:]])
    return Grid(panels, source)


def _panel_aspect(panel: Panel) -> float:
    x0, x1, y0, y1 = panel.crop
    return float(np.clip((y1 - y0) / max(x1 - x0, 1e-9), 0.4, 2.5))


def grid_axes(
    grid: Grid,
    ax: Axes | list[Axes] | None,
    figsize: tuple[float, float] | None,
    *,
    legend_width: float,
    wrap: int | None = None,
) -> tuple[Figure, list[Axes], bool]:
    """Axes for every panel: the user's (one per panel) or a new constrained-layout figure."""
    n = sum(len(r) for r in grid.panels)
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(ax))
        if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(
                f"ax= must hold one matplotlib Axes per panel ({n} = libraries x keys), got {len(axes)}."
            )
        return axes[0].figure, axes, True
    nrows, ncols = len(grid.panels), len(grid.panels[0])
    if wrap is not None:  # one key: lay the libraries out side by side, ``wrap`` per row
        ncols = min(n, wrap)
        nrows = -(-n // ncols)
    aspect = max(_panel_aspect(p) for p in grid.flat)
    side = 4.0 if ncols > 1 else 5.0
    size = figsize or (side * ncols + legend_width, side * aspect * nrows + 0.4)
    fig, axs = plt.subplots(nrows, ncols, figsize=size, layout="constrained", squeeze=False)
    axes = list(axs.ravel())
    for extra in axes[n:]:
        extra.remove()
    return fig, axes[:n], False


def default_title(panel: Panel, n_libraries: int) -> str:
    """``key`` for one library, ``library: key`` for several."""
    return panel.key if n_libraries == 1 else f"{panel.library}: {panel.key}"


def draw_grid(
    table: ad.AnnData,
    grid: Grid,
    axes: list[Axes],
    colourings: dict[str, Colouring],
    *,
    show_split: bool,
    split_key: str,
    method: str | None,
    table_key: str,
    title: str | list[str] | None,
    scalebar: bool,
) -> tuple[list, list[str]]:
    """Draw every panel; return the split legend handles and the method of each panel."""
    flat = grid.flat
    titles = _titles(title, flat, len(grid.panels))
    split_handles: dict[str, object] = {}
    methods = []
    for a, panel, ttl in zip(axes, flat, titles, strict=True):
        methods.append(draw_panel(a, grid.source, table, panel, colourings[panel.key], method=method,
                                  table_key=table_key))  # fmt: skip
        values = table.obs[panel.key].iloc[panel.rows]
        if values.isna().all():
            a.text(0.5, 0.5, f"no {panel.key}\non this section", transform=a.transAxes, ha="center", va="center",
                   fontsize=10, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})  # fmt: skip
        if show_split:
            split = table.obs[split_key].iloc[panel.rows]
            if split.notna().any():
                xlim, ylim = a.get_xlim(), a.get_ylim()
                for h in draw_split(a, panel.xy, split):
                    split_handles[h.get_label()] = h
                a.set_xlim(xlim)
                a.set_ylim(ylim)
        if scalebar:
            add_scalebar(a, panel.microns_per_unit)
        if ttl is not None:
            a.set_title(ttl, fontsize=11)
    if isinstance(title, str) and len(flat) > 1:
        axes[0].figure.suptitle(title)
    return list(split_handles.values()), methods


def _titles(title, flat, n_libraries: int) -> list[str | None]:
    if title is None:
        return [default_title(p, n_libraries) for p in flat]
    if isinstance(title, str):
        return [title] if len(flat) == 1 else [default_title(p, n_libraries) for p in flat]
    title = list(title)
    if len(title) != len(flat):
        raise ValueError(f"title= has {len(title)} entries for {len(flat)} panels (libraries x keys).")
    return title


def place_legend(fig: Figure, axes: list[Axes], handles: list, *, user_ax: bool, title: str | None) -> None:
    """One legend for the whole figure, outside the tissue on the right."""
    if not handles:
        return
    ncol = 1 if len(handles) <= 14 else 2
    kwargs = {"handles": handles, "title": title, "frameon": False, "ncol": ncol, "fontsize": 9,
              "title_fontsize": 10, "handletextpad": 0.3}  # fmt: skip
    if user_ax:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), **kwargs)
    else:
        fig.legend(loc="outside right center", **kwargs)
