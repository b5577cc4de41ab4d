"""Image access shared by every nichekd function: find a library's H&E, its pyramid levels, their scale in
microns, and fast patch extraction.

Geometry follows spatialdata: pixel ``(col, row)`` covers the continuous intrinsic square
``[col, col + 1) x [row, row + 1)``, and the element's transformation maps intrinsic ``(x, y)`` to the
coordinate system (microns). Level ``k`` of a pyramid covers the same area as level 0 with fewer pixels, so
its intrinsic coordinates are level-0 coordinates divided by the per-axis shape ratio.

Patches are read chunk-wise: patches are grouped by image tiles, each tile region (plus a margin for the
patches that stick out of it) is read once from the dask array, and the group's patches are resampled from it
in blocks, in worker threads: axis-aligned ones by separable bilinear interpolation (rows, then columns),
rotated or sheared ones with ``grid_sample``. Reading one patch at a time through dask is an order of magnitude
slower.

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

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKGROUND = 255  # white glass: what lies outside the scanned area

# Tiles are read whole; larger dask chunks are split so that no read comes near loading a slide.
MAX_TILE_PX = 2048

# size of the work arrays of the separable resampling, in floats (1 MB): it sets how many patches one pass
# takes (measured fastest on 2 cores)
_PASS_FLOATS = 2**18


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


def _patch_frames(
    level: ImageLevel, centres_um: np.ndarray, size_um: float, out_px: int, origin: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the output pixels of each patch sample ``level``: row ``i``, column ``j`` of patch ``p`` at
    ``centre[p] + t[j] * step[:, 0] + t[i] * step[:, 1]``.

    Positions are pixel indices (pixel ``i``'s centre at ``i``) of the region read from level pixel ``origin``
    ``(x, y)`` and box-averaged by ``k`` (:func:`_prepare`; ``k = 1``: not averaged).

    Returns
    -------
    centre
        ``(n, 2)`` patch centres ``(x, y)``.
    step
        ``(2, 2)`` displacement across the whole patch: column 0 along output x, column 1 along output y.
    t
        ``(out_px,)`` output pixel centres as fractions of the patch (``-0.5 .. 0.5``).
    """
    t = (np.arange(out_px) + 0.5) / out_px - 0.5
    inv = np.linalg.inv(level.to_um)[:2, :2]
    # continuous level px -> continuous px of the averaged region -> pixel index (pixel i spans [i, i + 1))
    centre = (level.um_to_px(centres_um) - origin) / k - 0.5
    return centre, inv * (size_um / k), t


def _axis_aligned(step: np.ndarray) -> bool:
    """Whether output rows and columns follow region rows and columns (no rotation or shear): bilinear
    sampling is then separable. The off-diagonal displacement over the whole patch must be below 1e-6 px."""
    return bool(abs(step[0, 1]) + abs(step[1, 0]) < 1e-6)


def _prepare(region: np.ndarray, scale: float) -> np.ndarray:
    """The region box-averaged by ``k = floor(scale)`` when ``k >= 2`` (anti-aliasing), rounded half up to uint8;
    the last partial blocks are averaged with background."""
    k = int(np.floor(scale))
    if k < 2:
        return region
    ph, pw = (-region.shape[1]) % k, (-region.shape[2]) % k
    if ph or pw:
        region = np.pad(region, ((0, 0), (0, ph), (0, pw)), constant_values=BACKGROUND)
    # exact integer block sums, one axis at a time (2k strided adds instead of k * k)
    rows = region[:, :, 0::k].astype(np.uint16 if k * k * 255 < 2**16 else np.uint32)
    for dx in range(1, k):
        rows += region[:, :, dx::k]
    acc = rows[:, 0::k].copy()
    for dy in range(1, k):
        acc += rows[:, dy::k]
    acc += k * k // 2
    acc //= k * k
    return acc.astype(np.uint8)


def _windows(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Start ``(n,)`` and common length of the crops, along an axis of ``size`` pixels, that hold both
    interpolation taps of every position in ``[lo, hi]`` clamped to ``[0, size - 1]`` (the border rule)."""
    first = np.floor(np.clip(lo, 0, size - 1)).astype(np.intp)
    last = np.floor(np.clip(hi, 0, size - 1)).astype(np.intp)
    length = min(int((last - first).max()) + 2, size)
    return np.minimum(first, size - length), length


def _crops(
    region: np.ndarray, x0: np.ndarray, y0: np.ndarray, sx: int, sy: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``(n, c, sy, sx)`` crops of ``region`` ``(c, h, w)`` starting at columns ``x0`` and rows ``y0`` (into
    ``out``, of any memory layout, when given)."""
    if out is None:
        out = np.empty((len(x0), region.shape[0], sy, sx), dtype=region.dtype)
    for i, (x, y) in enumerate(zip(x0.tolist(), y0.tolist(), strict=True)):
        out[i] = region[:, y : y + sy, x : x + sx]
    return out


def _sample_grid(region: np.ndarray, centre: np.ndarray, step: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bilinear resampling of ``region`` (from :func:`_prepare`) at the positions of :func:`_patch_frames` with
    ``grid_sample`` (any affine map, rotated or sheared) -> ``(n, 3, o, o)`` uint8. Each patch is cropped first
    so that ``grid_sample`` works on small inputs (much faster than sampling the whole region)."""
    import torch
    import torch.nn.functional as F

    h, w = region.shape[1:]
    # positions are affine in the output pixel: the four corner pixels bound them
    ends = np.array([[t[0], t[0]], [t[-1], t[0]], [t[0], t[-1]], [t[-1], t[-1]]])
    corners = centre[:, None, :] + ends @ step.T
    x0, sx = _windows(corners[..., 0].min(1), corners[..., 0].max(1), w)
    y0, sy = _windows(corners[..., 1].min(1), corners[..., 1].max(1), h)
    crops = _crops(region, x0, y0, sx, sy)
    local = (centre - np.stack([x0, y0], axis=1)).astype(np.float32)  # small numbers: float32 is exact enough
    off = (t[:, None, None] * step[:, 1] + t[None, :, None] * step[:, 0]).astype(np.float32)  # (o, o, 2)
    # align_corners=True: -1 and 1 are the centres of the first and last pixels of the crop
    norm = np.array([2 / max(sx - 1, 1), 2 / max(sy - 1, 1)], dtype=np.float32)
    grids = torch.from_numpy((local[:, None, None, :] + off) * norm - np.float32(1))
    out = F.grid_sample(
        torch.from_numpy(crops).float(), grids, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def _taps(pos: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D linear interpolation at ``pos``: the index of the first of its two taps and the weight of the second,
    positions clamped to ``[0, size - 1]`` as by ``grid_sample(padding_mode="border", align_corners=True)``."""
    pos = np.clip(pos, 0, size - 1)
    first = np.minimum(np.floor(pos), size - 2).astype(np.intp)  # pos == size - 1: taps size - 2, size - 1
    return first, (pos - first).astype(np.float32)


def _row_major(region: np.ndarray) -> np.ndarray:
    """``region`` ``(c, h, w)`` with its memory laid out ``(h, c, w)``, so that one row holds every channel (how
    :func:`_sample_separable` reads it); no copy when it already is."""
    return np.ascontiguousarray(region.transpose(1, 0, 2)).transpose(1, 0, 2)


def _lerp(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``a + weight * (b - a)``, written into ``b``."""
    b -= a
    b *= weight
    b += a
    return b


def _sample_separable(region: np.ndarray, centre: np.ndarray, step: np.ndarray, t: np.ndarray) -> np.ndarray:
    """What :func:`_sample_grid` computes, for axis-aligned patches (:func:`_axis_aligned`), in two 1-D passes:
    bilinear weights are a product of 1-D weights, so rows are interpolated first, then columns.

    Both passes gather whole rows of pixels (never pixel by pixel), and no ``(n, o, o, 2)`` grid is built.
    """
    n, o = len(centre), len(t)
    h, w = region.shape[1:]
    xs = centre[:, :1] + t * step[0, 0]  # (n, o): positions of the output columns, and of the rows
    ys = centre[:, 1:] + t * step[1, 1]
    x0, sx = _windows(xs.min(1), xs.max(1), w)
    y0, sy = _windows(ys.min(1), ys.max(1), h)
    (yt, wy), (xt, wx) = _taps(ys, h), _taps(xs, w)
    yt -= y0[:, None]  # taps within each patch's crop
    xt -= x0[:, None]
    region = _row_major(region)  # one weight then scales all channels of a row at once
    out = np.empty((n, 3, o, o), dtype=np.uint8)
    # a few patches per pass, in work arrays allocated once and reused
    m = min(n, max(1, _PASS_FLOATS // (3 * o * max(o, sx))))
    crops = np.empty((m, sy, 3, sx), dtype=np.uint8)
    ua, ub = np.empty((2, m * o, 3 * sx), dtype=np.uint8)
    fa, fb = np.empty((2, m * o, 3 * sx), dtype=np.float32)
    cols = np.empty((m, sx, 3, o), dtype=np.float32)
    ga, gb = np.empty((2, m * o, 3 * o), dtype=np.float32)
    for s in range(0, n, m):
        e = min(n, s + m)
        k = (e - s) * o  # rows out of each pass
        _crops(region, x0[s:e], y0[s:e], sx, sy, out=crops[: e - s].transpose(0, 2, 1, 3))
        src = crops[: e - s].reshape(-1, 3 * sx)
        first = (yt[s:e] + (np.arange(e - s) * sy)[:, None]).ravel()
        # mode="clip": unbuffered (every tap is in range)
        np.take(src, first, axis=0, out=ua[:k], mode="clip")
        np.take(src, first + 1, axis=0, out=ub[:k], mode="clip")
        np.copyto(fa[:k], ua[:k])
        np.copyto(fb[:k], ub[:k])
        v = _lerp(fa[:k], fb[:k], wy[s:e].reshape(-1, 1))  # (patch, row, channel, x)
        # columns become rows, for the second pass to gather rows too; + 0.5: round half up at the end (no
        # clamp needed: a convex mix of 0..255 stays within 0.5..255.5, up to float rounding)
        np.add(v.reshape(e - s, o, 3, sx).transpose(0, 3, 2, 1), np.float32(0.5), out=cols[: e - s])
        src = cols[: e - s].reshape(-1, 3 * o)
        first = (xt[s:e] + (np.arange(e - s) * sx)[:, None]).ravel()
        np.take(src, first, axis=0, out=ga[:k], mode="clip")
        np.take(src, first + 1, axis=0, out=gb[:k], mode="clip")
        v = _lerp(ga[:k], gb[:k], wx[s:e].reshape(-1, 1))  # (patch, column, channel, row)
        np.copyto(out[s:e].transpose(0, 3, 1, 2), v.reshape(e - s, o, 3, o), casting="unsafe")
    return out


def _slice(region: np.ndarray, centres_px: np.ndarray, out_px: int) -> np.ndarray:
    """``(n, 3, out, out)`` crops of ``region`` whose pixel corners lie nearest to ``centre - out / 2``."""
    starts = np.rint(centres_px - out_px / 2).astype(int)
    return _crops(region, starts[:, 0], starts[:, 1], out_px, out_px)


#: A level computed from a finer one on every read is computed once instead when it is at most this large.
MAX_COMPUTED_LEVEL_BYTES = 1 << 30


def computed_once(pyramid: ImagePyramid, level: ImageLevel) -> ImageLevel:
    """``level`` with its pixels in memory where it is derived lazily from a finer level and small enough.

    spatialdata builds the coarser levels of an image parsed with ``scale_factors`` (spatialdata-io's readers
    do) as dask graphs over the finest one: every tile read would coarsen its part of the finest level again,
    margins included, a dozen dask layers per read. Such a level (its graph larger than the finest level's)
    is computed once, at most :data:`MAX_COMPUTED_LEVEL_BYTES`; the pixels are the same either way. Levels read
    from a store, numpy-backed levels and the finest level are returned as they are.
    """
    arr, finest = getattr(level.data, "data", None), getattr(pyramid.levels[0].data, "data", None)
    graph, finest_graph = getattr(arr, "dask", None), getattr(finest, "dask", None)
    if graph is None or finest_graph is None or level is pyramid.levels[0]:
        return level
    if len(graph.layers) <= len(finest_graph.layers) or arr.nbytes > MAX_COMPUTED_LEVEL_BYTES:
        return level
    values = np.asarray(arr.compute(scheduler="threads"))
    return ImageLevel(level.index, level.data.copy(data=values), level.to_um, level.pixels)


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
    ``patch_size_um / out_px``). Areas outside the image are background (255), never wrapped. ``num_workers``
    threads read the next tiles and resample blocks of patches ahead of the caller; blocks come in order.
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
    # per-patch bounding box in level pixels (corners of the micron square) plus a resampling margin
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], dtype=float) * (patch_size_um / 2)
    inv = np.linalg.inv(lv.to_um)[:2, :2]
    reach = np.abs(corners @ inv.T).max(0) + 2 + np.ceil(scale)

    # output pixels == level pixels on an axis-aligned grid: plain slicing (centre rounded to the nearest
    # pixel corner, at most half a pixel off) instead of resampling
    lin = lv.to_um[:2, :2]
    out_um = patch_size_um / out_px
    pixel_exact = bool(
        abs(lin[0, 1]) < 1e-12 and abs(lin[1, 0]) < 1e-12 and lin[0, 0] > 0 and lin[1, 1] > 0
        and abs(lin[0, 0] - out_um) < 1e-6 * out_um and abs(lin[1, 1] - out_um) < 1e-6 * out_um
    )  # fmt: skip

    pool_k = max(1, int(np.floor(scale)))
    # where the output pixels fall in a region: only its origin differs from tile to tile
    _, frame_step, _ = _patch_frames(lv, centres[:1], patch_size_um, out_px, np.zeros(2), pool_k)
    sample = _sample_separable if _axis_aligned(frame_step) else _sample_grid
    # patches per yield and resampling call (memory: the grid path's grid is n * out_px**2 * 2 floats)
    per_block = max(1, 2**22 // (out_px * out_px))

    def region_of(idx: np.ndarray) -> tuple[int, int, int, int]:
        lo = np.floor(px[idx].min(0) - reach).astype(int)
        # box-averaging blocks start on multiples of k in level pixels, so a patch never depends on which
        # other cells share its read region (same features whatever the table or partition)
        lo -= lo % pool_k
        hi = np.ceil(px[idx].max(0) + reach).astype(int)
        return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])

    def load(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = region_of(idx)
        region = _read_region(lv, x0, y0, x1, y1)
        if not pixel_exact:
            region = _prepare(region, scale)
        if not pixel_exact and sample is _sample_separable:
            region = _row_major(region)  # once per tile, not per block
        return idx, np.array([x0, y0], dtype=float), region

    def resample(idx: np.ndarray, origin: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if pixel_exact:
            return idx, _slice(region, px[idx] - origin, out_px)
        centre, frame_step, t = _patch_frames(lv, centres[idx], patch_size_um, out_px, origin, pool_k)
        return idx, sample(region, centre, frame_step, t)

    workers = max(1, int(num_workers))
    # one pool reads the next tiles and resamples blocks of patches: at most workers + 1 blocks in memory
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def blocks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            reads = deque(pool.submit(load, g) for g in groups[: workers + 1])
            nxt = len(reads)
            while reads:
                idx, origin, region = reads.popleft().result()
                if nxt < len(groups):
                    reads.append(pool.submit(load, groups[nxt]))
                    nxt += 1
                # at least one block per worker, so that a small image is resampled in parallel as well
                for block in np.array_split(idx, max(min(workers, len(idx)), -(-len(idx) // per_block))):
                    yield block, origin, region

        pending = deque()
        for block in blocks():
            pending.append(pool.submit(resample, *block))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
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
