"""The fitted teacher: spatial niches from a neighbourhood representation of each cell or spot.

:class:`NicheTeacher` is the object behind :func:`nichekd.tl.teacher_niches` (sklearn-like ``fit`` /
``predict_proba`` / ``predict`` / ``save`` / ``load``). Four methods share one pipeline:

1. a per-cell **latent**: PCA of log-normalised counts, or any ``obsm`` representation (``use_rep``, e.g. an
   scVI latent or H&E features; used as given, no normalisation), optionally centred/scaled per library
   (``batch_correct``); or cell-type one-hot/fractions (``"composition"``); or an ``obs`` column (``"labels"``);
2. a **neighbourhood** of each cell (:mod:`nichekd._core.neighbors`): a radius in microns, estimated so that the
   mean neighbour count hits ``n_neighbors_target`` (or given), never crossing libraries, reused at predict time;
3. a **head** with K niches: a Gaussian mixture on distance-weighted neighbourhood means (``"aggregate"``,
   ``"composition"``; multi-hop means concatenated with ``n_rings > 1``, CellCharter-style), the
   self-supervised :mod:`niche transformer <nichekd.models._niche_transformer>` (``"transformer"``), or one-hot
   targets (``"labels"``).

Niches are named ``N0, N1, ...`` by decreasing size in the fitting data (mixture weight, or cluster mass), so
the names are deterministic for a given input and seed. Saved models are a folder with ``teacher.json`` and
``teacher.safetensors`` (plus ``transformer.safetensors``): no pickle.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._core import validate as _val
from .._core.keys import LIBRARY_KEY, SPATIAL_KEY
from .._core.neighbors import DEFAULT_N_NEIGHBORS, Neighbourhoods, estimate_radius, radius_neighbours
from .._core.spatial import micron_coords
from .._core.table import library_labels

# the pieces live in small modules; re-exported here so `nichekd.models.teacher.<name>` keeps working
from ._teacher_heads import (
    CALIBRATIONS,
    cell_type_matrix,
    fit_gmm,
    fit_transformer_head,
    gmm_log_posterior,
    label_codes,
    labels_proba,
    neighbour_temperature,
    softmax,
    transformer_head_logits,
)
from ._teacher_io import load_teacher, save_teacher
from ._teacher_latent import (
    TARGET_SUM,
    _standardise_state,
    check_counts,
    fit_expression_pca,
    log_normalise,
    neighbourhood_features,
    project_expression,
    standardise,
)

__all__ = [
    "DEFAULT_N_NEIGHBORS",
    "METHODS",
    "TARGET_SUM",
    "NicheTeacher",
    "TeacherInputs",
    "check_counts",
    "fit_gmm",
    "gmm_log_posterior",
    "log_normalise",
    "neighbourhood_features",
    "softmax",
    "standardise",
]

METHODS = ("aggregate", "composition", "transformer", "labels")
MIN_CELLS_PER_LIBRARY = 10
# hops of neighbourhood means (features grow n_rings-fold; CellCharter uses 3)
MAX_RINGS = 10
COUNTS_FIX = (
    "Put the raw counts in X (e.g. from adata.layers['counts'] or adata.raw), or pass use_rep= with a latent "
    "in obsm."
)


# ------------------------------------------------------------------------------------------------ teacher
@dataclass
class TeacherInputs:
    """Everything the head needs, computed once (a K sweep reuses it across K and seeds)."""

    xy: np.ndarray
    codes: np.ndarray
    nbrs: Neighbourhoods | None = None
    latent: np.ndarray | None = None
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_obs(self) -> int:
        """Number of cells/spots."""
        return len(self.xy)


class NicheTeacher:
    """Teacher niches from spatial omics (or any per-cell representation), sklearn-like.

    Parameters
    ----------
    n_niches
        Number of niches K (``None`` with ``method="labels"``: the number of label categories).
    method
        ``"aggregate"``, ``"composition"``, ``"transformer"`` or ``"labels"`` (see the module docstring).
    use_rep
        ``obsm`` key of a per-cell latent used as given (no normalisation); default: PCA of log counts.
    cell_type_key
        For ``"composition"``: an ``obs`` categorical of cell types, or an ``obsm`` key of per-spot cell-type
        fractions (DataFrame or array, rows summing to 1).
    labels_key
        For ``"labels"``: the ``obs`` column turned into teacher targets.
    library_key
        ``obs`` column with the section of each cell; neighbourhoods never cross sections.
    spatial_key
        ``obsm`` key of the micron coordinates.
    split_key
        ``obs`` column of a train/test split (``nk.pp.spatial_split``): neighbourhoods then also stay within
        each side (train, test, buffer), and the teacher is fitted on the cells outside the test side only, so
        no training target depends on test-strip expression. At predict time the column is used where it
        exists (new sections without a split get library-only neighbourhoods).
    radius_um
        Neighbourhood radius in microns; default: estimated so the mean neighbour count is
        ``n_neighbors_target`` (the estimate is kept and reused on new data).
    n_neighbors_target
        Target mean number of neighbours used to estimate the radius.
    max_neighbors
        Cap of neighbours per cell (fixed-width lists keep memory linear); default ``max(32, 3 * target)``.
    n_rings
        Number of hops whose neighbourhood means are concatenated (``"aggregate"``/``"composition"``).
    weights
        Neighbour weights, ``"gaussian"`` in distance (default) or ``"uniform"``.
    n_comps
        PCA components of the expression latent.
    n_top_genes
        Most variable genes kept for the PCA.
    batch_correct
        Centre and scale the latent per library before aggregation (batch-aware teacher); default off.
    covariance_type
        Gaussian mixture covariance (``"full"`` or ``"diag"``).
    reg_covar
        Added to the mixture's covariance diagonals (scikit-learn's ``reg_covar``); raise it for degenerate
        inputs such as low-resolution image features.
    label_smoothing
        For ``"labels"``: mass spread uniformly over the other niches.
    calibrate
        ``"neighbours"``: divide the logits by a temperature fitted so that a cell's probabilities predict
        its spatial neighbours' niches (:func:`~nichekd.models._teacher_heads.neighbour_temperature`; the
        argmax is unchanged, the posteriors stop being near one-hot). ``None``: raw log posteriors.
    max_fit_cells
        Cells used to fit the PCA and the mixture (a random subsample above this; prediction uses all).
    transformer_kwargs
        Overrides of :class:`~nichekd.models._niche_transformer.TransformerConfig` (``n_steps``, ...).
    random_state
        Seed; same seed, same niches.
    device
        Torch device for the transformer (``"auto"``: GPU when present).
    progress
        Show progress bars for the long steps.

    Examples
    --------
    >>> teacher = NicheTeacher(6, method="aggregate").fit(adata)
    >>> proba = teacher.predict_proba(new_adata)  # same genes, same radius
    >>> teacher.save("teacher/")
    >>> NicheTeacher.load("teacher/").predict(new_adata)
    """

    def __init__(
        self,
        n_niches: int | None = None,
        *,
        method: str = "aggregate",
        use_rep: str | None = None,
        cell_type_key: str | None = None,
        labels_key: str | None = None,
        library_key: str = LIBRARY_KEY,
        spatial_key: str = SPATIAL_KEY,
        split_key: str | None = None,
        radius_um: float | None = None,
        n_neighbors_target: float = DEFAULT_N_NEIGHBORS,
        max_neighbors: int | None = None,
        n_rings: int = 1,
        weights: str = "gaussian",
        n_comps: int = 30,
        n_top_genes: int = 2000,
        batch_correct: bool = False,
        covariance_type: str = "full",
        reg_covar: float = 1e-4,
        label_smoothing: float = 0.0,
        calibrate: str | None = None,
        max_fit_cells: int = 50_000,
        transformer_kwargs: dict | None = None,
        random_state: int = 0,
        device: str = "auto",
        progress: bool = True,
    ):
        self.n_niches = n_niches
        self.method = method
        self.use_rep = use_rep
        self.cell_type_key = cell_type_key
        self.labels_key = labels_key
        self.library_key = library_key
        self.spatial_key = spatial_key
        self.split_key = split_key
        self.radius_um = radius_um
        self.n_neighbors_target = n_neighbors_target
        self.max_neighbors = max_neighbors
        self.n_rings = n_rings
        self.weights = weights
        self.n_comps = n_comps
        self.n_top_genes = n_top_genes
        self.batch_correct = batch_correct
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.label_smoothing = label_smoothing
        self.calibrate = calibrate
        self.max_fit_cells = max_fit_cells
        self.transformer_kwargs = dict(transformer_kwargs or {})
        self.random_state = random_state
        self.device = device
        self.progress = progress
        # fitted state
        self.radius_um_: float | None = None
        self.encoder_: dict[str, Any] = {}
        self.gmm_ = None
        self.transformer_ = None
        self.niche_names_: list[str] = []
        self.fit_id_: str | None = None
        self.temperature_: float = 1.0
        self.train_losses_: list[float] = []

    # ------------------------------------------------------------------ validation
    def _config(self) -> dict[str, Any]:
        keys = (
            "n_niches",
            "method",
            "use_rep",
            "cell_type_key",
            "labels_key",
            "library_key",
            "spatial_key",
            "split_key",
            "radius_um",
            "n_neighbors_target",
            "max_neighbors",
            "n_rings",
            "weights",
            "n_comps",
            "n_top_genes",
            "batch_correct",
            "covariance_type",
            "reg_covar",
            "label_smoothing",
            "calibrate",
            "max_fit_cells",
            "transformer_kwargs",
            "random_state",
        )
        # the device is where this machine ran it, not part of the model: a teacher trained on a GPU loads and
        # predicts on a CPU (device="auto" after load)
        return {k: getattr(self, k) for k in keys}

    def _check_params(self) -> None:
        """Every option, checked before any data is read (one rule per kind: :mod:`nichekd._core.validate`)."""
        _val.check_choice("method", self.method, METHODS)
        if self.method == "labels":
            if self.labels_key is None:
                raise ValueError("method='labels' needs labels_key= (the obs column with the annotation).")
            _val.check_fraction("label_smoothing", self.label_smoothing)
        elif self.n_niches is None:
            raise ValueError("n_niches must be an integer >= 2, got None.")
        else:
            _val.check_int("n_niches", self.n_niches, minimum=2)
        if self.method == "composition" and self.cell_type_key is None:
            raise ValueError(
                "method='composition' needs cell_type_key= (obs cell types or obsm fractions); without cell "
                "types, run nichekd.pp.cell_types first (Leiden clusters of expression)."
            )
        _val.check_optional_positive("radius_um", self.radius_um, unit="microns")
        _val.check_positive("n_neighbors_target", self.n_neighbors_target)
        _val.check_optional_int("max_neighbors", self.max_neighbors)
        _val.check_int("n_rings", self.n_rings, maximum=MAX_RINGS)
        _val.check_choice("weights", self.weights, ("gaussian", "uniform"))
        _val.check_int("n_comps", self.n_comps)
        _val.check_int("n_top_genes", self.n_top_genes)
        if self.calibrate is not None and self.calibrate not in CALIBRATIONS:
            raise ValueError(f"calibrate must be None or one of {CALIBRATIONS}, got {self.calibrate!r}.")
        _val.check_nonnegative("reg_covar", self.reg_covar)
        _val.check_choice("covariance_type", self.covariance_type, ("full", "diag"))
        _val.check_int("max_fit_cells", self.max_fit_cells, minimum=2)
        _val.check_seed("random_state", self.random_state)

    def _check_libraries(self, adata: ad.AnnData, codes: np.ndarray, names: list[str]) -> None:
        sizes = np.bincount(codes, minlength=len(names))
        small = [f"{names[i]} ({sizes[i]})" for i in range(len(names)) if sizes[i] < MIN_CELLS_PER_LIBRARY]
        if small:
            raise ValueError(
                f"Libraries with fewer than {MIN_CELLS_PER_LIBRARY} cells cannot form neighbourhoods: "
                f"{', '.join(small)}. Drop them (adata[adata.obs[{self.library_key!r}] != ...]) or merge them."
            )
        k = self.n_niches
        if self.method != "labels" and k is not None:
            if k > adata.n_obs:
                raise ValueError(
                    f"n_niches={k} is larger than the number of cells ({adata.n_obs}); lower it."
                )
            if k > sizes.min():
                raise ValueError(
                    f"n_niches={k} is larger than library {names[int(sizes.argmin())]!r} allows "
                    f"({sizes.min()} cells); lower n_niches or drop that library."
                )

    def _library_codes(self, adata: ad.AnnData) -> tuple[np.ndarray, list[str]]:
        if self.library_key in adata.obs and adata.obs[self.library_key].isna().any():
            raise ValueError(f"obs[{self.library_key!r}] has missing values; every cell needs a library.")
        libs = library_labels(adata, self.library_key)
        return np.asarray(libs.codes, dtype=np.int64), [str(c) for c in libs.categories]

    # ------------------------------------------------------------------ per-cell inputs
    def _cell_type_matrix(self, adata: ad.AnnData, fit: bool) -> np.ndarray:
        return cell_type_matrix(adata, self.cell_type_key, self.encoder_, fit)

    def _label_codes(self, adata: ad.AnnData, fit: bool) -> np.ndarray:
        return label_codes(adata, self.labels_key, self.encoder_, fit, self.n_niches)

    def _latent(self, adata: ad.AnnData, fit: bool, rng: np.random.Generator) -> np.ndarray:
        if self.use_rep is not None:
            if self.use_rep not in adata.obsm:
                raise KeyError(f"use_rep={self.use_rep!r} is not in obsm; available: {list(adata.obsm)}.")
            latent = np.asarray(adata.obsm[self.use_rep], dtype=np.float32)
            if latent.ndim != 2 or not np.isfinite(latent).all():
                raise ValueError(f"obsm[{self.use_rep!r}] must be a finite (n, d) array.")
            if not fit and latent.shape[1] != self.encoder_["dim"]:
                raise ValueError(
                    f"obsm[{self.use_rep!r}] has {latent.shape[1]} dims, fitted on {self.encoder_['dim']}."
                )
            self.encoder_["dim"] = latent.shape[1]
            return latent
        x = adata.X
        if x is None:
            raise ValueError("adata.X is empty: put raw counts in X or pass use_rep=.")
        genes = None
        if not fit:
            names = self.encoder_["gene_names"]
            genes = adata.var_names.get_indexer(names)
            if (genes < 0).any():
                raise KeyError(
                    f"{int((genes < 0).sum())} genes used by the teacher are missing from the new data (e.g. "
                    f"{[g for g, p in zip(names, genes, strict=True) if p < 0][:5]}); predict on data with the "
                    "same genes."
                )
        check_counts(x, "X", fix=COUNTS_FIX, warn=fit)
        # all-zero tables give one niche (refused); many zero cells blur them (warned once, when fitting)
        _val.check_zero_counts(x, "X", warn_fraction=_val.ZERO_COUNT_WARN_FRACTION if fit else 1.0)
        xn = log_normalise(x)  # library size over all genes of this table, as at fit time
        if fit:
            pca = fit_expression_pca(xn, self.n_comps, self.n_top_genes, self.max_fit_cells, rng)
            # new data is subset to the PCA genes by name
            self.encoder_["gene_names"] = [str(g) for g in adata.var_names[pca["genes"]]]
            self.encoder_["pca_mean"] = pca["mean"]
            self.encoder_["pca_components"] = pca["components"]
            self.encoder_["dim"] = pca["components"].shape[0]
            genes = pca["genes"]
        pca = {
            "genes": genes,
            "mean": self.encoder_["pca_mean"],
            "components": self.encoder_["pca_components"],
        }
        return project_expression(xn, pca)

    def prepare(
        self, adata: ad.AnnData, *, fit: bool = False, xy_um: np.ndarray | None = None
    ) -> TeacherInputs:
        """Validate ``adata`` and compute the per-cell inputs of the head (latent, neighbourhoods, features).

        With ``fit=True`` the encoder (PCA, radius, categories, scaling) is learnt from ``adata``; otherwise the
        fitted one is applied. ``xy_um``: micron coordinates of the rows (default: read from the table, see
        :func:`nichekd._core.spatial.micron_coords`). Nothing is written to ``adata``.
        """
        self._check_params()
        if not isinstance(adata, ad.AnnData):
            raise TypeError(f"Expected an AnnData table, got {type(adata).__name__}.")
        if adata.n_obs == 0:
            raise ValueError("The table has no cells.")
        xy = (
            micron_coords(adata, library_key=self.library_key)
            if xy_um is None
            else np.asarray(xy_um, dtype=float)
        )
        codes, names = self._library_codes(adata)
        self._check_libraries(adata, codes, names)
        if fit:  # before any neighbour list is allocated (its width grows with the target)
            sizes = np.bincount(codes, minlength=len(names))
            _val.check_neighbour_target(
                self.n_neighbors_target, {n: int(c) for n, c in zip(names, sizes, strict=True) if c > 0}
            )
        rng = np.random.default_rng(self.random_state)
        if fit:
            self.encoder_ = {}
        inputs = TeacherInputs(xy=xy, codes=codes, extra={"libraries": names})
        if self.method == "labels":
            inputs.labels = self._label_codes(adata, fit)
            return inputs
        base = (
            self._cell_type_matrix(adata, fit)
            if self.method == "composition"
            else self._latent(adata, fit, rng)
        )
        groups = codes
        if self.split_key is not None and (fit or self.split_key in adata.obs):
            if self.split_key not in adata.obs:
                raise KeyError(f"split_key={self.split_key!r} is not an obs column; run nk.pp.spatial_split.")
            side = pd.Categorical(adata.obs[self.split_key].astype(str)).codes.astype(np.int64)
            groups = codes * (side.max() + 1) + side  # neighbourhoods within (library, side)
        if fit:
            self.radius_um_ = (
                float(self.radius_um)
                if self.radius_um is not None
                else estimate_radius(
                    xy, self.n_neighbors_target, groups=groups, random_state=self.random_state
                )
            )
        m = self.max_neighbors or int(max(32, np.ceil(3 * self.n_neighbors_target)))
        nbrs = radius_neighbours(xy, self.radius_um_, groups=groups, max_neighbors=m)
        mean_count = float(nbrs.counts().mean())
        if mean_count < 0.5:
            raise ValueError(
                f"With radius {self.radius_um_:.3g} um cells have {mean_count:.2f} neighbours on average: the "
                "radius is below the cell/spot spacing. Coordinates must be microns (obsm['spatial']) and "
                "radius_um= in microns; or leave radius_um=None to estimate it."
            )
        inputs.nbrs = nbrs
        inputs.extra["mean_neighbours"] = mean_count
        if self.method == "composition":
            inputs.features = np.sqrt(neighbourhood_features(base, nbrs, self.n_rings, self.weights))
            return inputs
        if fit:
            self.encoder_["standardise"] = _standardise_state(base)
        latent = standardise(base, self.encoder_["standardise"], codes if self.batch_correct else None)
        inputs.latent = latent
        if self.method == "aggregate":
            inputs.features = neighbourhood_features(latent, nbrs, self.n_rings, self.weights)
        return inputs

    # ------------------------------------------------------------------ head
    def fit_head(
        self, inputs: TeacherInputs, n_niches: int | None = None, random_state: int | None = None
    ) -> NicheTeacher:
        """Fit the K-niche head on prepared inputs (reused across K and seeds by :func:`niche_k_sweep`)."""
        k = int(n_niches if n_niches is not None else (self.n_niches or 0))
        seed = self.random_state if random_state is None else int(random_state)
        # which fitted model this is: the labels it writes on any object carry it, so a student can tell
        # whether today's teacher labels come from the model it learned from (saved with the teacher)
        self.fit_id_ = secrets.token_hex(8)
        self.gmm_ = self.transformer_ = None
        self.temperature_ = 1.0
        if self.method == "labels":
            k = len(self.encoder_["labels"])
            self.niche_names_ = [f"N{i}" for i in range(k)]
            self.n_niches = k
            return self
        if self.method in ("aggregate", "composition"):
            self.gmm_ = fit_gmm(
                inputs.features,
                k,
                random_state=seed,
                max_fit_cells=self.max_fit_cells,
                covariance_type=self.covariance_type,
                reg_covar=self.reg_covar,
            )
        else:
            self.transformer_, self.train_losses_ = fit_transformer_head(
                inputs,
                k,
                self.transformer_kwargs,
                random_state=seed,
                device=self.device,
                progress=self.progress,
            )
        self.n_niches = k
        self.niche_names_ = [f"N{i}" for i in range(k)]
        if self.calibrate == "neighbours":
            self.temperature_ = neighbour_temperature(
                self._raw_logits(inputs), inputs.nbrs, random_state=seed
            )
        return self

    def fitting_table(self, adata: ad.AnnData) -> ad.AnnData:
        """The cells the teacher learns from: all of them, or with ``split_key`` those outside the test side.

        Why: with a split, test-strip expression must not shape the encoder, the radius, the niches or the
        calibration, so changing it cannot change any training target.
        """
        if self.split_key is None:
            return adata
        if self.split_key not in adata.obs:
            raise KeyError(f"split_key={self.split_key!r} is not an obs column; run nk.pp.spatial_split.")
        keep = (adata.obs[self.split_key].astype(str) != "test").to_numpy()
        if not keep.any():
            raise ValueError(
                f"Every cell is 'test' in obs[{self.split_key!r}]; nothing to fit the teacher on."
            )
        return adata if keep.all() else adata[keep].copy()

    def fit(self, adata: ad.AnnData) -> NicheTeacher:
        """Learn the encoder and the K niches from ``adata`` (all libraries jointly: one label space).

        Parameters
        ----------
        adata
            Table with raw counts in ``X`` (or ``obsm[use_rep]``), micron coordinates in ``obsm['spatial']``
            and the library in ``obs[library_key]``.
        """
        inputs = self.prepare(self.fitting_table(adata), fit=True)
        return self.fit_head(inputs)

    @property
    def is_fitted(self) -> bool:
        """Whether the teacher has been fitted (or loaded)."""
        return bool(self.niche_names_)

    def _check_fitted(self) -> None:
        if not self.niche_names_:
            raise RuntimeError("The teacher is not fitted; call fit(adata) first.")

    def _raw_logits(self, inputs: TeacherInputs) -> np.ndarray:
        if self.gmm_ is not None:
            return gmm_log_posterior(self.gmm_, inputs.features, progress=self.progress).astype(np.float32)
        return transformer_head_logits(self.transformer_, inputs, self.device)

    def logits_from_inputs(self, inputs: TeacherInputs) -> np.ndarray | None:
        """``(n, K)`` logits (log posteriors for mixtures, divided by :attr:`temperature_`); ``None`` for
        ``"labels"``."""
        self._check_fitted()
        if self.method == "labels":
            return None
        logits = self._raw_logits(inputs)
        if self.temperature_ != 1.0:
            logits = (logits / np.float32(self.temperature_)).astype(np.float32)
        return logits

    def proba_from_inputs(self, inputs: TeacherInputs) -> np.ndarray:
        """``(n, K)`` float32 niche probabilities (rows sum to 1)."""
        if self.method == "labels":
            self._check_fitted()
            return labels_proba(inputs.labels, len(self.niche_names_), self.label_smoothing)
        return softmax(self.logits_from_inputs(inputs))

    def predict_logits(self, adata: ad.AnnData) -> np.ndarray | None:
        """Niche logits of new data (same genes/representation; the fitted radius is reused)."""
        return self.logits_from_inputs(self.prepare(adata))

    def predict_proba(self, adata: ad.AnnData) -> np.ndarray:
        """``(n, K)`` float32 niche probabilities of new data, columns in :attr:`niche_names_` order.

        Parameters
        ----------
        adata
            Table with the same genes (or ``obsm[use_rep]``), coordinates in microns and libraries.
        """
        return self.proba_from_inputs(self.prepare(adata))

    def predict(self, adata: ad.AnnData) -> pd.Categorical:
        """Most probable niche per cell, as a categorical with categories :attr:`niche_names_`.

        Parameters
        ----------
        adata
            As for :meth:`predict_proba`.
        """
        return self.labels_from_proba(self.predict_proba(adata))

    def labels_from_proba(self, proba: np.ndarray) -> pd.Categorical:
        """Arg-max niche names as a categorical (categories in column order)."""
        return pd.Categorical.from_codes(proba.argmax(1), categories=self.niche_names_)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the fitted teacher to folder ``path`` (``teacher.json`` + safetensors, no pickle).

        Parameters
        ----------
        path
            Folder to create (or overwrite the teacher files in).
        """
        return save_teacher(self, path)

    @classmethod
    def load(cls, path: str | Path) -> NicheTeacher:
        """Read a teacher written by :meth:`save`.

        Parameters
        ----------
        path
            Folder holding ``teacher.json``.
        """
        return load_teacher(cls, path)

    def __repr__(self) -> str:
        state = (
            f"fitted, radius_um={self.radius_um_:.4g}"
            if self.niche_names_ and self.radius_um_
            else ("fitted" if self.niche_names_ else "not fitted")
        )
        return f"NicheTeacher(n_niches={self.n_niches}, method={self.method!r}, {state})"
