"""Tissue context at several scales: mean features over square windows much wider than the neighbourhood.

The student's tokens cover the teacher's neighbourhood (~10 cells); tissue architecture (a layer, a
lobule, a tumour front) spans further. Each cell therefore also gets, per scale, the mean feature of the
cells of its section (group) in a window of half-width ``scale * radius``. Windows are unions of grid bins
anchored at absolute coordinates (bin side = half-width / ``BINS_PER_HALF_WIDTH``), so the result for a cell
depends only on the cells within its reach, whatever else is in the array: spatial partitions with a halo
of ``reach`` give the same numbers as one pass.
"""

from __future__ import annotations

import numpy as np

from .._core.neighbors import group_codes

BINS_PER_HALF_WIDTH = 2  # window = (2 * 2 + 1)^2 bins: 1.25x the nominal half-width at most, cheap


def context_reach(radius_um: float, scales) -> float:
    """Largest distance (microns) from a cell to a cell its context windows can include.

    Examples
    --------
    >>> context_reach(100.0, (2.0, 4.0)) > 400.0
    True
    """
    if not len(scales):
        return 0.0
    half = max(scales) * float(radius_um)
    side = half / BINS_PER_HALF_WIDTH
    return float(np.sqrt(2.0) * (BINS_PER_HALF_WIDTH + 1) * side)


def context_means(
    features: np.ndarray, xy: np.ndarray, radius_um: float, scales, groups: np.ndarray | None = None
) -> np.ndarray:
    """``(N, S, D)`` float32: per scale ``s``, the mean feature over the window of half-width ``s * radius_um``.

    Windows never cross ``groups`` (sections, split parts). The cell's own bin is always in its window, so
    every mean is defined.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ctx = context_means(rng.normal(size=(50, 4)), rng.uniform(0, 100, (50, 2)), 10.0, (2.0, 4.0))
    >>> ctx.shape
    (50, 2, 4)
    """
    x = np.asarray(features, dtype=np.float32)
    xy = np.asarray(xy, dtype=np.float64)
    n, d = x.shape
    out = np.empty((n, len(scales), d), dtype=np.float32)
    codes = group_codes(groups, n)
    w = BINS_PER_HALF_WIDTH
    for si, scale in enumerate(scales):
        side = float(scale) * float(radius_um) / w
        if not np.isfinite(side) or side <= 0:
            raise ValueError(f"context scales must be positive multiples of the radius, got {scale}.")
        cells = np.floor(xy / side).astype(np.int64)  # absolute bins: independent of which cells are present
        for g in np.unique(codes):
            sel = np.flatnonzero(codes == g)
            b = cells[sel] - cells[sel].min(0) + w  # local bins with a margin of w
            span = int(b[:, 1].max()) + w + 1
            key = b[:, 0] * span + b[:, 1]
            # occupied bins only: memory follows the cells, not the section's area
            occupied, inverse = np.unique(key, return_inverse=True)
            sums = np.zeros((len(occupied) + 1, d), dtype=np.float64)  # last row: an empty bin
            np.add.at(sums, inverse.ravel(), x[sel])
            counts = np.append(np.bincount(inverse.ravel(), minlength=len(occupied)), 0).astype(np.float64)
            acc = np.zeros((len(sel), d), dtype=np.float64)
            cnt = np.zeros(len(sel), dtype=np.float64)
            # a fixed order of window offsets: the same sums, bit for bit, whatever else is in the array
            for dx in range(-w, w + 1):
                for dy in range(-w, w + 1):
                    k = key + dx * span + dy
                    pos = np.minimum(np.searchsorted(occupied, k), len(occupied) - 1)
                    pos = np.where(occupied[pos] == k, pos, len(occupied))
                    acc += sums[pos]
                    cnt += counts[pos]
            out[sel, si] = (acc / cnt[:, None]).astype(np.float32)
    return out
