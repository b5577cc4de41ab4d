"""Counts of the synthetic tissue: negative-binomial draws from cell-type profiles times niche programs.

Built in chunks of cells straight into CSR arrays, so a million cells never need a dense matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

# Mean counts per cell (Xenium-like panels of a few hundred genes give ~100-300 per cell).
MEAN_COUNTS_PER_CELL = 150.0
# Negative-binomial inverse dispersion: var = mu + mu^2 / THETA.
THETA = 8.0
CHUNK_CELLS = 50_000


@dataclass(frozen=True)
class ExpressionModel:
    """Per-type gene profiles (rows sum to 1) and per-niche multiplicative programs."""

    profiles: np.ndarray  # (T, G)
    programs: np.ndarray  # (K, G), fold changes >= 1
    marker_of: np.ndarray  # (G,) type index or -1
    program_of: np.ndarray  # (G,) niche index or -1

    def var(self, type_names: list[str], niche_names: list[str]) -> pd.DataFrame:
        """Gene annotation: which type a gene marks and which niche program it belongs to ('' if none)."""
        names = [f"gene_{g:04d}" for g in range(self.profiles.shape[1])]
        return pd.DataFrame(
            {
                "marker_of": [type_names[t] if t >= 0 else "" for t in self.marker_of],
                "niche_program": [niche_names[k] if k >= 0 else "" for k in self.program_of],
            },
            index=pd.Index(names),
        )


def make_expression_model(
    rng: np.random.Generator, n_genes: int, n_types: int, n_niches: int
) -> ExpressionModel:
    """Log-normal baseline per gene, type-specific deviations and markers, niche-specific programs."""
    base = rng.normal(0.0, 1.0, size=n_genes)
    log_prof = base[None, :] + rng.normal(0.0, 0.4, size=(n_types, n_genes))
    genes = rng.permutation(n_genes)
    n_markers = int(np.clip(n_genes // (3 * n_types), 1, 10))
    n_program = int(np.clip(n_genes // (4 * n_niches), 1, 8))
    marker_of = np.full(n_genes, -1)
    program_of = np.full(n_genes, -1)
    pos = 0
    for t in range(n_types):
        sel = genes[pos : pos + n_markers]
        log_prof[t, sel] += rng.uniform(2.0, 3.0, size=len(sel))
        marker_of[sel] = t
        pos += n_markers
    programs = np.ones((n_niches, n_genes))
    for k in range(n_niches):
        # programs use genes not yet taken when there are enough, else wrap around
        sel = genes[np.arange(pos, pos + n_program) % n_genes]
        programs[k, sel] *= np.exp(rng.uniform(0.9, 1.4, size=len(sel)))
        program_of[sel] = k
        pos += n_program
    profiles = np.exp(log_prof)
    profiles /= profiles.sum(1, keepdims=True)
    return ExpressionModel(profiles=profiles, programs=programs, marker_of=marker_of, program_of=program_of)


def simulate_counts(
    rng: np.random.Generator,
    model: ExpressionModel,
    cell_type: np.ndarray,
    niche: np.ndarray,
    *,
    progress: bool = True,
) -> sparse.csr_matrix:
    """``(n, G)`` float32 CSR of integer negative-binomial counts, drawn chunk by chunk."""
    n = len(cell_type)
    size_factor = np.exp(rng.normal(-0.06, 0.35, size=n))  # mean ~1
    data, indices, indptr = [], [], [np.zeros(1, dtype=np.int64)]
    offset = 0
    for s in tqdm(range(0, n, CHUNK_CELLS), desc="counts", disable=not progress or n <= CHUNK_CELLS):
        sl = slice(s, min(n, s + CHUNK_CELLS))
        mu = model.profiles[cell_type[sl]] * model.programs[niche[sl]]
        mu *= (MEAN_COUNTS_PER_CELL * size_factor[sl])[:, None]
        # negative binomial as a gamma-Poisson mixture (faster than Generator.negative_binomial)
        counts = rng.poisson(rng.gamma(THETA, mu / THETA)).astype(np.float32)
        block = sparse.csr_matrix(counts)
        data.append(block.data)
        indices.append(block.indices.astype(np.int32))
        indptr.append(block.indptr[1:].astype(np.int64) + offset)
        offset += block.nnz
    x = sparse.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)),
        shape=(n, model.profiles.shape[1]),
    )
    return x
