"""Tissue geometry of the synthetic tissue: smooth random fields, the tissue outline, cell positions, niches.

Niches are the argmax of ``K`` smooth random fields, some of them shaped (a wavy layered band, sharp islands)
so that the regions are spatially coherent and irregular. Per-niche biases are fitted so that every niche
covers a useful share of the tissue whatever the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Densest packing of candidate positions (um^2 per cell) before per-niche thinning.
MIN_CELL_AREA_UM2 = 100.0
# Per-niche mean area per cell is drawn in this range (about 1 cell per 100-200 um^2).
CELL_AREA_RANGE_UM2 = (110.0, 190.0)
# Width / height of the simulated section: not square, so that swapped x/y are caught downstream.
ASPECT = 4.0 / 3.0
# Share of the rectangle covered by tissue (the rest is irregular empty margin).
TISSUE_COVER = 0.8


@dataclass(frozen=True)
class SmoothField:
    """A smooth random field on a regular grid, evaluated anywhere in microns by cubic splines."""

    coeffs: np.ndarray  # spline coefficients on the grid, (ny, nx)
    step_um: float

    def at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Field values at points (any shape), as float32."""
        x = np.asarray(x_um, dtype=float)
        y = np.asarray(y_um, dtype=float)
        coords = np.stack([y.ravel() / self.step_um, x.ravel() / self.step_um])
        out = ndimage.map_coordinates(self.coeffs, coords, order=3, mode="nearest", prefilter=False)
        return out.reshape(x.shape).astype(np.float32)


def smooth_field(
    rng: np.random.Generator, width_um: float, height_um: float, length_um: float
) -> SmoothField:
    """Zero-mean, unit-variance Gaussian random field with correlation length about ``length_um``.

    The noise lives on a grid three nodes per length, so the cost does not depend on the tissue size in
    pixels and any point can be evaluated exactly (no full-resolution array is ever formed).
    """
    step = length_um / 3.0
    ny = int(np.ceil(height_um / step)) + 4
    nx = int(np.ceil(width_um / step)) + 4
    grid = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma=1.2, mode="wrap")
    grid = (grid - grid.mean()) / (grid.std() + 1e-12)
    return SmoothField(coeffs=ndimage.spline_filter(grid, order=3, mode="nearest"), step_um=step)


@dataclass
class TissueGeometry:
    """Where the tissue is, where its cells are and which niche each point belongs to."""

    width_um: float
    height_um: float
    niche_length_um: float
    outline: SmoothField  # tissue where ``tissue_score >= threshold``
    outline_edge_um: float
    threshold: float
    niche_fields: list[SmoothField]
    niche_bias: np.ndarray  # (K,)
    band_period_um: float
    band_wave: tuple[float, float, float]  # amplitude (um), period (um), phase
    island_niche: int
    band_niche: int
    xy: np.ndarray  # (n, 2) cell centres in microns
    niche: np.ndarray  # (n,) niche code per cell
    cell_area_um2: np.ndarray  # (K,) mean area per cell in each niche

    def tissue_score(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Smooth score; the tissue is where it exceeds :attr:`threshold` (an irregular outline)."""
        x = np.asarray(x_um, dtype=float)
        y = np.asarray(y_um, dtype=float)
        edge = np.minimum.reduce([x, self.width_um - x, y, self.height_um - y]) / self.outline_edge_um
        return (np.clip(edge, 0, 1) + 0.35 * self.outline.at(x, y)).astype(np.float32)

    def niche_scores(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """``(..., K)`` niche scores whose argmax is the true niche at each point."""
        x = np.asarray(x_um, dtype=float)
        y = np.asarray(y_um, dtype=float)
        scores = np.stack([f.at(x, y) for f in self.niche_fields], axis=-1)
        # layers: a wavy band pattern favours one niche
        amp, period, phase = self.band_wave
        wave = y + amp * np.sin(2 * np.pi * x / period + phase)
        band = np.cos(2 * np.pi * wave / self.band_period_um)
        scores[..., self.band_niche] = 0.5 * scores[..., self.band_niche] + 2.2 * np.clip(
            2.0 * band - 0.6, -1, 1
        )
        # islands: a sharpened short-range field gives compact blobs for one niche
        isl = scores[..., self.island_niche]
        scores[..., self.island_niche] = 1.2 * np.expm1(np.clip(isl, -3, 3)) - 0.6
        return scores + self.niche_bias.astype(np.float32)

    def niche_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Niche code at points (any shape)."""
        return np.argmax(self.niche_scores(x_um, y_um), axis=-1)


def _hex_candidates(rng: np.random.Generator, width: float, height: float, area_um2: float) -> np.ndarray:
    """Jittered hexagonal packing, one point per ``area_um2``: cells that touch but rarely overlap."""
    spacing = np.sqrt(2.0 * area_um2 / np.sqrt(3.0))
    dy = spacing * np.sqrt(3.0) / 2.0
    rows = np.arange(int(height / dy) + 1)
    cols = np.arange(int(width / spacing) + 1)
    gx, gy = np.meshgrid(cols.astype(float), rows.astype(float))
    x = (gx + 0.5 * (rows[:, None] % 2) + 0.25) * spacing
    y = (gy + 0.5) * dy
    xy = np.stack([x.ravel(), y.ravel()], axis=1)
    angle = rng.uniform(0, 2 * np.pi, len(xy))
    radius = 0.3 * spacing * np.sqrt(rng.uniform(0, 1, len(xy)))
    xy += np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    inside = (xy[:, 0] > 0) & (xy[:, 0] < width) & (xy[:, 1] > 0) & (xy[:, 1] < height)
    return xy[inside]


def _fit_bias(scores: np.ndarray, target: np.ndarray, n_iter: int = 60) -> np.ndarray:
    """Per-niche offsets so that the argmax shares match ``target`` (every niche present)."""
    bias = np.zeros(scores.shape[1])
    k = scores.shape[1]
    for _ in range(n_iter):
        frac = np.bincount(np.argmax(scores + bias, axis=1), minlength=k) / len(scores)
        bias += 0.5 * (np.log(target) - np.log(frac + 1e-3))
        bias -= bias.mean()
    return bias


def simulate_geometry(rng: np.random.Generator, n_cells: int, n_niches: int) -> TissueGeometry:
    """Place exactly ``n_cells`` cells in an irregular section and assign every cell its true niche."""
    cell_area = rng.uniform(*CELL_AREA_RANGE_UM2, size=n_niches)
    target = 0.5 / n_niches + 0.5 * rng.dirichlet(
        np.full(n_niches, 4.0)
    )  # every niche >= half its fair share
    mean_area = float(np.sum(target * cell_area))
    area = n_cells * mean_area / TISSUE_COVER
    height = float(np.sqrt(area / ASPECT))
    width = float(ASPECT * height)
    # niche regions of a few hundred microns; smaller sections get proportionally smaller regions
    length = float(np.clip(min(width, height) / 4.0, 60.0, 450.0))
    outline = smooth_field(rng, width, height, 0.12 * min(width, height) + 20.0)
    fields = [smooth_field(rng, width, height, length * rng.uniform(0.7, 1.3)) for _ in range(n_niches)]
    island_niche, band_niche = (1, 0) if n_niches > 1 else (0, 0)
    fields[island_niche] = smooth_field(rng, width, height, length / 2.5)
    geom = TissueGeometry(
        width_um=width,
        height_um=height,
        niche_length_um=length,
        outline=outline,
        outline_edge_um=0.15 * min(width, height),
        threshold=0.0,
        niche_fields=fields,
        niche_bias=np.zeros(n_niches),
        band_period_um=3.0 * length,
        band_wave=(0.4 * length, 4.0 * length, float(rng.uniform(0, 2 * np.pi))),
        island_niche=island_niche,
        band_niche=band_niche,
        xy=np.empty((0, 2)),
        niche=np.empty(0, dtype=np.int64),
        cell_area_um2=cell_area,
    )
    # grow the section until thinning leaves enough candidates (usually no retry)
    for _ in range(10):
        cand = _hex_candidates(rng, geom.width_um, geom.height_um, MIN_CELL_AREA_UM2)
        fit = cand if len(cand) <= 200_000 else cand[rng.choice(len(cand), 200_000, replace=False)]
        geom.niche_bias = _fit_bias(geom.niche_scores(fit[:, 0], fit[:, 1]), target)
        niche = geom.niche_at(cand[:, 0], cand[:, 1])
        keep = rng.uniform(size=len(cand)) < MIN_CELL_AREA_UM2 / cell_area[niche]
        cand, niche = cand[keep], niche[keep]
        if len(cand) >= n_cells / 0.97:
            break
        geom.width_um *= 1.1
        geom.height_um *= 1.1
    score = geom.tissue_score(cand[:, 0], cand[:, 1])
    # the outline is the level set holding exactly n_cells cells
    order = np.argsort(-score, kind="stable")[:n_cells]
    keep_idx = np.sort(order)
    geom.threshold = float(score[order[-1]])
    geom.xy = cand[keep_idx]
    geom.niche = niche[keep_idx]
    return geom
