"""One reduction of wide features: standardise on the fitting rows, then whitened principal components.

The student reduces its histology features this way (stored in the model), and the teacher's-method baseline
reduces the same features the same way, so both see identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the statistics of 20k rows are plenty and keep the fit fast
MAX_FIT_ROWS = 20_000


@dataclass
class WhitenedPCA:
    """Per-feature mean and standard deviation, and the whitening projection (``None``: no reduction)."""

    mean: np.ndarray
    std: np.ndarray
    projection: np.ndarray | None

    @property
    def n_outputs(self) -> int:
        return len(self.mean) if self.projection is None else self.projection.shape[1]

    def transform(self, x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        """``(N, n_outputs)`` float32, computed in chunks (wide features of many cells never held twice)."""
        x = np.asarray(x)
        out = np.empty((len(x), self.n_outputs), dtype=np.float32)
        for s in range(0, len(x), chunk):
            z = (x[s : s + chunk].astype(np.float32) - self.mean) / self.std
            out[s : s + chunk] = z if self.projection is None else z @ self.projection
        return out


def fit_whitened_pca(
    x: np.ndarray, fit: np.ndarray, n_components: int | None, rng: np.random.Generator
) -> WhitenedPCA:
    """Fit the reduction on the rows where ``fit`` is true (a random ``MAX_FIT_ROWS`` of them above that).

    Components are the leading eigenvectors of the standardised covariance, scaled to unit variance, with the
    largest loading of each positive (same data, same projection). ``n_components=None`` or at least the
    feature count: standardisation only.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 16))
    >>> red = fit_whitened_pca(x, np.ones(200, bool), 4, rng)
    >>> red.transform(x).shape
    (200, 4)
    """
    sample = np.flatnonzero(fit)
    if len(sample) > MAX_FIT_ROWS:
        sample = np.sort(rng.choice(sample, MAX_FIT_ROWS, replace=False))
    xs = x[sample].astype(np.float64)
    std = xs.std(0)
    mean = xs.mean(0).astype(np.float32)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    projection = None
    k = n_components
    if k is not None and k < x.shape[1] and k < len(sample):
        z = ((xs - mean) / std).astype(np.float32)
        cov = (z.T @ z).astype(np.float64) / max(len(z) - 1, 1)
        eigval, eigvec = np.linalg.eigh(cov)
        eigval, eigvec = eigval[::-1][:k], eigvec[:, ::-1][:, :k]
        signs = np.sign(eigvec[np.abs(eigvec).argmax(0), np.arange(k)])
        projection = (eigvec * (signs / np.sqrt(np.maximum(eigval, 1e-6)))).astype(np.float32)
    return WhitenedPCA(mean, std, projection)
