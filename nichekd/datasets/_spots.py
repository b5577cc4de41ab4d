"""Visium-like spots over the synthetic cells: 55 um spots on a 100 um hexagonal grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0


def hex_spot_centres(width_um: float, height_um: float, pitch_um: float = SPOT_PITCH_UM) -> np.ndarray:
    """``(m, 2)`` centres of a hexagonal grid (rows ``pitch * sqrt(3)/2`` apart, odd rows shifted)."""
    dy = pitch_um * np.sqrt(3.0) / 2.0
    rows = np.arange(int(height_um / dy) + 1)
    cols = np.arange(int(width_um / pitch_um) + 1)
    gx, gy = np.meshgrid(cols.astype(float), rows.astype(float))
    x = (gx + 0.5 * (rows[:, None] % 2)) * pitch_um + pitch_um / 4
    y = gy * dy + dy / 2
    return np.stack([x.ravel(), y.ravel()], axis=1)


@dataclass(frozen=True)
class SpotAssignment:
    """Which cells lie beneath which spot."""

    centres: np.ndarray  # (m, 2)
    membership: sparse.csr_matrix  # (m, n_cells), 1 where a cell centre is inside the spot

    @property
    def n_cells(self) -> np.ndarray:
        """Cells beneath each spot."""
        return np.asarray(self.membership.sum(1)).ravel().astype(np.int64)

    def aggregate(self, values: sparse.spmatrix | np.ndarray):
        """Sum per spot of per-cell rows (counts, one-hot labels)."""
        return self.membership @ values


def assign_cells(
    xy_cells: np.ndarray, centres: np.ndarray, diameter_um: float = SPOT_DIAMETER_UM
) -> SpotAssignment:
    """Cells whose centre lies within ``diameter/2`` of a spot centre (spots do not overlap)."""
    tree = cKDTree(centres)
    dist, spot = tree.query(xy_cells, k=1, distance_upper_bound=diameter_um / 2.0)
    inside = np.isfinite(dist)
    cells = np.flatnonzero(inside)
    membership = sparse.csr_matrix(
        (np.ones(len(cells), dtype=np.float32), (spot[inside], cells)), shape=(len(centres), len(xy_cells))
    )
    return SpotAssignment(centres=centres, membership=membership)


def keep_spots(assignment: SpotAssignment, keep: np.ndarray) -> SpotAssignment:
    """A subset of the spots."""
    return SpotAssignment(centres=assignment.centres[keep], membership=assignment.membership[keep])
