"""Drawing one library's spots, cells or tiles over its H&E, through spatialdata-plot.

Each panel is one library: its annotated shapes element, its image, its coordinate system and that system's
microns per unit come from :func:`nichekd._core.spatial.resolve`, so nichekd's own objects (in microns) and
spatialdata-io's (Visium in full-resolution pixels, ...) draw the same way. A panel is drawn in its coordinate
system's units, cropped to the tissue (the spots' extent plus a margin); the scale bar converts its length with
``microns_per_unit``. spatialdata-plot draws the image and the shapes (``render_images`` + ``render_shapes`` +
``show``, with datashader for large panels); nichekd adds the test-split outline, the scale bar and the fixed
niche palette on top. A bare AnnData table is drawn the same way, its ``obsm['spatial']`` wrapped as circles.
There is no other renderer: if spatialdata-plot fails, its error surfaces.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_rgba
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from .._core.spatial import Library, SpatialContext, image_extent, resolve
from .._core.table import table_region_keys

METHODS = (None, "matplotlib", "datashader")
SPLITS = ("train", "test", "buffer")
# One panel of synthetic cells, measured (shared 2-core CPU, warm): 5,000 cells 3.5 s with matplotlib patches,
# 3.6 s with datashader; 50,000 cells 24 s and 9 s. Datashader's first call in a session also compiles (numba,
# ~6 s) and its raster is less crisp, so patches stay up to spatialdata-plot's own switch point.
DATASHADER_MIN_OBS = 10_000
CROP_MARGIN = 0.04  # share of the tissue's larger side added around it
# column names of the light per-panel table; prefixed so they never clash with the user's column
_REGION, _INSTANCE = "_nk_region", "_nk_instance"
DRAW_CS = "global"  # the one coordinate system of a panel's light SpatialData (see _panel_sdata)


@dataclass
class Panel:
    """What one axes shows: one key of one library, from one shapes element over one image."""

    library: str
    key: str
    rows: np.ndarray  # positions in the table
    shapes: str  # shapes element in ``Grid.source``
    instances: np.ndarray  # instance ids of ``rows`` in that element
    image: str | None
    coordinate_system: str
    microns_per_unit: float
    xy: np.ndarray  # centres in coordinate-system units
    width: float  # typical spot/cell/tile width in coordinate-system units

    @property
    def crop(self) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)``: the spots' extent plus a margin, in coordinate-system units."""
        lo, hi = self.xy.min(0), self.xy.max(0)
        pad = self.width / 2 + CROP_MARGIN * float(max(np.max(hi - lo), self.width))
        return lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad


def is_spatialdata(data) -> bool:
    """True for a SpatialData object (not a bare AnnData table)."""
    return not isinstance(data, ad.AnnData)


def nn_spacing(xy: np.ndarray) -> float:
    """Median distance to the nearest other observation (the sampling pitch), in the units of ``xy``."""
    if len(xy) < 2:
        return 1.0
    d, _ = cKDTree(xy).query(xy, k=2)
    d = d[:, 1][d[:, 1] > 0]
    return float(np.median(d)) if len(d) else 1.0


def choose_libraries(ctx: SpatialContext, library: str | list[str] | None) -> list[str]:
    """The libraries to draw, validated, in the table's order."""
    present = list(ctx.libraries)
    if library is None:
        return present
    wanted = [library] if isinstance(library, str) else [str(x) for x in library]
    missing = [x for x in wanted if x not in present]
    if missing:
        column = f"obs[{ctx.library_key!r}]" if ctx.library_key else "the table"
        raise KeyError(
            f"No library {missing} in {column}; the table has {present}. Pass library= one of them."
        )
    return wanted


def _width(lib: Library, xy: np.ndarray) -> float:
    """Spot/cell/tile width in coordinate-system units: the element's size where known, else the pitch."""
    return lib.diameter_um / lib.microns_per_unit if lib.diameter_um else nn_spacing(xy)


def _circles(xy: np.ndarray, diameter: float, coordinate_system: str):
    """Circles at ``xy`` registered (identity) to ``coordinate_system``, indexed 0..n-1."""
    from ..io._build import make_shapes

    return make_shapes(xy, diameter, coordinate_system, index=np.arange(len(xy)))


def panel_source(
    sdata,
    table: ad.AnnData,
    *,
    table_key: str,
    library_key: str | None,
    coordinate_system: str | None,
    microns_per_unit: float | None,
    image_key: str | bool | None,
) -> tuple[Any, SpatialContext, dict[str, tuple]]:
    """The SpatialData to draw from, the resolved context and ``{library: (shapes, instances, cs, mpu)}``.

    Libraries whose rows annotate no shapes element (a bare AnnData, or a table without elements) get circles
    made from their coordinates, added to a new SpatialData; the user's object is not modified.
    """
    from spatialdata import SpatialData

    spatial = is_spatialdata(sdata)
    if spatial and isinstance(image_key, str) and image_key not in sdata.images:
        raise KeyError(
            f"No image {image_key!r}; the object has {sorted(sdata.images)}. Pass image_key=False to omit it."
        )
    ctx = resolve(
        sdata,
        table_key=table_key,
        library_key=library_key,
        coordinate_system=coordinate_system,
        microns_per_unit=microns_per_unit,
        image_key=image_key if isinstance(image_key, str) else None,
        images=spatial and image_key is not False,
    )
    _, instance_key = table_region_keys(table)
    made: dict[str, Any] = {}
    where: dict[str, tuple] = {}
    for name, lib in ctx.libraries.items():
        if spatial and lib.region is not None:
            ids = table.obs[instance_key].to_numpy()[lib.rows]
            where[name] = (lib.region, ids, lib.coordinate_system, lib.microns_per_unit)
            continue
        # no element: circles of the spot/cell size (or the sampling pitch) in the library's units
        cs = lib.coordinate_system or name
        xy = ctx.xy_um[lib.rows] / lib.microns_per_unit
        made[f"_nk_{name}_observations"] = _circles(xy, _width(lib, xy), cs)
        where[name] = (f"_nk_{name}_observations", np.arange(len(xy)), cs, lib.microns_per_unit)
    if not made:
        return sdata, ctx, where
    images = dict(sdata.images) if spatial else {}
    shapes = {**(dict(sdata.shapes) if spatial else {}), **made}
    return SpatialData(images=images, shapes=shapes), ctx, where


def make_panel(
    source,
    ctx: SpatialContext,
    where: dict[str, tuple],
    library: str,
    key: str,
    *,
    image_key: str | bool | None,
) -> Panel:
    """One panel, with its coordinates in its coordinate system and its image checked to hold the spots."""
    lib = ctx.library(library)
    shapes, instances, cs, mpu = where[library]
    xy = ctx.xy_um[lib.rows] / mpu
    width = _width(lib, xy)
    image = None if image_key is False else lib.image
    panel = Panel(library, key, lib.rows, shapes, instances, image, cs, mpu, xy, width)
    if image_key is not False and is_spatialdata(source):
        _check_image(source, panel, explicit=isinstance(image_key, str))
    return panel


def _check_image(sdata, panel: Panel, *, explicit: bool) -> None:
    """Raise if the spots lie on none of the images of their coordinate system: registration or units are wrong.

    The automatic choice skips images that do not hold the spots; when every image of the coordinate system
    misses them, drawing without one would hide the error.
    """
    from spatialdata.transformations import get_transformation

    names = (
        [panel.image]
        if explicit
        else [
            n
            for n, el in sdata.images.items()
            if panel.coordinate_system in (get_transformation(el, get_all=True) or {})
        ]
    )
    if not names or (panel.image is not None and not explicit):
        return
    share = {}
    for name in names:
        (x0, y0), (x1, y1) = image_extent(sdata, name, panel.coordinate_system)
        xy = panel.xy
        share[name] = float(
            ((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)).mean()
        )
    if max(share.values()) < 0.5:
        best = max(share, key=share.get)
        (x0, y0), (x1, y1) = image_extent(sdata, best, panel.coordinate_system)
        raise ValueError(
            f"Library {panel.library!r}: only {share[best]:.0%} of the {panel.shapes} lie on image {best!r} "
            f"(x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} in coordinate system {panel.coordinate_system!r}). "
            "The shapes or the image are registered wrongly (units, offset or swapped x/y); fix the "
            "transformations, or pass image_key=False to plot without the image."
        )


# ---------------------------------------------------------------------------------------------- colours


@dataclass
class Colouring:
    """Either categorical colours (``palette``) or a colormap with a shared norm."""

    palette: dict[str, str] | None = None
    cmap: str | None = None
    norm: Normalize | None = None
    groups: list[str] | None = None
    na_color: str = "#d3d3d3"
    na_alpha: float = 0.5

    def render_kwargs(self) -> dict:
        """The colour arguments of spatialdata-plot's ``render_shapes``."""
        kwargs: dict[str, Any] = {"na_color": to_rgba(self.na_color, self.na_alpha)}
        if self.palette is None:
            return {**kwargs, "cmap": self.cmap, "norm": self.norm}
        # with groups, spatialdata-plot wants one colour per group, in the groups' order
        groups = self.groups
        palette = dict(self.palette) if groups is None else [self.palette[g] for g in groups]
        return {**kwargs, "palette": palette, "groups": groups}


# ---------------------------------------------------------------------------------------------- drawing


def _shapes_in_cs(gdf, instances: np.ndarray, coordinate_system: str):
    """The panel's shapes, moved into ``coordinate_system`` (registered to ``DRAW_CS`` by identity).

    One vectorised affine map (spatialdata's ``transform`` maps geometries one by one: 3 s for 50,000 circles).
    """
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    from .._core.spatial import affine_matrix
    from .._core.units import linear_scale

    aff = affine_matrix(gdf, coordinate_system)
    part = gdf.loc[instances]
    geometry = np.asarray(part.geometry.values)
    if not np.allclose(aff, np.eye(3)):
        geometry = shapely.transform(geometry, lambda c: c @ aff[:2, :2].T + aff[:2, 2])
    data = {"radius": part["radius"].to_numpy(dtype=float) * linear_scale(aff)} if "radius" in part else {}
    moved = gpd.GeoDataFrame(data, geometry=geometry, index=part.index)
    return ShapesModel.parse(moved, transformations={DRAW_CS: Identity()})


def _panel_sdata(source, table: ad.AnnData, panel: Panel, table_key: str):
    """A light SpatialData with only this panel's shapes, cropped image and table rows (one obs column).

    Everything is registered to one coordinate system, ``DRAW_CS``: the shapes already transformed to the panel's
    coordinate system (identity), the image with its transformation to it. spatialdata-plot 0.4's datashader path
    re-parses the transformed shapes with their old transformations and then asks for ``"global"`` (the
    regression of scverse/spatialdata-plot#447), so any other name fails there. spatialdata-plot also prefers a
    stored ``uns[f"{key}_colors"]`` over ``palette=`` and misaligns it when a category is unused; a table
    without ``uns`` sidesteps that. The user's objects are never modified.
    """
    from spatialdata import SpatialData, bounding_box_query
    from spatialdata.models import TableModel
    from spatialdata.transformations import get_transformation, set_transformation

    obs = pd.DataFrame(
        {
            _REGION: pd.Categorical([panel.shapes] * len(panel.rows)),
            _INSTANCE: panel.instances,
            panel.key: table.obs[panel.key].iloc[panel.rows].to_numpy(),
        },
        index=table.obs_names[panel.rows],
    )
    light = TableModel.parse(
        ad.AnnData(obs=obs), region=[panel.shapes], region_key=_REGION, instance_key=_INSTANCE
    )
    shapes = _shapes_in_cs(source.shapes[panel.shapes], panel.instances, panel.coordinate_system)
    images = {}
    if panel.image is not None:
        # crop before spatialdata-plot picks a pyramid level, so the level suits the tissue, not the whole slide
        x0, x1, y0, y1 = panel.crop
        cropped = bounding_box_query(
            source.images[panel.image], axes=("x", "y"), min_coordinate=[x0, y0], max_coordinate=[x1, y1],
            target_coordinate_system=panel.coordinate_system,
        )  # fmt: skip
        if cropped is not None:
            cropped = cropped.copy()  # its own attrs: the new registration stays off the user's image
            to_cs = get_transformation(cropped, to_coordinate_system=panel.coordinate_system)
            set_transformation(cropped, {DRAW_CS: to_cs}, set_all=True)
            images[panel.image] = cropped
    return SpatialData(images=images, shapes={panel.shapes: shapes}, tables={table_key: light})


def _rgb_channels(element) -> list | None:
    """The first three channels of an RGBA image (spatialdata-plot would otherwise blend four channels)."""
    from .._core.patches import level_arrays

    channels = list(level_arrays(element)[0].coords["c"].values)
    return channels[:3] if len(channels) == 4 else None


def draw_panel(
    ax: Axes,
    source,
    table: ad.AnnData,
    panel: Panel,
    colouring: Colouring,
    *,
    method: str | None,
    table_key: str,
) -> str:
    """Draw one panel with spatialdata-plot, cropped to the tissue; return the method used."""
    import spatialdata_plot  # noqa: F401  (registers the .pl accessor)

    if method is None:
        method = "datashader" if len(panel.rows) >= DATASHADER_MIN_OBS else "matplotlib"
    obj = _panel_sdata(source, table, panel, table_key)
    sdp_logger = logging.getLogger("spatialdata_plot._logging")
    level = sdp_logger.level
    sdp_logger.setLevel(logging.ERROR)  # its notes (e.g. "only NaN values") repeat what the panel says
    try:
        with warnings.catch_warnings():
            # version notes of spatialdata(-plot) and matplotlib that say nothing about the user's data
            warnings.filterwarnings("ignore", message=".*is not present in the SpatialData object.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="spatialdata.*")
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
            if panel.image is not None and panel.image in obj.images:
                obj = obj.pl.render_images(panel.image, channel=_rgb_channels(obj.images[panel.image]))
            obj = obj.pl.render_shapes(
                panel.shapes, color=panel.key, table_name=table_key, method=method, colorbar=False,
                **colouring.render_kwargs(),
            )  # fmt: skip
            obj.pl.show(coordinate_systems=DRAW_CS, ax=ax, legend_loc=None, colorbar=False,
                        show=False, title="")  # fmt: skip
    finally:
        sdp_logger.setLevel(level)
    x0, x1, y0, y1 = panel.crop
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # y points down, as in the image
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("")
    ax.set_ylabel("")
    return method


def scalebar_length(span_um: float) -> float:
    """A round length (1, 2 or 5 x 10^k microns) at most a fifth of ``span_um``."""
    target = span_um / 5
    length = 10 ** np.floor(np.log10(target))
    for step in (5, 2, 1):
        if step * length <= target:
            return float(step * length)
    return float(length)


def add_scalebar(ax: Axes, microns_per_unit: float) -> None:
    """A round-number scale bar in microns (or mm), lower right; the axes are in coordinate-system units."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = sorted(ax.get_xlim())
    if x1 <= x0:
        return
    length_um = scalebar_length((x1 - x0) * microns_per_unit)
    label = f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"
    bar = AnchoredSizeBar(
        ax.transData, length_um / microns_per_unit, label, "lower right", pad=0.4, borderpad=0.5, sep=3,
        frameon=True, size_vertical=(x1 - x0) / 150, color="black", fontproperties={"size": 8},
    )  # fmt: skip
    bar.patch.set_alpha(0.7)
    bar.patch.set_edgecolor("none")
    ax.add_artist(bar)


def draw_split(ax: Axes, xy: np.ndarray, split: pd.Series) -> list:
    """Outline the test region (dashed) and hatch the buffer; return legend handles."""
    from matplotlib import patheffects

    labels = split.astype(object).to_numpy()
    spacing = nn_spacing(xy)
    step = spacing / 2
    (x0, y0), (x1, y1) = xy.min(0) - 2 * spacing, xy.max(0) + 2 * spacing
    gx, gy = np.arange(x0, x1 + step, step), np.arange(y0, y1 + step, step)
    mx, my = np.meshgrid(gx, gy)
    d, j = cKDTree(xy).query(np.column_stack([mx.ravel(), my.ravel()]), k=1)
    near = d <= 1.5 * spacing  # grid points off tissue belong to no region
    handles = []
    halo = [patheffects.withStroke(linewidth=3.2, foreground="white")]
    for name, style in (("buffer", "hatch"), ("test", "line")):
        z = (near & (labels[j] == name)).reshape(mx.shape).astype(float)
        if not z.any():
            continue
        z = gaussian_filter(z, 1.0)  # a smooth outline, not the staircase of the sampling grid
        if style == "hatch":
            cs = ax.contourf(mx, my, z, levels=[0.5, 1.5], colors="none", hatches=["////"])
            cs.set_edgecolor((0.15, 0.15, 0.15, 0.8))
            cs.set_linewidth(0)
            handles.append(Patch(facecolor="none", edgecolor="0.15", hatch="////", label="buffer"))
        else:
            cs = ax.contour(mx, my, z, levels=[0.5], colors="black", linewidths=1.6, linestyles="--")
            cs.set_path_effects(halo)
            handles.append(Line2D([], [], color="black", ls="--", lw=1.6, label="test region"))
    return handles


def category_handles(palette: dict[str, str], names: list[str]) -> list:
    """Round markers for a categorical legend."""
    return [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            markersize=8,
            markerfacecolor=palette[n],
            markeredgecolor="none",
            label=n,
        )
        for n in names
    ]
