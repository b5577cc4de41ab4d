"""Vectorised rendering of an H&E-like RGB image of the synthetic tissue.

The image is composed in optical density (Beer-Lambert): hematoxylin and eosin concentration maps times their
colour vectors, ``rgb = 255 exp(-OD)``. It is rendered in horizontal strips: per strip, nuclei (ellipses) and
cell bodies are stamped for all cells at once and accumulated with ``np.bincount``; stroma fibres and
chromatin come from periodic textures (tiled seamlessly), large-scale fields from a coarse grid. Memory is
one strip plus the output image, whatever the number of cells.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ._artifacts import SlideNuisance
from ._cell_types import NucleusShapes

# Unit optical-density colour vectors (R, G, B) of the two stains, tuned to look like routine H&E.
HEMATOXYLIN_OD = np.array([0.59, 0.75, 0.31], dtype=np.float32)
EOSIN_OD = np.array([0.15, 0.88, 0.46], dtype=np.float32)
GLASS_OD = np.array([0.05, 0.06, 0.04], dtype=np.float32)  # slide background, near white
STRIP_ROWS = 512
STAMP_BUDGET = 2_000_000  # pixels stamped per batch (bounds the temporaries)
COARSE_MAX_POINTS = 4_000_000

Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


def periodic_texture(
    rng: np.random.Generator, size: int, sigma_along_px: float, sigma_across_px: float, angle: float
) -> np.ndarray:
    """Tileable zero-mean unit-variance texture: white noise low-passed by an oriented Gaussian (FFT)."""
    noise = rng.standard_normal((size, size))
    k = np.fft.fftfreq(size)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    ku = kx * np.cos(angle) + ky * np.sin(angle)
    kv = -kx * np.sin(angle) + ky * np.cos(angle)
    gain = np.exp(-2 * np.pi**2 * (sigma_along_px**2 * ku**2 + sigma_across_px**2 * kv**2))
    tex = np.fft.ifft2(np.fft.fft2(noise) * gain).real
    return ((tex - tex.mean()) / (tex.std() + 1e-12)).astype(np.float32)


class _CoarseGrid:
    """Fields sampled once on a coarse grid, then bilinearly interpolated on any strip of pixels."""

    def __init__(self, fns: list[Field], width_um: float, height_um: float, step_um: float):
        self.step = step_um
        xs = np.arange(0.0, width_um + 2 * step_um, step_um)
        ys = np.arange(0.0, height_um + 2 * step_um, step_um)
        gx, gy = np.meshgrid(xs, ys)
        self.values = np.stack([np.asarray(fn(gx, gy), dtype=np.float32) for fn in fns], axis=-1)

    def strip(self, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
        """``(rows, cols, n_fields)`` values at pixel centres ``y_um`` x ``x_um``."""
        fy, fx = y_um / self.step, x_um / self.step
        iy = np.clip(fy.astype(np.int64), 0, self.values.shape[0] - 2)
        ix = np.clip(fx.astype(np.int64), 0, self.values.shape[1] - 2)
        wy = (fy - iy).astype(np.float32)[:, None, None]
        wx = (fx - ix).astype(np.float32)[None, :, None]
        rows = self.values[iy] * (1 - wy) + self.values[iy + 1] * wy  # (rows, coarse cols, f): small
        return rows[:, ix] * (1 - wx) + rows[:, ix + 1] * wx


def _stamp_cells(
    shapes: NucleusShapes, sel: np.ndarray, xy: np.ndarray, mpp: float, r0: int, r1: int, width_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hematoxylin, cell-body coverage and cytoplasm eosin of the cells ``sel`` on rows ``r0:r1`` (flat)."""
    size = (r1 - r0) * width_px
    hema = np.zeros(size + 1, dtype=np.float64)
    cover = np.zeros(size + 1, dtype=np.float64)
    eosin = np.zeros(size + 1, dtype=np.float64)
    if len(sel) == 0:
        return hema[:size], cover[:size], eosin[:size]
    # cells grouped by stamp size: a few large cells must not make every stamp large
    half = np.ceil(_reach_um(shapes)[sel] / mpp).astype(np.int64) + 1
    half = np.minimum(half + (-half) % 3, half.max())
    for h_size in np.unique(half):
        group = sel[half == h_size]
        o = np.arange(-h_size, h_size + 1)
        batch = max(1, STAMP_BUDGET // len(o) ** 2)
        for s in range(0, len(group), batch):
            _stamp_batch(shapes, group[s : s + batch], xy, mpp, o, r0, r1, width_px, (hema, cover, eosin))
    return hema[:size], cover[:size], eosin[:size]


def _reach_um(shapes: NucleusShapes) -> np.ndarray:
    """Per-cell distance from the centre beyond which a cell paints nothing."""
    return np.maximum(shapes.semi_major_um / (1 - shapes.irregularity), shapes.cell_radius_um)


def _col(values: np.ndarray) -> np.ndarray:
    """Per-cell values broadcast over a stamp: ``(B, 1, 1)`` float32."""
    return values.astype(np.float32)[:, None, None]


def _stamp_batch(shapes, c, xy, mpp, o, r0, r1, width_px, out) -> None:
    """Add one batch of cells, all with stamp offsets ``o``, to the flat accumulators ``out``."""
    hema, cover, eosin = out
    x, y = xy[c, 0], xy[c, 1]
    pc = np.floor(x / mpp).astype(np.int64)
    pr = np.floor(y / mpp).astype(np.int64)
    # pixel centres relative to the cell centre, in microns: rows (B, n, 1), columns (B, 1, n)
    dy = ((pr[:, None] + o + 0.5) * mpp - y[:, None]).astype(np.float32)[:, :, None]
    dx = ((pc[:, None] + o + 0.5) * mpp - x[:, None]).astype(np.float32)[:, None, :]
    cos = _col(np.cos(shapes.angle[c]))
    sin = _col(np.sin(shapes.angle[c]))
    a = _col(shapes.semi_major_um[c])
    b = _col(shapes.semi_minor_um[c])
    p = (dx * cos + dy * sin) / a
    q = (dy * cos - dx * sin) / b
    r2 = p**2 + q**2
    rho = np.sqrt(r2)
    # irregular outline: rho * (1 + eps cos(3 (phi - phi0))), with cos/sin(3 phi) as polynomials in p, q
    r3 = r2 * rho + 1e-6
    lobes = (
        (p**3 - 3 * p * q**2) * _col(np.cos(shapes.lobe_phase[c]))
        + (3 * p**2 * q - q**3) * _col(np.sin(shapes.lobe_phase[c]))
    ) / r3
    rho = rho * (1 + _col(shapes.irregularity[c]) * lobes)
    # about one pixel of anti-aliased edge and a darker rim (nuclear membrane)
    nucleus = np.clip((1 - rho) * (b / mpp) + 0.5, 0, 1) * (0.8 + 0.3 * np.minimum(rho, 1) ** 3)
    rc = _col(shapes.cell_radius_um[c])
    body = np.clip((1 - np.sqrt(dx**2 + dy**2) / rc) * 3.0, 0, 1)
    rows = pr[:, None] + o
    cols = pc[:, None] + o
    valid = ((rows >= r0) & (rows < r1))[:, :, None] & ((cols >= 0) & (cols < width_px))[:, None, :]
    # pixels off the strip go to a spare last bin instead of being masked out (no copies)
    flat = np.where(valid, (rows - r0)[:, :, None] * width_px + cols[:, None, :], len(hema) - 1).ravel()
    n = len(hema)
    hema += np.bincount(flat, weights=(_col(shapes.hematoxylin[c]) * nucleus).ravel(), minlength=n)
    cover += np.bincount(flat, weights=body.ravel(), minlength=n)
    eosin += np.bincount(
        flat,
        weights=(_col(shapes.cytoplasm_eosin[c]) * body).ravel(),
        minlength=n,
    )


def _tile_columns(texture: np.ndarray, width_px: int) -> np.ndarray:
    """Repeat a periodic texture along x once; each strip then only gathers whole rows."""
    return np.ascontiguousarray(texture[:, np.arange(width_px) % texture.shape[1]])


def render_he(
    xy: np.ndarray,
    shapes: NucleusShapes,
    width_um: float,
    height_um: float,
    mpp: float,
    *,
    tissue: Field,
    stroma_eosin: Field,
    seed: np.random.SeedSequence,
    nuisance: SlideNuisance | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``(height_px, width_px, 3)`` uint8 image; pixel ``(i, j)`` covers ``[j mpp, (j+1) mpp] x [i mpp, ...]``.

    ``tissue(x, y)`` gives tissue coverage in ``[0, 1]`` (0 is bare glass), ``stroma_eosin(x, y)`` the eosin
    concentration of the extracellular matrix; both are smooth and sampled on a coarse grid. ``nuisance``
    adds stain/thickness fields, folds, tears, out-of-focus regions and vignetting
    (:mod:`nichekd.datasets._artifacts`).
    """
    height_px = int(np.ceil(height_um / mpp))
    width_px = int(np.ceil(width_um / mpp))
    rng = np.random.default_rng(seed.spawn(1)[0])
    fibre_a = _tile_columns(periodic_texture(rng, 509, 4.0 / mpp, 0.8 / mpp, rng.uniform(0, np.pi)), width_px)
    fibre_b = _tile_columns(periodic_texture(rng, 457, 4.0 / mpp, 0.8 / mpp, rng.uniform(0, np.pi)), width_px)
    chromatin = _tile_columns(periodic_texture(rng, 383, 0.35 / mpp, 0.35 / mpp, 0.0), width_px)
    noise = _tile_columns(rng.standard_normal((331, 331, 3), dtype=np.float32), width_px)

    def orientation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # fibre direction drifts smoothly: a blend weight between the two fibre textures
        return 0.5 + 0.5 * np.sin(x / 180.0 + 1.3 * np.sin(y / 260.0)) * np.cos(y / 210.0)

    step = max(4.0, 2 * mpp, float(np.sqrt(width_um * height_um / COARSE_MAX_POINTS)))
    extra = nuisance.fields() if nuisance is not None else []
    coarse = _CoarseGrid([tissue, stroma_eosin, orientation, *extra], width_um, height_um, step)
    order = np.argsort(xy[:, 1], kind="stable")
    y_sorted = xy[order, 1]
    reach = float(np.max(_reach_um(shapes), initial=0.0)) + 2 * mpp
    x_um = (np.arange(width_px) + 0.5) * mpp
    # out-of-focus blur needs a halo of rows above and below each strip (strips stay seamless)
    blur_px = nuisance.blur_sigma_um / mpp if nuisance is not None else 0.0
    halo = int(np.ceil(4 * blur_px)) if blur_px >= 0.3 else 0
    vignette_cols = nuisance.vignette_od(x_um) if nuisance is not None else None

    def optical_density(r0: int, r1: int) -> np.ndarray:
        """``(r1 - r0, width_px, 3)`` optical density of rows ``r0:r1``."""
        rows = np.arange(r0, r1)
        lo, hi = np.searchsorted(y_sorted, [r0 * mpp - reach, r1 * mpp + reach])
        shape = (r1 - r0, width_px)
        hema, cover, cyto_e = (
            a.reshape(shape).astype(np.float32)
            for a in _stamp_cells(shapes, order[lo:hi], xy, mpp, r0, r1, width_px)
        )
        fields = coarse.strip((rows + 0.5) * mpp, x_um)
        t, w = np.clip(fields[..., 0], 0, 1), fields[..., 2]
        fibres = w * fibre_a[rows % fibre_a.shape[0]] + (1 - w) * fibre_b[rows % fibre_b.shape[0]]
        stroma = fields[..., 1] * np.clip(1.0 + 0.3 * fibres, 0.3, None)
        body = np.clip(cover, 0, 1)
        eosin = t * ((1 - body) * stroma + body * cyto_e / np.maximum(cover, 1e-6))
        grain = chromatin[rows % chromatin.shape[0]]
        hema = t * (0.05 + hema * np.clip(0.8 + 0.25 * grain, 0.3, None))
        glass = GLASS_OD
        if nuisance is not None:
            log_h, log_e, fold, tear = (fields[..., 3 + i] for i in range(4))
            # stain and thickness scale the dyes; a fold doubles the tissue; a tear removes it
            kept = (1 + np.clip(fold, 0, None)) * (1 - np.clip(tear, 0, 1))
            hema = hema * np.exp(log_h) * kept
            eosin = eosin * np.exp(log_e) * kept
            vig_rows = nuisance.vignette_od((rows + 0.5) * mpp)
            glass = GLASS_OD + (vig_rows[:, None] + vignette_cols[None, :])[..., None]
        return (
            glass
            + hema[..., None] * HEMATOXYLIN_OD
            + eosin[..., None] * EOSIN_OD
            + 0.015 * noise[rows % noise.shape[0]]
        )

    image = np.empty((height_px, width_px, 3), dtype=np.uint8)
    strips = range(0, height_px, STRIP_ROWS)
    for r0 in tqdm(strips, desc="H&E", disable=not progress or len(strips) < 8):
        r1 = min(height_px, r0 + STRIP_ROWS)
        if halo:
            a0, a1 = max(0, r0 - halo), min(height_px, r1 + halo)
            od = optical_density(a0, a1)
            weight = coarse.strip((np.arange(a0, a1) + 0.5) * mpp, x_um)[..., 7:8]
            if weight.max() > 0:
                blurred = ndimage.gaussian_filter(od, sigma=(blur_px, blur_px, 0), mode="nearest")
                od = od + np.clip(weight, 0, 1) * (blurred - od)
            od = od[r0 - a0 : r0 - a0 + (r1 - r0)]
        else:
            od = optical_density(r0, r1)
        image[r0:r1] = np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)
    return image
