"""Cell types of the synthetic tissue: how they look on H&E and how niches mix them.

Several types look alike (lymphocyte/neutrophil, fibroblast/endothelial/smooth muscle, epithelial/
macrophage), and every niche shares its dominant types with other niches in different proportions. One
cell's nucleus therefore hints at its type but not at its niche; the mix of its neighbours does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# name, nucleus radius (um), elongation (long/short axis), hematoxylin density, cytoplasm eosin, cell radius (um)
ARCHETYPES: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("lymphocyte", 2.7, 1.05, 1.45, 0.35, 4.0),
    ("fibroblast", 3.1, 2.6, 1.05, 0.45, 4.5),
    ("epithelial", 4.2, 1.3, 0.80, 0.70, 6.0),
    ("macrophage", 4.0, 1.45, 0.90, 0.65, 6.0),
    ("endothelial", 3.0, 2.3, 1.10, 0.45, 4.5),
    ("plasma", 3.1, 1.2, 1.25, 0.65, 5.0),
    ("tumour", 5.0, 1.35, 1.15, 0.55, 6.5),
    ("neutrophil", 2.9, 1.3, 1.35, 0.50, 4.5),
    ("smooth_muscle", 3.2, 3.0, 0.95, 0.75, 5.0),
)
# Within-type spread (log-normal sd) of nucleus size, elongation and stain: types overlap, as in real tissue.
SIZE_SD, ELONGATION_SD, STAIN_SD = 0.15, 0.15, 0.18


@dataclass(frozen=True)
class CellTypes:
    """Per-type appearance and per-niche composition."""

    names: list[str]
    nucleus_radius_um: np.ndarray  # (T,)
    elongation: np.ndarray
    hematoxylin: np.ndarray
    cytoplasm_eosin: np.ndarray
    cell_radius_um: np.ndarray
    composition: np.ndarray  # (K, T), rows sum to 1


def make_cell_types(rng: np.random.Generator, n_types: int, n_niches: int) -> CellTypes:
    """Appearance of ``n_types`` types (cycling archetypes, perturbed) and a composition per niche.

    Niche ``k`` favours a window of three consecutive types; windows overlap, so niches share types.
    """
    names, params = [], []
    for t in range(n_types):
        name, *p = ARCHETYPES[t % len(ARCHETYPES)]
        rep = t // len(ARCHETYPES)
        if rep:  # extra types: an archetype variant with shifted appearance
            name = f"{name}_{rep + 1}"
            p = [v * f for v, f in zip(p, rng.uniform(0.85, 1.15, size=len(p)), strict=True)]
        names.append(name)
        params.append(p)
    arr = np.asarray(params, dtype=float)
    alpha = np.full((n_niches, n_types), 0.6)
    for k in range(n_niches):
        start = int(round(k * n_types / n_niches))
        alpha[k, [(start + j) % n_types for j in range(min(3, n_types))]] += 6.0
    composition = np.vstack([rng.dirichlet(a * 2.0) for a in alpha])
    return CellTypes(
        names=names,
        nucleus_radius_um=arr[:, 0],
        elongation=arr[:, 1],
        hematoxylin=arr[:, 2],
        cytoplasm_eosin=arr[:, 3],
        cell_radius_um=arr[:, 4],
        composition=composition,
    )


def draw_cell_types(rng: np.random.Generator, types: CellTypes, niche: np.ndarray) -> np.ndarray:
    """One type per cell, independently from its niche's composition (inverse-CDF, vectorised)."""
    cdf = np.cumsum(types.composition, axis=1)
    cdf[:, -1] = 1.0
    u = rng.uniform(size=len(niche))
    return (u[:, None] > cdf[niche]).sum(1)


@dataclass(frozen=True)
class NucleusShapes:
    """Per-cell nucleus ellipse and cell body, in microns."""

    semi_major_um: np.ndarray
    semi_minor_um: np.ndarray
    angle: np.ndarray  # radians
    hematoxylin: np.ndarray
    cytoplasm_eosin: np.ndarray
    cell_radius_um: np.ndarray
    irregularity: np.ndarray  # amplitude of a three-lobed deviation from the ellipse
    lobe_phase: np.ndarray  # radians


def draw_nuclei(rng: np.random.Generator, types: CellTypes, cell_type: np.ndarray) -> NucleusShapes:
    """Per-cell appearance: the type's mean with log-normal within-type noise and a random orientation."""
    n = len(cell_type)
    radius = types.nucleus_radius_um[cell_type] * np.exp(SIZE_SD * rng.standard_normal(n))
    elong = 1.0 + (types.elongation[cell_type] - 1.0) * np.exp(ELONGATION_SD * rng.standard_normal(n))
    root = np.sqrt(elong)
    return NucleusShapes(
        semi_major_um=radius * root,
        semi_minor_um=radius / root,
        angle=rng.uniform(0, np.pi, n),
        hematoxylin=types.hematoxylin[cell_type] * np.exp(STAIN_SD * rng.standard_normal(n)),
        cytoplasm_eosin=types.cytoplasm_eosin[cell_type] * np.exp(STAIN_SD * rng.standard_normal(n)),
        cell_radius_um=types.cell_radius_um[cell_type] * np.exp(0.1 * rng.standard_normal(n)),
        irregularity=rng.uniform(0.0, 0.12, n),
        lobe_phase=rng.uniform(0, 2 * np.pi, n),
    )
