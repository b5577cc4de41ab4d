"""The distilled student: niche logits from H&E features of a cell and its spatial neighbours.

Two architectures share one interface:

- ``"transformer"``: the cell and its neighbours (within the teacher's radius) become tokens, each the
  projected image feature plus a relative position encoding in microns; a small transformer reads the
  niche out at the centre token;
- ``"mlp"``: the fast path, an MLP on ``[own features, mean of neighbourhood features]``.

Optionally (``context_scales``) both also see the tissue beyond the neighbourhood: the mean feature over
windows several radii wide, one extra token (or input block) per scale.

Features stay one ``(N, D)`` float32 array and neighbourhoods one ``(N, M)`` index; tokens are gathered per
batch, so memory is ``O(N * (D + M))`` and a million cells fit.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from .._core import validate as _val
from .._core.neighbors import (
    DEFAULT_N_NEIGHBORS,
    MAX_NEIGHBORS,
    Neighbourhoods,
    default_max_neighbors,
    estimate_radius,
    radius_neighbours,
)
from .._core.reduction import WhitenedPCA, fit_whitened_pca
from .._core.runtime import resolve_device, seed_everything, versions
from ._context import context_means, context_reach
from ._integrity import arrays_digest, definition_digest, json_safe

if TYPE_CHECKING:  # torch is imported where a model is built, fitted or loaded, not by ``import nichekd``
    import torch
    from torch import nn

ARCHITECTURES = ("transformer", "mlp")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 2
# config fields that define what the model computes: covered by the definition checksum
DEFINING_FIELDS = ("n_niches", "niche_names", "radius_um", "architecture", "max_neighbors", "temperature",
                   "d_model", "n_layers", "n_heads", "hidden", "dropout", "n_components", "n_features",
                   "encoder", "features_key", "train_mean_neighbors", "context_scales", "n_members")  # fmt: skip
# seed-ensemble members at most (training time grows with each)
MAX_MEMBERS = 32
MAX_CONTEXT_SCALES = 8
# training settings the model carries; fit(epochs=...) and the like still work, with a FutureWarning
TRAINING_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "min_epochs")
MIN_STEPS_PER_EPOCH = 32
MIN_BATCH = 32
# AdamW steps of this size (or softmax temperatures this flat) only ever diverge or learn nothing
MAX_LR = 10.0
MAX_TEMPERATURE = 1000.0


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    Examples
    --------
    >>> import torch
    >>> float(distillation_loss(torch.zeros(4, 3), torch.zeros(4, 3), 2.0))
    0.0
    """
    import torch.nn.functional as F

    t = float(temperature)
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits / t, dim=1)
    return t * t * F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")


@contextlib.contextmanager
def _deterministic():
    """Deterministic torch kernels for the duration (restored afterwards: other code may not want them)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)


class NicheStudent:
    """A student that predicts teacher niches from histology features and spatial neighbourhoods.

    Parameters
    ----------
    n_niches
        Number of niches ``K`` (the teacher's); default: the width of the logits ``fit`` is given.
    radius_um
        Neighbourhood radius in microns (the teacher's, reused at prediction); default: estimated at ``fit`` on
        the training cells for ``n_neighbors_target`` neighbours (``nk.tl.distill`` takes the teacher's).
    niche_names
        Names of the ``K`` niches in output order; default ``"N0"``, ``"N1"``, ...
    architecture
        ``"transformer"`` or ``"mlp"``.
    n_neighbors_target
        Mean neighbour count the radius is chosen for when ``radius_um`` is not given (default 10, the
        teacher's default).
    max_neighbors
        Neighbours per cell at most (nearest first), the cell itself excluded; default twice the target.
    temperature
        Distillation temperature ``T``.
    d_model, n_layers, n_heads
        Transformer width, depth and heads.
    hidden
        MLP hidden width.
    dropout
        Dropout in both architectures.
    n_components
        Wide features (e.g. 1280-d) are standardised and reduced once to this many whitened principal
        components of the training cells (stored in the model): tokens are then cheap to gather and train on.
        ``None`` keeps every feature.
    encoder
        The ``histology_features`` parameters the features were computed with (replayed on new slides).
    features_key
        The ``obsm`` key the features were read from.
    context_scales
        Tissue context beyond the neighbourhood: per scale ``s``, the mean (reduced) feature of the cells in
        a window of half-width ``s * radius_um`` becomes one more token (transformer) or input block (MLP).
        ``()``: the neighbourhood only.
    n_members
        Members of a seed ensemble (seeds ``random_state``, ``random_state + 1``, ...): predictions average
        their probabilities. Training time grows ``n_members``-fold.
    epochs, batch_size, lr, weight_decay
        Optimisation (AdamW). With few training cells the batch shrinks (down to 32) so that an epoch takes
        at least 32 steps; the size used is ``batch_size_used``.
    patience
        Stop after this many epochs without a better validation loss; the best weights are kept.
    min_epochs
        Epochs trained before validation may select or stop: the first epochs' under-confident models
        can score a low validation loss yet predict niches poorly.
    epoch_cells
        Training cells drawn per epoch (a new random draw each epoch) when there are more: a Visium HD section's
        hundreds of thousands of bins then cost as much per epoch as 65,536 cells, and neighbouring bins,
        which carry nearly the same information, are not all revisited every epoch. Training sets up to this
        size are unaffected (every cell every epoch). ``None``: every training cell every epoch.
    val_fraction, val_blocks
        Share of the training cells ``nk.tl.distill`` holds out for early stopping, as ``val_blocks`` spatial
        blocks per section (``fit`` takes the masks it is given).
    tta
        ``nk.tl.distill`` predicts with test-time augmentation: the mean of the probabilities over the
        original features and every augmented view (``nk.pp.augmented_features``).

    The defaults are those of ``nk.tl.distill``: ``NicheStudent(**settings).fit(...)`` on the cells and masks
    ``distill`` uses trains the same model as ``distill(sdata, model=NicheStudent(**settings))``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> xy, feats = rng.uniform(0, 500, (300, 2)), rng.normal(size=(300, 16)).astype("float32")
    >>> teacher = rng.normal(size=(300, 3))
    >>> model = NicheStudent(3, radius_um=60.0, architecture="mlp", epochs=2).fit(feats, teacher, xy)
    >>> model.predict_proba(feats, xy).shape
    (300, 3)
    """

    def __init__(
        self,
        n_niches: int | None = None,
        *,
        radius_um: float | None = None,
        niche_names: Sequence[str] | None = None,
        architecture: str = "transformer",
        n_neighbors_target: float | None = None,
        max_neighbors: int | None = None,
        temperature: float = 2.0,
        d_model: int = 64,
        n_layers: int = 1,
        n_heads: int = 4,
        hidden: int = 256,
        dropout: float = 0.1,
        n_components: int | None = 32,
        n_members: int = 1,
        epochs: int = 30,
        batch_size: int = 512,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 5,
        min_epochs: int = 10,
        epoch_cells: int | None = 65_536,
        val_fraction: float = 0.1,
        val_blocks: int = 4,
        tta: bool = False,
        encoder: dict | None = None,
        features_key: str | None = None,
        context_scales: Sequence[float] = (),
    ):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")
        if niche_names is not None and n_niches is None:
            n_niches = len(niche_names)
        if n_niches is not None:
            _val.check_int("n_niches", n_niches, minimum=2)
        if radius_um is not None:
            _val.check_positive("radius_um", radius_um, unit="microns")
        if n_neighbors_target is not None:
            _val.check_positive("n_neighbors_target", n_neighbors_target)
        _val.check_optional_int("max_neighbors", max_neighbors, maximum=MAX_NEIGHBORS)
        _val.check_positive("temperature", temperature, maximum=MAX_TEMPERATURE)
        names = None
        if n_niches is not None:
            names = (
                [f"N{i}" for i in range(int(n_niches))]
                if niche_names is None
                else [str(n) for n in niche_names]
            )
            if len(names) != int(n_niches):
                raise ValueError(f"niche_names has {len(names)} names for {n_niches} niches.")
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience),
                            ("val_blocks", val_blocks), ("d_model", d_model), ("n_layers", n_layers),
                            ("n_heads", n_heads), ("hidden", hidden)):  # fmt: skip
            _val.check_int(name, value)
        _val.check_int("min_epochs", min_epochs, minimum=0)
        _val.check_int("n_members", n_members, maximum=MAX_MEMBERS)
        _val.check_positive("lr", lr, maximum=MAX_LR)
        _val.check_nonnegative("weight_decay", weight_decay)
        _val.check_fraction("val_fraction", val_fraction)
        _val.check_fraction("dropout", dropout)
        if n_components is not None:
            _val.check_int("n_components", n_components)
        # None until fit: K from the teacher's logits, the radius estimated for n_neighbors_target neighbours
        self.n_niches = None if n_niches is None else int(n_niches)
        self.niche_names = names
        self.radius_um = None if radius_um is None else float(radius_um)
        self.architecture = architecture
        self.n_neighbors_target = None if n_neighbors_target is None else float(n_neighbors_target)
        self.max_neighbors = None if max_neighbors is None else int(max_neighbors)
        self.temperature = float(temperature)
        self.d_model = int(d_model)
        self.n_layers = int(n_layers)
        self.n_heads = int(n_heads)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.n_components = None if n_components is None else int(n_components)
        # training: fit reads these (distill too, so that both train the same model)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.patience = int(patience)
        self.min_epochs = int(min_epochs)
        self.epoch_cells = None if epoch_cells is None else _val.check_int("epoch_cells", epoch_cells)
        self.val_fraction = float(val_fraction)
        self.val_blocks = int(val_blocks)
        self.tta = bool(tta)
        self.encoder = dict(encoder or {})
        self.features_key = features_key
        # obs column of the split it was trained with: prediction keeps neighbourhoods within its parts
        self.split_key: str | None = None
        self.n_members = int(n_members)
        # positive multiples of the radius, one context token each ("24" is no list of scales)
        self.context_scales = _val.check_number_list(
            "context_scales", () if context_scales is None else context_scales, max_length=MAX_CONTEXT_SCALES
        )
        self.n_features: int | None = None
        self.feature_mean: np.ndarray | None = None
        self.feature_std: np.ndarray | None = None
        self.projection: np.ndarray | None = None
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self.best_epoch: int | None = None
        self.module: nn.Module | None = None
        # mean neighbour count of the training cells: predict_niches tiles H&E-only slides to match it
        self.train_mean_neighbors: float | None = None
        self.batch_size_used: int | None = None  # the mini-batch size fit used (capped for small data)
        # the teacher run it learned from (nk.tl.distill), recorded with its predictions for evaluate's check
        self.teacher_record: dict[str, Any] | None = None

    # -- construction ------------------------------------------------------------------------------------
    def _build(self) -> nn.Module:
        from ._student_nets import Ensemble

        if self.n_members == 1:  # a bare member: weights of single models keep their layout
            return self._build_member()
        return Ensemble([self._build_member() for _ in range(self.n_members)])

    def _build_member(self) -> nn.Module:
        from ._student_nets import MLPStudent, TransformerStudent

        if self.architecture == "transformer":
            return TransformerStudent(
                self.n_inputs,
                self.n_niches,
                self.radius_um,
                self.d_model,
                self.n_layers,
                self.n_heads,
                self.dropout,
                len(self.context_scales),
            )
        return MLPStudent(self.n_inputs, self.n_niches, self.hidden, self.dropout, len(self.context_scales))

    @property
    def halo_um(self) -> float:
        """Distance within which other cells can change a cell's prediction (neighbours and context)."""
        return max(self.radius_um, context_reach(self.radius_um, self.context_scales))

    def context(self, inputs: np.ndarray, xy: np.ndarray, groups: np.ndarray | None) -> torch.Tensor | None:
        """``(N, S, n_inputs)`` context means of the network inputs, or ``None`` without context scales."""
        if not self.context_scales:
            return None
        import torch

        return torch.from_numpy(context_means(inputs, xy, self.radius_um, self.context_scales, groups))

    @property
    def n_inputs(self) -> int:
        """Width of the network's input: principal components if reduced, else the features."""
        return self.n_features if self.projection is None else self.projection.shape[1]

    # constructor arguments that come from the data (the teacher's K and names, the features' record), not
    # from the user: nk.tl.distill sets them
    DATA_ARGUMENTS = ("n_niches", "niche_names", "encoder", "features_key")

    @classmethod
    def settings(cls) -> set[str]:
        """The constructor arguments a user sets (everything but :attr:`DATA_ARGUMENTS`)."""
        return set(inspect.signature(cls).parameters) - set(cls.DATA_ARGUMENTS)

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model unfitted (scikit-learn's name).

        Examples
        --------
        >>> NicheStudent(architecture="mlp", epochs=5).get_params()["epochs"]
        5
        """
        return {k: getattr(self, k) for k in inspect.signature(type(self)).parameters}

    @property
    def is_fitted(self) -> bool:
        """Whether weights and feature normalisation exist."""
        return self.module is not None

    def neighbourhoods(self, xy: np.ndarray, groups: np.ndarray | None = None) -> Neighbourhoods:
        """Neighbourhoods by the teacher's rule (fixed radius, never across ``groups``)."""
        return radius_neighbours(xy, self.radius_um, groups=groups, max_neighbors=self.max_neighbors)

    def _check_features(self, features: np.ndarray, xy: np.ndarray) -> np.ndarray:
        x = np.asarray(features)
        if x.ndim != 2:
            raise ValueError(f"features must be (n_cells, n_features), got shape {x.shape}.")
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise ValueError(
                f"The model expects {self.n_features} features per cell, the data has {x.shape[1]}; "
                "compute the features with the model's encoder settings (model.encoder)."
            )
        if len(xy) != len(x):
            raise ValueError(f"features ({len(x)} rows) and coordinates ({len(xy)} rows) differ in length.")
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        bad = ~np.isfinite(x).all(1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} cells have NaN or infinite features; recompute them or drop those cells."
            )
        return np.ascontiguousarray(x)

    def _check_views(self, views: np.ndarray | None, x: np.ndarray) -> np.ndarray | None:
        """``(N, V, D)`` float32 views matching the features, or ``None``."""
        if views is None:
            return None
        v = np.asarray(views, dtype=np.float32)
        if v.ndim != 3 or v.shape[0] != len(x) or v.shape[2] != x.shape[1]:
            raise ValueError(
                f"views must be (n_cells, n_views, {x.shape[1]}) for {len(x)} cells, got {v.shape}; compute "
                "them with nk.pp.augmented_features from the same features."
            )
        if not np.isfinite(v).all():
            raise ValueError("views contain NaN or infinite values; recompute them.")
        return v

    def _batch(self, feats: torch.Tensor, xy: np.ndarray, idx: np.ndarray, device: str, ctx=None):
        """Gather one batch: features ``(B, M, D)``, offsets ``(B, M, 2)``, mask ``(B, M)``, context
        ``(B, S, D)`` or ``None``."""
        import torch

        mask = idx >= 0
        safe = np.where(mask, idx, idx[:, :1])
        x = feats[torch.from_numpy(safe)]
        offsets = np.where(mask[..., None], xy[safe] - xy[idx[:, :1]], 0.0).astype(np.float32)
        c = None if ctx is None else ctx[torch.from_numpy(idx[:, 0])].to(device)
        return x.to(device), torch.from_numpy(offsets).to(device), torch.from_numpy(mask).to(device), c

    def _fit_normalisation(self, x: np.ndarray, train: np.ndarray, rng: np.random.Generator) -> None:
        """Standardise on the training cells; reduce wide features to whitened principal components."""
        reduction = fit_whitened_pca(x, train, self.n_components, rng)
        self.feature_mean, self.feature_std, self.projection = (
            reduction.mean,
            reduction.std,
            reduction.projection,
        )

    def transform(self, features: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        """Standardised (and reduced) network inputs ``(N, n_inputs)`` float32, computed in chunks."""
        return WhitenedPCA(self.feature_mean, self.feature_std, self.projection).transform(features, chunk)

    def _take_training_overrides(self, training: dict[str, Any]) -> None:
        """Training settings passed to ``fit`` (the old API): set on the model, with a FutureWarning."""
        unknown = sorted(set(training) - set(TRAINING_FIELDS))
        if unknown:
            raise TypeError(f"NicheStudent.fit() got unexpected keyword arguments {unknown}.")
        if training:
            warnings.warn(
                f"NicheStudent.fit({', '.join(f'{k}=' for k in training)}) is deprecated: the model carries its "
                f"training settings, pass them as NicheStudent({', '.join(f'{k}=...' for k in training)}).",
                FutureWarning,
                stacklevel=3,
            )
        for name in ("epochs", "batch_size", "patience"):
            if name in training:
                setattr(self, name, _val.check_int(name, training[name]))
        if "min_epochs" in training:
            self.min_epochs = _val.check_int("min_epochs", training["min_epochs"], minimum=0)
        if "lr" in training:
            self.lr = _val.check_positive("lr", training["lr"], maximum=MAX_LR)
        if "weight_decay" in training:
            self.weight_decay = _val.check_nonnegative("weight_decay", training["weight_decay"])

    def _resolve_neighbourhood(
        self, xy: np.ndarray, train: np.ndarray, groups: np.ndarray | None, random_state: int
    ) -> None:
        """The radius (estimated on the training cells for the target count) and the neighbour cap, if unset."""
        target = DEFAULT_N_NEIGHBORS if self.n_neighbors_target is None else self.n_neighbors_target
        if self.radius_um is None:
            self.radius_um = estimate_radius(
                xy[train], target, groups=None if groups is None else np.asarray(groups)[train],
                random_state=random_state,
            )  # fmt: skip
        if self.max_neighbors is None:
            self.max_neighbors = default_max_neighbors(target)

    # -- training ----------------------------------------------------------------------------------------
    def fit(
        self,
        features: np.ndarray,
        teacher_logits: np.ndarray,
        xy: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        train_mask: np.ndarray | None = None,
        val_mask: np.ndarray | None = None,
        views: np.ndarray | None = None,
        device: str = "auto",
        random_state: int = 0,
        progress: bool = True,
        **training: Any,
    ) -> NicheStudent:
        """Fit on ``train_mask`` cells against the teacher's logits, early-stopping on ``val_mask`` cells.

        Parameters
        ----------
        features
            ``(N, D)`` histology features of every cell (the neighbours' too).
        teacher_logits
            ``(N, K)`` teacher logits (rows outside ``train_mask | val_mask`` are ignored).
        xy
            ``(N, 2)`` coordinates in microns.
        groups
            Per-cell group (section x split): neighbourhoods never cross groups.
        train_mask, val_mask
            Boolean masks of the training and validation cells (default: all cells train, no validation).
        views
            Optional ``(N, V, D)`` features of augmented views of every patch (``nk.pp.augmented_features``):
            every epoch each cell (and each neighbour) draws one of its ``V + 1`` versions (original or a
            view). Validation always uses the originals.
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        random_state
            Seed of initialisation, shuffling and dropout.
        progress
            Show a progress bar.
        **training
            Deprecated: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``patience``, ``min_epochs`` belong
            to the model (``NicheStudent(epochs=...)``); given here they set the model's value, with a warning.

        Returns
        -------
        ``self``, fitted. ``n_niches`` (when not given) comes from the logits' width; ``radius_um`` (when not
        given) is estimated on the training cells for ``n_neighbors_target`` neighbours.

        Examples
        --------
        >>> model = NicheStudent(3, radius_um=60.0, epochs=2).fit(feats, teacher, xy)  # doctest: +SKIP
        """
        import torch

        from ._student_nets import Ensemble

        self._take_training_overrides(training)
        epochs, batch_size, lr = self.epochs, self.batch_size, self.lr
        weight_decay, patience, min_epochs = self.weight_decay, self.patience, self.min_epochs
        _val.check_seed("random_state", random_state)
        xy = np.asarray(xy, dtype=np.float64)
        x = self._check_features(features, xy)
        t = np.asarray(teacher_logits, dtype=np.float32)
        if t.ndim != 2 or len(t) != len(x):
            raise ValueError(f"teacher_logits must be ({len(x)}, n_niches), got {t.shape}.")
        if self.n_niches is None:
            self.n_niches, self.niche_names = t.shape[1], [f"N{i}" for i in range(t.shape[1])]
        if t.shape != (len(x), self.n_niches):
            raise ValueError(f"teacher_logits must be ({len(x)}, {self.n_niches}), got {t.shape}.")
        train = np.ones(len(x), bool) if train_mask is None else np.asarray(train_mask, bool)
        val = np.zeros(len(x), bool) if val_mask is None else np.asarray(val_mask, bool)
        if (train & val).any():
            raise ValueError(
                "train_mask and val_mask overlap; validation cells must be held out of training."
            )
        if not np.isfinite(t[train | val]).all():
            raise ValueError("teacher_logits contain NaN or infinite values for training cells.")
        if train.sum() < max(2 * self.n_niches, 10):
            raise ValueError(
                f"Only {int(train.sum())} training cells for {self.n_niches} niches; need at least "
                f"{max(2 * self.n_niches, 10)}. Use a larger training split or fewer niches."
            )
        self._resolve_neighbourhood(xy, train, groups, random_state)
        self.n_features = x.shape[1]
        device = resolve_device(device)
        rng = seed_everything(random_state)
        self._fit_normalisation(x, train, rng)
        nbrs = self.neighbourhoods(xy, groups)
        self.train_mean_neighbors = float(nbrs.counts()[train].mean())
        inputs = self.transform(x)
        feats = torch.from_numpy(inputs)
        ctx = self.context(inputs, xy, groups)
        views = self._check_views(views, x)
        view_inputs = (
            None
            if views is None
            else np.stack([self.transform(views[:, v]) for v in range(views.shape[1])], 1)
        )
        target = torch.from_numpy(t)
        train_idx, val_idx = np.flatnonzero(train), np.flatnonzero(val)
        # small training sets: shrink the batch so that every epoch still takes enough optimiser steps
        self.batch_size_used = int(min(batch_size, max(MIN_BATCH, len(train_idx) // MIN_STEPS_PER_EPOCH)))
        batch_size = self.batch_size_used

        members, first = [], None
        with _deterministic():
            for member in range(self.n_members):
                if member:  # each member its own seed: initialisation, shuffling, dropout
                    rng = seed_everything(random_state + member)
                self.module = self._build_member().to(device)
                opt = torch.optim.AdamW(self.module.parameters(), lr=lr, weight_decay=weight_decay)
                self.history = {"train_loss": [], "val_loss": []}
                best, best_state, since_best = np.inf, None, 0
                bar = tqdm(range(int(epochs)), desc=f"distilling ({self.architecture})", disable=not progress)
                for epoch in bar:
                    self.module.train()
                    epoch_feats = feats
                    if view_inputs is not None:  # one version per cell this epoch: 0 is the original
                        pick = rng.integers(0, view_inputs.shape[1] + 1, len(x))
                        aug = pick > 0
                        epoch_feats = feats.clone()
                        epoch_feats[aug] = torch.from_numpy(view_inputs[np.flatnonzero(aug), pick[aug] - 1])
                    order = rng.permutation(train_idx)
                    if self.epoch_cells is not None:
                        order = order[: self.epoch_cells]  # a fresh subset each epoch on very large sections
                    total = 0.0
                    for s in range(0, len(order), batch_size):
                        b = order[s : s + batch_size]
                        xb, ob, mb, cb = self._batch(epoch_feats, xy, nbrs.index[b], device, ctx)
                        loss = distillation_loss(
                            self.module(xb, ob, mb, cb), target[b].to(device), self.temperature
                        )
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        total += float(loss.detach()) * len(b)
                    if not np.isfinite(total):
                        self._diverged("training", total, epoch, member)
                    self.history["train_loss"].append(total / len(order))
                    if len(val_idx):
                        logits = self._logits(feats, xy, nbrs, val_idx, device, 2048, ctx)
                        vl = float(
                            distillation_loss(torch.from_numpy(logits), target[val_idx], self.temperature)
                        )
                        if not np.isfinite(vl):
                            self._diverged("validation", vl, epoch, member)
                        self.history["val_loss"].append(vl)
                        if epoch + 1 < min_epochs:
                            pass  # too early to select or stop
                        elif vl < best - 1e-5:
                            best, since_best, self.best_epoch = vl, 0, epoch
                            best_state = copy.deepcopy(self.module.state_dict())
                        else:
                            since_best += 1
                        bar.set_postfix(train=f"{self.history['train_loss'][-1]:.3f}", val=f"{vl:.3f}")
                        if since_best >= patience:
                            break
                    else:
                        self.best_epoch = epoch
                        bar.set_postfix(train=f"{self.history['train_loss'][-1]:.3f}")
                if best_state is not None:
                    self.module.load_state_dict(best_state)
                if not all(bool(torch.isfinite(p).all()) for p in self.module.parameters()):
                    self._diverged("training", float("nan"), epoch, member)  # weights, after the last step
                members.append(self.module)
                if first is None:
                    first = (self.history, self.best_epoch)
        # the history reported is the first member's (the only one without an ensemble)
        self.history, self.best_epoch = first
        self.module = members[0] if self.n_members == 1 else Ensemble(members).to(device)
        self.module.eval()
        return self

    def _diverged(self, which: str, loss: float, epoch: int, member: int) -> None:
        """Stop a fit whose loss is no longer finite (NaN weights would predict NaN probabilities and one niche
        for every cell): the model is left unfitted."""
        self.module = None
        self.history = {"train_loss": [], "val_loss": []}
        self.best_epoch = None
        ensemble = f" (ensemble member {member})" if self.n_members > 1 else ""
        raise ValueError(
            f"The student's {which} loss became {loss} at epoch {epoch + 1}{ensemble}: training diverged with "
            f"lr={self.lr:g} and temperature={self.temperature:g}. Lower lr= (default 1e-3) or bring temperature= "
            "back towards the default 2, e.g. NicheStudent(lr=1e-3, temperature=2.0); no model was fitted and "
            "nothing was written."
        )

    # -- prediction --------------------------------------------------------------------------------------
    def _logits(
        self,
        feats: torch.Tensor,
        xy: np.ndarray,
        nbrs: Neighbourhoods,
        idx: np.ndarray,
        device: str,
        batch_size: int,
        ctx: torch.Tensor | None = None,
    ) -> np.ndarray:
        import torch

        self.module.eval()
        out = np.empty((len(idx), self.n_niches), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(idx), batch_size):
                b = idx[s : s + batch_size]
                xb, ob, mb, cb = self._batch(feats, xy, nbrs.index[b], device, ctx)
                out[s : s + len(b)] = self.module(xb, ob, mb, cb).float().cpu().numpy()
        return out

    def predict_logits(
        self,
        features: np.ndarray,
        xy: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        views: np.ndarray | None = None,
        batch_size: int = 2048,
        device: str = "auto",
    ) -> np.ndarray:
        """``(N, K)`` niche logits for every cell (neighbourhoods within ``groups``).

        With ``views`` (``(N, V, D)`` augmented views, test-time augmentation) the logits are the log of the
        probabilities averaged over the original and the ``V`` views.

        Examples
        --------
        >>> logits = model.predict_logits(feats, xy)  # doctest: +SKIP
        """
        import torch

        if not self.is_fitted:
            raise RuntimeError("The student is not fitted; call fit() or NicheStudent.load() first.")
        xy = np.asarray(xy, dtype=np.float64)
        x = self._check_features(features, xy)
        views = self._check_views(views, x)
        device = resolve_device(device)
        self.module.to(device)
        nbrs = self.neighbourhoods(xy, groups)
        versions_ = [x] if views is None else [x, *(views[:, v] for v in range(views.shape[1]))]
        with _deterministic():
            logits = []
            for f in versions_:
                inputs = self.transform(f)
                ctx = self.context(inputs, xy, groups)
                logits.append(
                    self._logits(
                        torch.from_numpy(inputs), xy, nbrs, np.arange(len(x)), device, batch_size, ctx
                    )
                )
        if len(logits) == 1:
            return logits[0]
        proba = torch.softmax(torch.from_numpy(np.stack(logits)).double(), dim=2).mean(0)
        return torch.log(proba.clamp_min(1e-12)).float().numpy()

    def predict_proba(
        self,
        features: np.ndarray,
        xy: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        views: np.ndarray | None = None,
        batch_size: int = 2048,
        device: str = "auto",
    ) -> np.ndarray:
        """``(N, K)`` niche probabilities (softmax of the logits at temperature 1; averaged over ``views``).

        Examples
        --------
        >>> proba = model.predict_proba(feats, xy)  # doctest: +SKIP
        """
        import torch

        logits = self.predict_logits(
            features, xy, groups=groups, views=views, batch_size=batch_size, device=device
        )
        return torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()

    def predict(
        self,
        features: np.ndarray,
        xy: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        views: np.ndarray | None = None,
        batch_size: int = 2048,
        device: str = "auto",
    ) -> np.ndarray:
        """Niche names (argmax of the logits; probabilities averaged over ``views``).

        Examples
        --------
        >>> niches = model.predict(feats, xy)  # doctest: +SKIP
        """
        logits = self.predict_logits(
            features, xy, groups=groups, views=views, batch_size=batch_size, device=device
        )
        return np.asarray(self.niche_names, dtype=object)[logits.argmax(1)]

    # -- persistence -------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything but the weights, as plain JSON types."""
        return json_safe(
            {
                "format_version": FORMAT_VERSION,
                "n_niches": self.n_niches,
                "niche_names": self.niche_names,
                "radius_um": self.radius_um,
                "architecture": self.architecture,
                "max_neighbors": self.max_neighbors,
                "temperature": self.temperature,
                "d_model": self.d_model,
                "n_layers": self.n_layers,
                "n_heads": self.n_heads,
                "hidden": self.hidden,
                "dropout": self.dropout,
                "encoder": self.encoder,
                "features_key": self.features_key,
                "split_key": self.split_key,
                "n_features": self.n_features,
                "n_components": self.n_components,
                "train_mean_neighbors": self.train_mean_neighbors,
                "batch_size_used": self.batch_size_used,
                "teacher_record": self.teacher_record,
                "split_record": getattr(self, "split_record", None),
                "n_neighbors_target": self.n_neighbors_target,
                "training": {
                    k: getattr(self, k)
                    for k in (*TRAINING_FIELDS, "epoch_cells", "val_fraction", "val_blocks", "tta")
                },
                "context_scales": list(self.context_scales),
                "n_members": self.n_members,
                "history": self.history,
                "best_epoch": self.best_epoch,
                "versions": versions(),
            }
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        import torch

        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        tensors["feature_mean"] = torch.from_numpy(np.ascontiguousarray(self.feature_mean))
        tensors["feature_std"] = torch.from_numpy(np.ascontiguousarray(self.feature_std))
        if self.projection is not None:
            tensors["projection"] = torch.from_numpy(np.ascontiguousarray(self.projection))
        return tensors

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights + feature normalisation) to folder ``path``.

        The config carries sha256 checksums of the weights and of the defining fields (niche names, radius,
        architecture, encoder settings, ...), verified by :meth:`load`. Both files are written to temporary
        names first and renamed into place, so an interrupted save never leaves a half-written model.

        Examples
        --------
        >>> model.save("student_model")  # doctest: +SKIP
        """
        from safetensors.torch import save_file

        if not self.is_fitted:
            raise RuntimeError("Nothing to save: the student is not fitted.")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        cfg = self.config()
        cfg["checksum"] = {"weights": arrays_digest(tensors), "definition": _definition_digest(cfg)}
        tmp_w, tmp_c = path / f".{WEIGHTS_FILE}.tmp", path / f".{CONFIG_FILE}.tmp"
        save_file(tensors, str(tmp_w))
        tmp_c.write_text(json.dumps(cfg, indent=2))
        tmp_w.replace(path / WEIGHTS_FILE)
        tmp_c.replace(path / CONFIG_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NicheStudent:
        """Read a saved student; only JSON and safetensors are read (no code runs from the files).

        Raises naming the file and the problem when a file is missing, truncated or not valid JSON /
        safetensors, when a checksum does not match (weights corrupted, or niche names, radius, architecture or
        encoder settings edited after saving) and when the feature normalisation is not finite or has a zero
        standard deviation.

        Examples
        --------
        >>> model = NicheStudent.load("student_model")  # doctest: +SKIP
        """
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"No saved model folder at {path}; save a model with NicheStudent.save(path)."
            )
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"{path / name} is missing; save a model with NicheStudent.save(path)."
                )
        cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        try:
            cfg = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{cfg_file} is not valid JSON ({err}); the model config is damaged.") from err
        if not isinstance(cfg, dict):
            raise ValueError(f"{cfg_file} holds a {type(cfg).__name__}, not a model config.")
        if cfg.get("format_version") not in (1, FORMAT_VERSION):
            raise ValueError(
                f"Unsupported model format {cfg.get('format_version')!r} in {cfg_file} (expected {FORMAT_VERSION})."
            )
        try:
            tensors = load_file(str(weights_file))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"{weights_file} cannot be read as safetensors ({err}); the file is truncated or corrupt."
            ) from err
        checksum = cfg.get("checksum")
        if cfg["format_version"] >= 2:
            if not isinstance(checksum, dict):
                raise ValueError(f"{cfg_file} has no checksum record; the config was edited or damaged.")
            if checksum.get("definition") != _definition_digest(cfg):
                raise ValueError(
                    f"{cfg_file} does not match its checksum: a defining field (niche names, radius, "
                    "architecture, encoder settings, ...) was changed after saving. Restore the saved file."
                )
            if checksum.get("weights") != arrays_digest(tensors):
                raise ValueError(
                    f"{weights_file} does not match the checksum in {cfg_file}: the weights are corrupted or "
                    "belong to another model. Restore the saved files."
                )
        else:
            warnings.warn(
                f"{cfg_file} is a format-1 model without checksums: its integrity cannot be verified. Save it "
                "again with this version to add them.",
                UserWarning,
                stacklevel=2,
            )
        try:
            model = cls(
                cfg["n_niches"],
                radius_um=cfg["radius_um"],
                niche_names=cfg["niche_names"],
                architecture=cfg["architecture"],
                max_neighbors=cfg["max_neighbors"],
                temperature=cfg["temperature"],
                d_model=cfg["d_model"],
                n_layers=cfg["n_layers"],
                n_heads=cfg["n_heads"],
                hidden=cfg["hidden"],
                dropout=cfg["dropout"],
                n_components=cfg.get("n_components"),
                encoder=cfg.get("encoder"),
                features_key=cfg.get("features_key"),
                context_scales=cfg.get("context_scales", ()),
                n_members=cfg.get("n_members", 1),
                n_neighbors_target=cfg.get("n_neighbors_target"),
                **dict(cfg.get("training") or {}),
            )
            model.n_features = int(cfg["n_features"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{cfg_file} is not a valid model config ({type(err).__name__}: {err})."
            ) from err
        model.history = cfg.get("history", {"train_loss": [], "val_loss": []})
        model.best_epoch = cfg.get("best_epoch")
        model.train_mean_neighbors = cfg.get("train_mean_neighbors")
        model.batch_size_used = cfg.get("batch_size_used")
        model.teacher_record = cfg.get("teacher_record")
        model.split_record = cfg.get("split_record")
        model.split_key = cfg.get("split_key")
        for name in ("feature_mean", "feature_std"):
            if name not in tensors:
                raise ValueError(
                    f"{weights_file} has no {name!r} tensor; it was not written by NicheStudent.save."
                )
        model.feature_mean = tensors.pop("feature_mean").numpy()
        model.feature_std = tensors.pop("feature_std").numpy()
        projection = tensors.pop("projection", None)
        model.projection = None if projection is None else projection.numpy()
        _check_normalisation(model, weights_file)
        module = model._build()
        try:
            module.load_state_dict({k.removeprefix("module."): v for k, v in tensors.items()}, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"The weights in {weights_file} do not match {cfg_file} (K, feature width or "
                f"architecture differ): {str(err).splitlines()[0]}"
            ) from err
        if not all(torch.isfinite(p).all() for p in module.state_dict().values()):
            raise ValueError(f"{weights_file} holds NaN or infinite weights; the model is damaged.")
        model.module = module.eval()
        return model

    def __repr__(self) -> str:
        state = f"fitted on {self.n_features} features" if self.is_fitted else "not fitted"
        return (
            f"NicheStudent(K={self.n_niches}, architecture={self.architecture!r}, "
            f"radius_um={self.radius_um:.1f}, {state})"
        )


def _check_normalisation(model: NicheStudent, source: Path) -> None:
    """Feature mean/std/projection: right width, finite, std > 0."""
    d = model.n_features
    for name, arr in (("feature_mean", model.feature_mean), ("feature_std", model.feature_std)):
        if arr.shape != (d,):
            raise ValueError(f"{source}: {name} has shape {arr.shape}, expected ({d},) for {d} features.")
        if not np.isfinite(arr).all():
            raise ValueError(f"{source}: {name} has NaN or infinite values; the model is damaged.")
    if (model.feature_std <= 0).any():
        raise ValueError(
            f"{source}: feature_std is zero or negative for {int((model.feature_std <= 0).sum())} features; "
            "standardising by it would divide by zero. The model is damaged; restore or retrain it."
        )
    if model.projection is not None and (
        model.projection.ndim != 2
        or model.projection.shape[0] != d
        or not np.isfinite(model.projection).all()
    ):
        raise ValueError(f"{source}: projection has shape {model.projection.shape} or non-finite values.")


def _definition_digest(cfg: dict[str, Any]) -> str:
    """sha256 of the defining config fields (:data:`DEFINING_FIELDS`)."""
    return definition_digest({k: cfg.get(k) for k in DEFINING_FIELDS})
