"""Drawing one library's spots, cells or tiles over its H&E, in microns.

The route is spatialdata-plot (``render_images`` + ``render_shapes`` + ``show``); plain matplotlib (a pyramid
level through ``imshow`` with its micron extent, circles or polygons as collections) is the fallback and the
route for a bare AnnData table. Both draw into the same micron axes (y pointing down), so overlays such as
the split outline work on either.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection, PolyCollection
from matplotlib.colors import Normalize, to_rgba
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from .._elements import resolve
from .._layout import INSTANCE_KEY, REGION_KEY, library_labels, spatial_coords

logger = logging.getLogger(__name__)
RENDERERS = ("auto", "spatialdata_plot", "matplotlib")
SPLITS = ("train", "test", "buffer")
SDP_MAX_OBS = 2000  # above this many observations per panel "auto" draws with matplotlib
_IMAGE_TARGET_PX = 1500  # coarsest pyramid level at least this big is sharp at notebook size


@dataclass
class Panel:
    """What one axes shows: one key of one library, from one shapes element over one image."""

    library: str
    key: str
    rows: np.ndarray  # positions in the table
    shapes: str | None
    image: str | None


def is_spatialdata(data) -> bool:
    """True for a SpatialData object (not a bare AnnData table)."""
    return not isinstance(data, ad.AnnData)


def choose_libraries(table: ad.AnnData, library: str | list[str] | None) -> list[str]:
    """The libraries to draw, validated."""
    labels = library_labels(table)
    present = [str(c) for c in labels.categories if (labels == c).any()]
    if library is None:
        return present
    wanted = [library] if isinstance(library, str) else [str(x) for x in library]
    missing = [x for x in wanted if x not in present]
    if missing:
        raise KeyError(
            f"No library {missing} in obs['library']; the table has {present}. Pass library= one of them."
        )
    return wanted


def _infos(table: ad.AnnData) -> dict:
    # TODO(issue 12, plots): panels take elements, coordinate systems and units from _elements.resolve
    try:
        return resolve(table, images=False).libraries
    except (KeyError, ValueError):
        return {}


def resolve_panels(
    sdata, table: ad.AnnData, keys: list[str], libraries: list[str], *, image_key, shapes_key: str | None
) -> list[list[Panel]]:
    """Rows of panels (one row per library, one panel per key), with elements checked to exist."""
    spatial = is_spatialdata(sdata)
    infos = _infos(table)
    if spatial and shapes_key is not None and shapes_key not in sdata.shapes:
        raise KeyError(f"No shapes element {shapes_key!r}; the object has {sorted(sdata.shapes)}.")
    if spatial and isinstance(image_key, str) and image_key not in sdata.images:
        raise KeyError(
            f"No image {image_key!r}; the object has {sorted(sdata.images)}. Pass image_key=False to omit it."
        )
    labels = np.asarray(library_labels(table))
    regions = np.asarray(table.obs[REGION_KEY]).astype(str) if REGION_KEY in table.obs else None
    grid = []
    for lib in libraries:
        info = infos.get(lib)
        in_lib = labels == lib
        image = None
        if spatial and image_key is not False:
            if isinstance(image_key, str):
                image = image_key
            else:
                default = f"{lib}_he"
                image = default if default in sdata.images else None
        row = []
        for key in keys:
            shapes = shapes_key
            if spatial and shapes is None:
                if regions is None:
                    raise KeyError(
                        "The table has no obs['region']; pass shapes_key= naming the shapes element."
                    )
                has = in_lib & pd.notna(table.obs[key]).to_numpy()
                counts = pd.Series(regions[has if has.any() else in_lib]).value_counts()
                candidates = [r for r in counts.index if r in sdata.shapes]
                if not candidates:
                    raise KeyError(
                        f"Library {lib!r}: the table rows annotate {list(counts.index)}, none of which is a shapes "
                        f"element of the object ({sorted(sdata.shapes)}); pass shapes_key=."
                    )
                recorded = info.region if info is not None else None
                shapes = recorded if recorded in candidates else candidates[0]
            mask = in_lib if (shapes is None or regions is None) else in_lib & (regions == shapes)
            if not mask.any():
                raise ValueError(
                    f"Library {lib!r} has no table rows for shapes {shapes!r}; check shapes_key=."
                )
            row.append(Panel(lib, key, np.flatnonzero(mask), shapes, image))
        grid.append(row)
    return grid


# ---------------------------------------------------------------------------------------------- geometry


def _affine(element, library: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    transforms = get_transformation(element, get_all=True)
    if library not in transforms:
        raise ValueError(
            f"The element is not registered to the coordinate system {library!r} (it has {sorted(transforms)}); "
            "images and shapes of a library must share its coordinate system (microns)."
        )
    return np.asarray(transforms[library].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ m[:2, :2].T + m[:2, 2]


@dataclass
class Geometry:
    """Positions (microns) of a panel's rows: circle centres + radii, or polygons."""

    xy: np.ndarray
    radius: np.ndarray | None
    polygons: list[np.ndarray] | None


def nn_spacing(xy: np.ndarray) -> float:
    """Median distance to the nearest other observation (the sampling pitch)."""
    if len(xy) < 2:
        return 10.0
    d, _ = cKDTree(xy).query(xy, k=2)
    d = d[:, 1][d[:, 1] > 0]
    return float(np.median(d)) if len(d) else 10.0


def panel_geometry(sdata, table: ad.AnnData, panel: Panel) -> Geometry:
    """Where each of the panel's rows is drawn, from the shapes element (or ``obsm['spatial']``)."""
    if panel.shapes is None:
        xy = spatial_coords(table[panel.rows])
        info = _infos(table).get(panel.library)
        diameter = info.diameter_um if info is not None and info.diameter_um else nn_spacing(xy)
        return Geometry(xy, np.full(len(xy), diameter / 2.0), None)
    gdf = sdata.shapes[panel.shapes]
    ids = table.obs[INSTANCE_KEY].to_numpy()[panel.rows] if INSTANCE_KEY in table.obs else panel.rows
    missing = pd.Index(ids).difference(gdf.index)
    if len(missing):
        raise ValueError(
            f"{len(missing)} table rows point to instances missing from shapes {panel.shapes!r} "
            f"(e.g. {list(missing[:3])}); the table and the shapes element are out of sync."
        )
    geoms = gdf.geometry.loc[ids]
    m = _affine(gdf, panel.library)
    if (geoms.geom_type == "Point").all():
        xy = _apply(m, np.column_stack([geoms.x.to_numpy(), geoms.y.to_numpy()]))
        scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
        radius = gdf["radius"].loc[ids].to_numpy(dtype=float) * scale if "radius" in gdf else None
        if radius is None:
            radius = np.full(len(xy), nn_spacing(xy) / 2.0)
        return Geometry(xy, radius, None)
    polys = [_apply(m, np.asarray(g.exterior.coords)[:, :2]) for g in geoms]
    centroids = _apply(m, np.column_stack([geoms.centroid.x.to_numpy(), geoms.centroid.y.to_numpy()]))
    return Geometry(centroids, None, polys)


def image_level(sdata, image: str, library: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A pyramid level about notebook-sized as ``(y, x, c)`` uint8, and its extent ``(x0, x1, y1, y0)``."""
    element = sdata.images[image]
    if hasattr(element, "children") and len(element.children):  # multiscale DataTree
        levels = [
            next(iter(element[name].values())) for name in sorted(element.children, key=lambda s: int(s[5:]))
        ]
    else:
        levels = [element]
    full = levels[0]
    chosen = levels[0]
    for lvl in levels:
        if max(lvl.sizes["y"], lvl.sizes["x"]) >= _IMAGE_TARGET_PX:
            chosen = lvl
    arr = np.asarray(chosen.transpose("y", "x", "c").values)
    if arr.shape[-1] > 3:
        arr = arr[..., :3]
    m = _affine(element, library)
    h, w = full.sizes["y"], full.sizes["x"]
    corners = _apply(m, np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float))
    x0, y0 = corners.min(0)
    x1, y1 = corners.max(0)
    return arr, (x0, x1, y1, y0)


def image_extent(sdata, image: str, library: str) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` of an image in the library's microns, without reading pixels."""
    element = sdata.images[image]
    full = (
        next(iter(element["scale0"].values()))
        if hasattr(element, "children") and len(element.children)
        else element
    )
    m = _affine(element, library)
    h, w = full.sizes["y"], full.sizes["x"]
    corners = _apply(m, np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float))
    return corners[:, 0].min(), corners[:, 0].max(), corners[:, 1].min(), corners[:, 1].max()


def check_on_image(xy: np.ndarray, extent: tuple[float, float, float, float], panel: Panel) -> None:
    """Raise if most observations fall outside the image: the registration or the axes are wrong."""
    x0, x1, y0, y1 = extent
    inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    if inside.mean() < 0.5:
        raise ValueError(
            f"Library {panel.library!r}: only {inside.mean():.0%} of the {panel.shapes or 'observations'} lie on "
            f"image {panel.image!r} (x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} um). The coordinates are probably "
            "not in microns or x/y are swapped; fix the reader's registration, or pass image_key=False to plot "
            "without the image."
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

    def rgba(self, values: pd.Series) -> np.ndarray:
        """RGBA per observation; NaN and observations outside ``groups`` get the NA colour."""
        na = np.array(to_rgba(self.na_color, self.na_alpha))
        out = np.tile(na, (len(values), 1))
        if self.palette is not None:
            vals = values.astype(object).to_numpy()
            keep = pd.notna(vals)
            if self.groups is not None:
                keep &= np.isin(vals.astype(str), self.groups)
            lut = {k: to_rgba(v) for k, v in self.palette.items()}
            out[keep] = [lut[str(v)] for v in vals[keep]]
            return out
        v = values.to_numpy(dtype=float)
        keep = np.isfinite(v)
        out[keep] = colormaps[self.cmap](self.norm(v[keep]))
        return out


# ---------------------------------------------------------------------------------------------- drawing


def _draw_matplotlib(ax: Axes, sdata, table: ad.AnnData, panel: Panel, colouring: Colouring, geom: Geometry):
    if panel.image is not None:
        arr, extent = image_level(sdata, panel.image, panel.library)
        ax.imshow(arr, extent=extent, origin="upper", interpolation="antialiased")
    rgba = colouring.rgba(table.obs[panel.key].iloc[panel.rows])
    # grey (NA / other groups) first so coloured observations sit on top
    order = np.argsort(
        ~np.all(np.isclose(rgba, to_rgba(colouring.na_color, colouring.na_alpha)), axis=1), kind="stable"
    )
    if geom.polygons is not None:
        coll = PolyCollection([geom.polygons[i] for i in order], facecolors=rgba[order], edgecolors="none")
    else:
        d = 2 * geom.radius[order]
        coll = EllipseCollection(
            d, d, np.zeros(len(d)), units="xy", offsets=geom.xy[order], offset_transform=ax.transData,
            facecolors=rgba[order], edgecolors="none",
        )  # fmt: skip
    ax.add_collection(coll)
    if panel.image is None:
        pad = float(np.max(geom.radius)) if geom.radius is not None else nn_spacing(geom.xy)
        (x0, y0), (x1, y1) = geom.xy.min(0) - pad, geom.xy.max(0) + pad
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
    else:
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")


def _panel_sdata(sdata, table: ad.AnnData, panel: Panel, table_key: str):
    """A light SpatialData with only this panel's image, shapes and table rows (obs columns it needs).

    spatialdata-plot 0.4 prefers a stored ``uns[f"{key}_colors"]`` over ``palette=`` and misaligns it when a
    category is unused; a table without ``uns`` sidesteps that, and the user's objects are never touched.
    """
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    obs = table.obs.iloc[panel.rows][[REGION_KEY, INSTANCE_KEY, panel.key]].copy()
    obs[REGION_KEY] = pd.Categorical([panel.shapes] * len(obs))
    light = ad.AnnData(obs=obs)
    light = TableModel.parse(light, region=[panel.shapes], region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    images = {panel.image: sdata.images[panel.image]} if panel.image is not None else {}
    return SpatialData(
        images=images, shapes={panel.shapes: sdata.shapes[panel.shapes]}, tables={table_key: light}
    )


def _draw_spatialdata_plot(
    ax: Axes, sdata, table: ad.AnnData, panel: Panel, colouring: Colouring, table_key: str
):
    import spatialdata_plot  # noqa: F401  (registers the .pl accessor)

    obj = _panel_sdata(sdata, table, panel, table_key)
    if panel.image is not None:
        obj = obj.pl.render_images(panel.image)
    kwargs = {"table_name": table_key, "method": "matplotlib", "colorbar": False}
    if colouring.palette is not None:
        # with groups, spatialdata-plot wants one colour per group, in the groups' order
        groups = colouring.groups
        kwargs["palette"] = (
            dict(colouring.palette) if groups is None else [colouring.palette[g] for g in groups]
        )
        kwargs["groups"] = groups
        kwargs["na_color"] = to_rgba(colouring.na_color, colouring.na_alpha)
    else:
        kwargs["cmap"] = colouring.cmap
        kwargs["norm"] = colouring.norm
        kwargs["na_color"] = to_rgba(colouring.na_color, colouring.na_alpha)
    obj = obj.pl.render_shapes(panel.shapes, color=panel.key, **kwargs)
    sdp_logger = logging.getLogger("spatialdata_plot._logging")
    level = sdp_logger.level
    sdp_logger.setLevel(logging.ERROR)  # its notes (e.g. "only NaN values") repeat what the panel says
    try:
        with warnings.catch_warnings():
            # version notes of spatialdata(-plot) that say nothing about the user's data
            warnings.filterwarnings("ignore", message=".*is not present in the SpatialData object.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="spatialdata.*")
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="spatialdata_plot.*")
            obj.pl.show(coordinate_systems=panel.library, ax=ax, legend_loc=None, colorbar=False, show=False,
                        title="")  # fmt: skip
    finally:
        sdp_logger.setLevel(level)


def draw_panel(
    ax: Axes,
    sdata,
    table: ad.AnnData,
    panel: Panel,
    colouring: Colouring,
    *,
    geom: Geometry,
    renderer: str,
    table_key: str,
) -> tuple[str, Geometry]:
    """Draw one panel (geometry already checked); return the route used and the geometry."""
    route = renderer
    if renderer == "auto":
        # spatialdata-plot draws the same picture ~20x slower (6 s for 3,000 circles): large panels skip it
        usable = is_spatialdata(sdata) and panel.shapes is not None and len(panel.rows) <= SDP_MAX_OBS
        route = "spatialdata_plot" if usable else "matplotlib"
    if route == "spatialdata_plot":
        if not is_spatialdata(sdata) or panel.shapes is None:
            raise ValueError(
                "renderer='spatialdata_plot' needs a SpatialData object with shapes; use 'matplotlib'."
            )
        try:
            with warnings.catch_warnings():  # spatialdata-plot's own pending deprecations
                warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
                _draw_spatialdata_plot(ax, sdata, table, panel, colouring, table_key)
        except Exception as err:  # noqa: BLE001  spatialdata-plot is fragile across versions: fall back
            if renderer != "auto":
                raise
            logger.warning(
                "spatialdata-plot failed (%s: %s); drawing with matplotlib instead.", type(err).__name__, err
            )
            ax.cla()
            route = "matplotlib"
    if route == "matplotlib":
        _draw_matplotlib(ax, sdata, table, panel, colouring, geom)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("")
    ax.set_ylabel("")
    return route, geom


def add_scalebar(ax: Axes) -> None:
    """A round-number scale bar in microns, lower right."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = sorted(ax.get_xlim())
    target = (x1 - x0) / 5
    if target <= 0:
        return
    length = 10 ** np.floor(np.log10(target))
    for step in (5, 2, 1):
        if step * length <= target:
            length *= step
            break
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm"
    bar = AnchoredSizeBar(
        ax.transData, length, label, "lower right", pad=0.4, borderpad=0.5, sep=3, frameon=True,
        size_vertical=(x1 - x0) / 150, color="black", fontproperties={"size": 8},
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
