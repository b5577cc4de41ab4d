"""A grid of tissue panels (rows: libraries, columns: keys), shared by the niche and uncertainty maps.

Preparing (finding elements, reading geometry, checking the coordinates land on the image) is separate from
drawing, so that every check runs before anything is written to the user's table.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._spatial import (
    RENDERERS,
    SPLITS,
    Colouring,
    Geometry,
    Panel,
    add_scalebar,
    check_on_image,
    choose_libraries,
    draw_panel,
    draw_split,
    image_extent,
    panel_geometry,
    resolve_panels,
)
from ._utils import check_obs_key


@dataclass
class Grid:
    """Validated panels and their geometry, ready to draw."""

    panels: list[list[Panel]]
    geoms: list[list[Geometry]]

    @property
    def flat(self) -> list[tuple[Panel, Geometry]]:
        """Panels row by row with their geometry."""
        return [
            (p, g)
            for prow, grow in zip(self.panels, self.geoms, strict=True)
            for p, g in zip(prow, grow, strict=True)
        ]


def prepare_grid(
    sdata,
    table: ad.AnnData,
    keys: list[str],
    *,
    library,
    image_key,
    shapes_key: str | None,
    show_split: bool,
    split_key: str,
    renderer: str,
) -> Grid:
    """Resolve and check everything the maps need; raises before anything is drawn or written."""
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}.")
    if show_split:
        check_obs_key(table, split_key, hint="Run nichekd.pp.spatial_split first, or pass show_split=False.")
        values = set(table.obs[split_key].dropna().astype(str))
        if not values <= set(SPLITS):
            raise ValueError(f"obs[{split_key!r}] must hold {SPLITS}, found {sorted(values - set(SPLITS))}.")
    libraries = choose_libraries(table, library)
    panels = resolve_panels(sdata, table, keys, libraries, image_key=image_key, shapes_key=shapes_key)
    geoms = []
    extents: dict[tuple[str, str], tuple] = {}
    for row in panels:
        grow = []
        for panel in row:
            geom = panel_geometry(sdata, table, panel)
            if panel.image is not None:
                ext = extents.setdefault(
                    (panel.image, panel.library), image_extent(sdata, panel.image, panel.library)
                )
                check_on_image(geom.xy, ext, panel)
            grow.append(geom)
        geoms.append(grow)
    return Grid(panels, geoms)


def _panel_aspect(geom: Geometry) -> float:
    span = np.ptp(geom.xy, axis=0) if len(geom.xy) > 1 else np.ones(2)
    return float(np.clip(span[1] / max(span[0], 1e-9), 0.4, 2.5))


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
    aspect = max(_panel_aspect(g) for row in grid.geoms for g in row)
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
    sdata,
    table: ad.AnnData,
    grid: Grid,
    axes: list[Axes],
    colourings: dict[str, Colouring],
    *,
    show_split: bool,
    split_key: str,
    renderer: str,
    table_key: str,
    title: str | list[str] | None,
    scalebar: bool,
) -> tuple[list, list[str]]:
    """Draw every panel; return the split legend handles and the routes used."""
    flat = grid.flat
    titles = _titles(title, flat, len(grid.panels))
    split_handles: dict[str, object] = {}
    routes = []
    for a, (panel, geom), ttl in zip(axes, flat, titles, strict=True):
        route, _ = draw_panel(a, sdata, table, panel, colourings[panel.key], geom=geom, renderer=renderer,
                              table_key=table_key)  # fmt: skip
        routes.append(route)
        values = table.obs[panel.key].iloc[panel.rows]
        if values.isna().all():
            a.text(0.5, 0.5, f"no {panel.key}\non this section", transform=a.transAxes, ha="center", va="center",
                   fontsize=10, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})  # fmt: skip
        if show_split:
            split = table.obs[split_key].iloc[panel.rows]
            if split.notna().any():
                xlim, ylim = a.get_xlim(), a.get_ylim()
                for h in draw_split(a, geom.xy, split):
                    split_handles[h.get_label()] = h
                a.set_xlim(xlim)
                a.set_ylim(ylim)
        if scalebar:
            add_scalebar(a)
        if ttl is not None:
            a.set_title(ttl, fontsize=11)
    if isinstance(title, str) and len(flat) > 1:
        axes[0].figure.suptitle(title)
    return list(split_handles.values()), routes


def _titles(title, flat, n_libraries: int) -> list[str | None]:
    if title is None:
        return [default_title(p, n_libraries) for p, _ in flat]
    if isinstance(title, str):
        return [title] if len(flat) == 1 else [default_title(p, n_libraries) for p, _ in flat]
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
