"""scVI latents of the counts: the paper's expression input to the teacher (``nichekd[scvi]`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, SPLIT_KEY, TABLE_KEY
from .._core.records import claim, store_params
from .._core.table import get_table, library_labels
from ._split import resolve_split_key


def _import_scvi():
    try:
        import scvi
    except ImportError as err:  # an optional extra
        raise ImportError(
            "scVI latents need scvi-tools: pip install 'nichekd[scvi]' (or pip install scvi-tools)."
        ) from err
    return scvi


@inject_docs
def scvi_latent(
    sdata: Any,
    *,
    batch_key: str | None = LIBRARY_KEY,
    layer: str | None = None,
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    max_epochs: int = 400,
    batch_size: int = 128,
    model_path: str | Path | None = None,
    save_path: str | Path | None = None,
    split_key: str | None = SPLIT_KEY,
    table_key: str = TABLE_KEY,
    key_added: str = "X_scVI",
    accelerator: str = "cpu",
    random_state: int = 0,
    progress: bool = True,
    copy: bool = False,
    overwrite: bool = False,
) -> ad.AnnData | None:
    """Fit (or load) an scVI model of the raw counts and write its latent to ``obsm[key_added]``.

    scVI (Lopez et al. 2018; scvi-tools) models counts as negative binomial given a low-dimensional latent
    and, with ``batch_key``, a per-batch effect, so sections (libraries) share one latent space. The paper's
    teacher aggregates these latents over neighbourhoods: ``nk.tl.teacher_niches(sdata, K,
    use_rep="X_scVI")``.

    Parameters
    ----------
    sdata
        :class:`~spatialdata.SpatialData` or its table, raw counts in ``X`` (or ``layers[layer]``).
    batch_key
        ``obs`` column of batches (default: the library, so the latent is corrected across sections);
        ``None`` for one batch.
    layer
        Layer holding the raw counts instead of ``X``.
    n_latent, n_hidden, n_layers
        Latent dimensions, hidden units and layers of the encoder/decoder (scVI's defaults).
    max_epochs
        Training epochs (scVI's default for small data is 400; a few suffice for a smoke test).
    batch_size
        Minibatch size.
    model_path
        Folder of a model saved by scvi-tools (``save_path`` of an earlier call): loaded instead of fitted;
        the table must have the same genes and only batches the model knows.
    save_path
        Folder to save the fitted model to (overwritten).
    split_key
        %(split_key)s
        The default ``"split"`` is used when the table has that column: scVI is trained on the cells outside
        the test part only (as the teacher is), then encodes every cell, so no training cell's latent depends
        on test expression; test cells must then belong to batches that training cells have. ``None``: trained
        on every cell (transductive).
    table_key
        %(table_key)s
    key_added
        ``obsm`` key of the latent (``"X_scVI"``, scvi-tools' convention); parameters go to ``uns[key_added]``.
    accelerator
        Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``).
    random_state
        %(random_state)s
    progress
        %(progress)s
    copy
        %(copy)s
    overwrite
        %(overwrite)s
        An ``obsm['X_scVI']`` computed with scvi-tools directly counts as the user's.

    Returns
    -------
    The table with ``copy=True``, else ``None``.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.st_mob()  # doctest: +SKIP
    >>> nk.pp.scvi_latent(sdata, max_epochs=50, save_path="scvi_mob/")  # doctest: +SKIP
    >>> nk.tl.teacher_niches(sdata, n_niches=5, use_rep="X_scVI")  # doctest: +SKIP
    """
    for name, value in (
        ("n_latent", n_latent),
        ("n_hidden", n_hidden),
        ("n_layers", n_layers),
        ("max_epochs", max_epochs),
        ("batch_size", batch_size),
    ):
        _val.check_int(name, value)
    _val.check_seed("random_state", random_state)
    adata = get_table(sdata, table_key)
    written = claim(
        adata, [("obsm", key_added), ("uns", key_added)], writer="scvi_latent", overwrite=overwrite
    )
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"No layers[{layer!r}]; layers are {list(adata.layers)}.")
    counts = adata.layers[layer] if layer is not None else adata.X
    if counts is None or adata.n_vars == 0:
        raise ValueError("The table has no counts: scVI needs raw counts in X (or layer=).")
    where = f"layers[{layer!r}]" if layer is not None else "X"
    _val.check_counts(counts, where, fix="scVI models raw counts: pass them in X or layer=.")
    # an all-zero table has no library size to model
    _val.check_zero_counts(counts, where, fix="or pass layer= with the raw counts")
    if batch_key is not None and batch_key not in adata.obs:
        raise KeyError(f"batch_key={batch_key!r} is not an obs column; pass batch_key=None for one batch.")
    if model_path is not None and not Path(model_path).is_dir():
        raise FileNotFoundError(
            f"model_path={str(model_path)!r} is not a folder written by scvi_latent(save_path=)."
        )
    split_key = resolve_split_key(adata, split_key)  # no split: trained on every cell
    fit = (
        np.ones(adata.n_obs, bool)
        if split_key is None or model_path is not None
        else (adata.obs[split_key].astype(str) != "test").to_numpy()
    )
    if not fit.any():
        raise ValueError(f"Every cell is 'test' in obs[{split_key!r}]: nothing to train scVI on.")
    scvi = _import_scvi()
    scvi.settings.seed = int(random_state)
    # a bare table for scvi-tools (it writes its registry into uns/obs): the user's table stays untouched
    work = ad.AnnData(X=counts.copy(), var=adata.var[[]].copy())
    work.obs_names = adata.obs_names.copy()
    if batch_key is not None:
        labels = (
            library_labels(adata, batch_key)
            if batch_key == LIBRARY_KEY
            else adata.obs[batch_key].astype(str).astype("category")
        )
        work.obs["batch"] = np.asarray(labels).astype(str)
        unseen = sorted(set(work.obs["batch"][~fit]) - set(work.obs["batch"][fit]))
        if unseen:
            raise ValueError(
                f"Batches {unseen} have only test cells: scVI trained on the training cells cannot encode them. "
                "Pass batch_key=None (one batch), or split_key=None to train on every cell (transductive)."
            )
    batch = "batch" if batch_key is not None else None
    if model_path is not None:
        scvi.model.SCVI.setup_anndata(work, batch_key=batch)
        model = scvi.model.SCVI.load(str(model_path), adata=work, accelerator=accelerator)
        history = None
    else:
        train = work if fit.all() else work[fit].copy()  # the test part never reaches the model
        scvi.model.SCVI.setup_anndata(train, batch_key=batch)
        model = scvi.model.SCVI(train, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers)
        model.train(
            max_epochs=int(max_epochs),
            batch_size=batch_size,
            accelerator=accelerator,
            enable_progress_bar=progress,
        )
        history = model.history.get("elbo_train")
    latent = np.asarray(model.get_latent_representation(adata=work), dtype=np.float32)
    if save_path is not None:
        model.save(str(save_path), overwrite=True)
    target = adata.copy() if copy else adata
    target.obsm[key_added] = latent
    params = {
        "batch_key": batch_key,
        "split_key": split_key if model_path is None else None,
        "fitted_on": None if model_path is not None else ("all" if fit.all() else "outside test"),
        "layer": layer,
        "n_latent": int(latent.shape[1]),
        "n_hidden": n_hidden,
        "n_layers": n_layers,
        "max_epochs": None if model_path is not None else int(max_epochs),
        "batch_size": batch_size,
        "model_path": None if model_path is None else str(model_path),
        "save_path": None if save_path is None else str(save_path),
        "random_state": random_state,
        "scvi_tools": scvi.__version__,
    }
    extra = {}
    if history is not None and len(history):
        extra["elbo_train"] = np.asarray(history, dtype=float).ravel().tolist()
    store_params(target, key_added, params, claim=written, **extra)
    return target if copy else None
