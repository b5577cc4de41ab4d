"""Image access shared by every nichekd function: find a library's H&E, its pyramid levels, their scale in
microns, and fast patch extraction.

Geometry follows spatialdata: pixel ``(col, row)`` covers the continuous intrinsic square
``[col, col + 1) x [row, row + 1)``, and the element's transformation maps intrinsic ``(x, y)`` to the
coordinate system (microns). Level ``k`` of a pyramid covers the same area as level 0 with fewer pixels, so
its intrinsic coordinates are level-0 coordinates divided by the per-axis shape ratio.

Patches are read chunk-wise: patches are grouped by image tiles, each tile region (plus a margin for the
patches that stick out of it) is read once from the dask array, and every patch of the group is resampled
from it in one ``grid_sample`` call. Reading one patch at a time through dask is an order of magnitude slower.

Pixel values follow one rule per image (:attr:`ImagePyramid.pixel_rule`, from :mod:`nichekd._core.image`), the
readers' rule, so that an image element made by hand or by another tool reads like one from a nichekd reader:
channels by their names (``b, g, r`` reordered, alpha dropped), integers by the range their data were recorded in
(8-bit values kept, 12-bit data in a 16-bit file ``x * 255 / 4095``, full-range 16-bit ``x * 255 / 65535``) and
floats as ``[0, 1]`` or ``[0, 255]``, decided once from a sample of the whole image (never tile by tile, so
patches of one image stay comparable). NaN and infinite pixels (scanner padding) are read as background, white
glass, with one warning per image naming their share of the pixels read. An image read lazily from a store that
was deleted since is refused, naming its files (:mod:`nichekd._core.backing`), before any pixel is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKGROUND = 255  # white glass: what lies outside the scanned area

# Tiles are read whole; larger dask chunks are split so that no read comes near loading a slide.
MAX_TILE_PX = 2048


@dataclass(frozen=True)
class ImageLevel:
    """One resolution of an image with its pixel -> micron mapping."""

    index: int
    data: Any  # xarray.DataArray with dims (c, y, x), usually dask-backed
    to_um: np.ndarray  # (3, 3) affine: intrinsic (x, y) of this level -> coordinate-system (x, y)
    pixels: Any = None  # the image's _Pixels (one pixel rule shared by every level); None: from this level

    @property
    def shape_yx(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return int(self.data.sizes["y"]), int(self.data.sizes["x"])

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """Microns per pixel along the pixel x (columns) and y (rows) axes; they differ for non-square pixels."""
        lin = self.to_um[:2, :2]
        return float(np.linalg.norm(lin[:, 0])), float(np.linalg.norm(lin[:, 1]))

    @property
    def mpp(self) -> float:
        """The coarser of the two pixel sizes: the resolution this level can resolve everywhere."""
        return max(self.mpp_xy)

    def um_to_px(self, xy_um: np.ndarray) -> np.ndarray:
        """Continuous intrinsic ``(x, y)`` of micron positions (pixel ``i`` spans ``[i, i + 1)``)."""
        inv = np.linalg.inv(self.to_um)
        xy = np.asarray(xy_um, dtype=float)
        return xy @ inv[:2, :2].T + inv[:2, 2]

    def px_to_um(self, xy_px: np.ndarray) -> np.ndarray:
        """Micron positions of continuous intrinsic ``(x, y)``."""
        xy = np.asarray(xy_px, dtype=float)
        return xy @ self.to_um[:2, :2].T + self.to_um[:2, 2]


@dataclass(frozen=True)
class ImagePyramid:
    """All levels of one image element in one coordinate system, finest first."""

    name: str
    coordinate_system: str
    levels: tuple[ImageLevel, ...]

    @property
    def extent_um(self) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` in microns of the image's bounding box."""
        h, w = self.levels[0].shape_yx
        corners = self.levels[0].px_to_um(np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float))
        return (
            *map(float, (corners[:, 0].min(), corners[:, 0].max())),
            *map(float, (corners[:, 1].min(), corners[:, 1].max())),
        )

    def level_for(self, target_mpp: float) -> ImageLevel:
        """The coarsest level still at least as fine as ``target_mpp`` (the finest level if none is)."""
        ok = [lv for lv in self.levels if lv.mpp <= target_mpp * (1 + 1e-6)]
        return max(ok, key=lambda lv: lv.mpp) if ok else self.levels[0]

    @property
    def pixel_rule(self):
        """The :class:`~nichekd._core.image.PixelRule` of this image: channels and 8-bit scaling, worked out
        once from the whole image and applied alike to every tile of every level (its ``rule`` is the text to
        record)."""
        return level_rule(self.levels[0])


class _Pixels:
    """The pixel rule of one image element, worked out once (on first use) and shared by all its levels, and
    a count of the NaN/infinite pixels read from it."""

    def __init__(self, name: str, arrays: list[Any]):
        import threading

        self.name, self._arrays, self._rule = name, arrays, None
        self._lock = threading.Lock()
        self.nonfinite, self.read, self.warned = 0, 0, False

    def __repr__(self) -> str:
        return f"_Pixels({self.name!r})"

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        import threading

        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def rule(self):
        with self._lock:
            if self._rule is None:
                self._rule = _image_rule(self.name, self._arrays)
            return self._rule

    def count(self, nonfinite: int, read: int) -> None:
        with self._lock:
            self.nonfinite += int(nonfinite)
            self.read += int(read)


def _image_rule(name: str, arrays: list[Any]):
    """The pixel rule of an image from its levels: channels from their names, the dtype rule from a strided
    sample of the coarsest level still >= 512 px on its long side (the whole image, cheaply)."""
    import warnings

    from .backing import check_element_files
    from .image import _RANGE_SAMPLE_SIDE, pixel_rule

    check_element_files(arrays[-1], "image", name)  # a deleted store would read as blank pixels
    ref = arrays[0]
    for arr in arrays:  # finest first: keep the coarsest one that is still large enough
        if max(int(arr.sizes["y"]), int(arr.sizes["x"])) >= _RANGE_SAMPLE_SIDE:
            ref = arr
    rule = pixel_rule(arrays[0], ref, source=f"image {name!r}")
    if len(rule.channels) == 1:
        warnings.warn(
            f"Image {name!r} is grayscale: read as RGB by repeating the channel. Stain colour is lost, so "
            "colour-based features differ from those of a colour scan.",
            UserWarning,
            stacklevel=4,
        )
    if rule.scale is not None:
        warnings.warn(
            f"Image {name!r} is {arrays[0].dtype}, not uint8: every tile is read with one rule for the whole "
            f"image ({rule.rule}).",
            UserWarning,
            stacklevel=4,
        )
    return rule


def level_rule(level: ImageLevel):
    """The pixel rule of the image ``level`` belongs to (from the level itself when it was built alone)."""
    if level.pixels is not None:
        return level.pixels.rule
    from .image import pixel_rule

    return pixel_rule(level.data, source="image")


def _warn_nonfinite(pixels: _Pixels | None, before: tuple[int, int]) -> None:
    """Warn once per image when pixels read since ``before`` (``(nonfinite, read)``) were NaN or infinite."""
    if pixels is None or pixels.warned:
        return
    bad, read = pixels.nonfinite - before[0], pixels.read - before[1]
    if bad:
        import warnings

        pixels.warned = True
        warnings.warn(
            f"Image {pixels.name!r}: {bad} of the {read} pixels read ({bad / max(read, 1):.2%}) are NaN or "
            f"infinite; they are read as background (white glass, {BACKGROUND}). Fill them (or crop the image) "
            "if they lie on tissue.",
            UserWarning,
            stacklevel=3,
        )


def level_arrays(element) -> list[Any]:
    """The ``(c, y, x)`` DataArray of every level, finest first, for a DataTree or a DataArray."""
    from xarray import DataTree

    if isinstance(element, DataTree):
        from spatialdata import get_pyramid_levels

        return list(get_pyramid_levels(element))
    return [element]


def image_pyramid(
    sdata, image_key: str, coordinate_system: str, *, microns_per_unit: float = 1.0
) -> ImagePyramid:
    """Levels of ``sdata.images[image_key]`` with their mapping to microns.

    ``microns_per_unit`` converts units of ``coordinate_system`` to microns (see
    :func:`nichekd.resolve`, which finds it). Works for multiscale (DataTree) and single-scale
    (DataArray) elements and for any registered transformation (Scale, Affine, Sequence, with non-square
    pixels or rotation).
    """
    from spatialdata.transformations import get_transformation

    element = sdata.images[image_key]
    transforms = get_transformation(element, get_all=True) or {}
    if coordinate_system not in transforms:
        raise ValueError(
            f"Image {image_key!r} is not registered to the coordinate system {coordinate_system!r} "
            f"(it is registered to {sorted(transforms)}). Register it in microns with "
            "spatialdata.transformations.set_transformation(image, Scale([mpp, mpp], axes=('y', 'x')), "
            f"to_coordinate_system={coordinate_system!r})."
        )
    to_um0 = np.asarray(
        transforms[coordinate_system].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")),
        dtype=float,
    )
    to_um0 = np.diag([microns_per_unit, microns_per_unit, 1.0]) @ to_um0
    if abs(np.linalg.det(to_um0[:2, :2])) < 1e-12:
        raise ValueError(
            f"The transformation of image {image_key!r} is singular; it cannot map microns to pixels."
        )
    arrays = level_arrays(element)
    for arr in arrays:
        if set(arr.dims) != {"c", "y", "x"}:
            raise ValueError(
                f"Image {image_key!r} must have dims (c, y, x) (a 2D RGB image), got {arr.dims}."
            )
    h0, w0 = int(arrays[0].sizes["y"]), int(arrays[0].sizes["x"])
    pixels = _Pixels(image_key, arrays)  # one pixel rule for every level, worked out on first use
    levels = []
    for i, arr in enumerate(arrays):
        # level-k intrinsic -> level-0 intrinsic is a pure per-axis scale (pixel areas nest, no half-pixel shift)
        sx, sy = w0 / int(arr.sizes["x"]), h0 / int(arr.sizes["y"])
        levels.append(ImageLevel(index=i, data=arr, to_um=to_um0 @ np.diag([sx, sy, 1.0]), pixels=pixels))
    return ImagePyramid(name=image_key, coordinate_system=coordinate_system, levels=tuple(levels))


def check_patch_geometry(pyramid: ImagePyramid, centres_um: np.ndarray, patch_size_um: float) -> None:
    """Raise if the patch is below one pixel, larger than the image, or centres lie off the image."""
    fine = pyramid.levels[0]
    h, w = fine.shape_yx
    mpp_min = min(fine.mpp_xy)
    if not np.isfinite(patch_size_um) or patch_size_um <= 0:
        raise ValueError(f"patch_size_um must be a positive number of microns, got {patch_size_um!r}.")
    if patch_size_um < max(fine.mpp_xy):
        raise ValueError(
            f"patch_size_um={patch_size_um:g} is below one pixel of image {pyramid.name!r} "
            f"({max(fine.mpp_xy):g} um/px at full resolution). Patch sizes are in microns, not pixels: use a larger value."
        )
    x0, x1, y0, y1 = pyramid.extent_um
    if patch_size_um > min(x1 - x0, y1 - y0):
        raise ValueError(
            f"patch_size_um={patch_size_um:g} is larger than image {pyramid.name!r} "
            f"({x1 - x0:.4g} x {y1 - y0:.4g} um). Patch sizes are in microns; check the value and the image's mpp."
        )
    px = fine.um_to_px(centres_um)
    half = patch_size_um / 2 / mpp_min
    off = (px[:, 0] < -half) | (px[:, 0] > w + half) | (px[:, 1] < -half) | (px[:, 1] > h + half)
    if off.any():
        bad = np.flatnonzero(off)
        raise ValueError(
            f"{off.sum()} of {len(px)} centres lie off image {pyramid.name!r} (e.g. index {bad[:3].tolist()} at "
            f"{np.round(np.asarray(centres_um)[bad[:3]], 1).tolist()} um; the image spans x {x0:.1f}..{x1:.1f}, "
            f"y {y0:.1f}..{y1:.1f} um). Coordinates must be microns in the library's coordinate system: check "
            "obsm['spatial'] units and the image registration."
        )


def _read_region(level: ImageLevel, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``(3, y1 - y0, x1 - x0)`` uint8 RGB region; parts outside the image, and NaN pixels, are background.

    Pixels become RGB uint8 by the image's one rule (:attr:`ImagePyramid.pixel_rule`: channels by name, 16-bit and
    float values scaled alike on every tile), never by what one tile holds.
    """
    h, w = level.shape_yx
    out = np.full((3, y1 - y0, x1 - x0), BACKGROUND, dtype=np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return out
    rule = level_rule(level)
    block = level.data.data[rule.read, cy0:cy1, cx0:cx1]
    # synchronous: tiles are already read ahead in our own threads, and a dask worker thread must never wait on
    # its own cluster (dask.config.set(scheduler=...) is process-global, so it cannot protect a worker thread)
    block = np.asarray(block.compute(scheduler="synchronous") if hasattr(block, "compute") else block)
    block, nonfinite = rule.to_rgb(block, BACKGROUND)
    if level.pixels is not None:
        level.pixels.count(nonfinite, block.shape[1] * block.shape[2])
    out[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = block
    return out


def _patch_grids(level: ImageLevel, centres_um: np.ndarray, size_um: float, out_px: int) -> np.ndarray:
    """``(n, out, out, 2)`` pixel-index coordinates (x, y) of every output pixel centre, in ``level``."""
    t = (np.arange(out_px, dtype=np.float32) + 0.5) / out_px - 0.5  # output pixel centres, patch fractions
    off = np.stack(np.meshgrid(t * size_um, t * size_um, indexing="xy"), axis=-1)  # (out, out, 2) microns
    inv = np.linalg.inv(level.to_um)[:2, :2].astype(np.float32)
    centre_px = level.um_to_px(centres_um).astype(np.float32)  # continuous
    grid = centre_px[:, None, None, :] + (off @ inv.T)[None]
    return grid - np.float32(0.5)  # continuous -> pixel-index coordinates (pixel i's centre is at i + 0.5)


def _prepare(region: np.ndarray, scale: float) -> np.ndarray:
    """The region box-averaged by ``k = floor(scale)`` when ``k >= 2`` (anti-aliasing), still uint8."""
    k = int(np.floor(scale))
    if k < 2:
        return region
    import torch
    import torch.nn.functional as F

    img = torch.from_numpy(region).float()[None]
    ph, pw = (-img.shape[2]) % k, (-img.shape[3]) % k
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=float(BACKGROUND))
    return F.avg_pool2d(img, k)[0].add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def _sample(region: np.ndarray, grids: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear resampling of ``region`` (from :func:`_prepare`) at ``grids`` (n, o, o, 2 region-local pixel
    indices) -> ``(n, 3, o, o)`` uint8. Each patch is cropped first so that ``grid_sample`` works on small
    inputs (much faster than sampling the whole region)."""
    import torch
    import torch.nn.functional as F

    n, o = grids.shape[:2]
    k = int(np.floor(scale))
    if k >= 2:
        grids = (grids + 0.5) / k - 0.5
    h, w = region.shape[1:]
    # the grid is affine in the output pixel: its four corners bound it
    corners = grids[:, [0, 0, -1, -1], [0, -1, 0, -1], :]
    lo = np.floor(corners.min(1)).astype(int)
    sx, sy = (np.ceil(corners.max(1)).astype(int) - lo).max(0) + 2
    if sx > w or sy > h:  # cannot happen with the region margin; keep the crop inside the region anyway
        region = np.pad(
            region, ((0, 0), (0, max(0, sy - h)), (0, max(0, sx - w))), constant_values=BACKGROUND
        )
        h, w = region.shape[1:]
    lo = np.clip(lo, 0, [w - sx, h - sy])
    crops = np.stack([region[:, y : y + sy, x : x + sx] for x, y in lo])
    g = torch.from_numpy((grids - lo[:, None, None, :]).astype(np.float32))
    g[..., 0] = g[..., 0] * (2.0 / max(sx - 1, 1)) - 1.0
    g[..., 1] = g[..., 1] * (2.0 / max(sy - 1, 1)) - 1.0
    out = F.grid_sample(
        torch.from_numpy(crops).float(), g, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def _slice(region: np.ndarray, centres_px: np.ndarray, out_px: int) -> np.ndarray:
    """``(n, 3, out, out)`` crops of ``region`` whose pixel corners lie nearest to ``centre - out / 2``."""
    starts = np.rint(centres_px - out_px / 2).astype(int)
    return np.stack([region[:, y : y + out_px, x : x + out_px] for x, y in starts])


def _tile_size(level: ImageLevel) -> tuple[int, int]:
    """Tile (rows, cols): the dask chunk size, split so that no tile exceeds ``MAX_TILE_PX``."""
    chunks = getattr(level.data.data, "chunks", None)
    if chunks is None:
        return MAX_TILE_PX, MAX_TILE_PX
    cy, cx = max(chunks[1]), max(chunks[2])
    return min(cy, MAX_TILE_PX), min(cx, MAX_TILE_PX)


def iter_patches(
    pyramid: ImagePyramid,
    centres_um: np.ndarray,
    patch_size_um: float,
    out_px: int,
    *,
    level: ImageLevel | None = None,
    num_workers: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, patches)`` with ``patches`` ``(n, 3, out_px, out_px)`` uint8 RGB, tile by tile.

    Each patch is the square of side ``patch_size_um`` (axis-aligned in microns) centred on its centre,
    resampled to ``out_px`` pixels from ``level`` (default: the coarsest level at least as fine as
    ``patch_size_um / out_px``). Areas outside the image are background (255), never wrapped. Tile reads
    run ahead in ``num_workers`` threads while the previous tile is resampled.
    """
    centres = np.asarray(centres_um, dtype=float).reshape(-1, 2)
    lv = level if level is not None else pyramid.level_for(patch_size_um / out_px)
    level_rule(lv)  # the image's pixel rule (and its warning) is worked out here, not in a reader thread
    counted = (lv.pixels.nonfinite, lv.pixels.read) if lv.pixels is not None else (0, 0)
    h, w = lv.shape_yx
    scale = patch_size_um / out_px / min(lv.mpp_xy)  # level pixels per output pixel (finest axis)
    px = lv.um_to_px(centres)
    ty, tx = _tile_size(lv)
    tile_id = np.clip(np.floor(px[:, 1] / ty), -1, h // ty + 1) * 1e6 + np.clip(
        np.floor(px[:, 0] / tx), -1, w // tx + 1
    )
    order = np.argsort(tile_id, kind="stable")
    bounds = np.flatnonzero(np.diff(tile_id[order])) + 1
    groups = np.split(order, bounds) if len(order) else []
    # bound memory: the sampling grid is n * out_px**2 * 2 floats
    per_call = max(1, int(2**22 // (out_px * out_px)))
    # per-patch bounding box in level pixels (corners of the micron square) plus a resampling margin
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], dtype=float) * (patch_size_um / 2)
    inv = np.linalg.inv(lv.to_um)[:2, :2]
    reach = np.abs(corners @ inv.T).max(0) + 2 + np.ceil(scale)

    # output pixels == level pixels on an axis-aligned grid: plain slicing (centre rounded to the nearest
    # pixel corner, at most half a pixel off) instead of resampling
    lin = lv.to_um[:2, :2]
    step = patch_size_um / out_px
    pixel_exact = bool(
        abs(lin[0, 1]) < 1e-12 and abs(lin[1, 0]) < 1e-12 and lin[0, 0] > 0 and lin[1, 1] > 0
        and abs(lin[0, 0] - step) < 1e-6 * step and abs(lin[1, 1] - step) < 1e-6 * step
    )  # fmt: skip

    pool_k = max(1, int(np.floor(scale)))

    def region_of(idx: np.ndarray) -> tuple[int, int, int, int]:
        lo = np.floor(px[idx].min(0) - reach).astype(int)
        # box-averaging blocks start on multiples of k in level pixels, so a patch never depends on which
        # other cells share its read region (same features whatever the table or partition)
        lo -= lo % pool_k
        hi = np.ceil(px[idx].max(0) + reach).astype(int)
        return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])

    def load(idx: np.ndarray):
        x0, y0, x1, y1 = region_of(idx)
        return idx, (x0, y0), _read_region(lv, x0, y0, x1, y1)

    with ThreadPoolExecutor(max_workers=max(1, int(num_workers))) as pool:
        pending = [pool.submit(load, g) for g in groups[: max(1, num_workers) + 1]]
        nxt = len(pending)
        while pending:
            idx, (x0, y0), region = pending.pop(0).result()
            if nxt < len(groups):
                pending.append(pool.submit(load, groups[nxt]))
                nxt += 1
            if pixel_exact:
                yield idx, _slice(region, px[idx] - np.array([x0, y0]), out_px)
                continue
            region = _prepare(region, scale)
            for s in range(0, len(idx), per_call):
                sub = idx[s : s + per_call]
                grids = _patch_grids(lv, centres[sub], patch_size_um, out_px) - np.array(
                    [x0, y0], dtype=np.float32
                )
                yield sub, _sample(region, grids, scale)
    _warn_nonfinite(lv.pixels, counted)


def read_patches(
    pyramid: ImagePyramid, centres_um: np.ndarray, patch_size_um: float, out_px: int, **kwargs: Any
) -> np.ndarray:
    """All patches at once, in the order of ``centres_um`` (see :func:`iter_patches`)."""
    centres = np.asarray(centres_um, dtype=float).reshape(-1, 2)
    out = np.empty((len(centres), 3, out_px, out_px), dtype=np.uint8)
    for idx, patches in iter_patches(pyramid, centres, patch_size_um, out_px, **kwargs):
        out[idx] = patches
    return out
