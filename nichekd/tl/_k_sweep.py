"""Choosing the number of niches K with evidence: stability across seeds and BIC."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._core import validate as _val
from .._core.docs import inject_docs
from .._core.keys import LIBRARY_KEY, TABLE_KEY
from .._core.runtime import keep_torch_threads
from .._core.spatial import micron_coords
from .._core.table import get_table
from ..models.teacher import DEFAULT_N_NEIGHBORS, NicheTeacher

# seeds per K: the labels of every pair of seeds are compared (quadratic in seeds)
MAX_SEEDS = 100
K_SWEEP_COLUMNS = (
    "k",
    "n_seeds",
    "stability_ari_mean",
    "stability_ari_sd",
    "bic",
    "bic_sd",
    "min_niche_fraction",
)


@inject_docs
@keep_torch_threads()  # scanpy/squidpy's numba kernels reset torch's OpenMP threads
def niche_k_sweep(
    sdata: Any,
    *,
    k_values: Iterable[int] = range(3, 11),
    n_seeds: int = 3,
    method: str = "aggregate",
    table_key: str = TABLE_KEY,
    use_rep: str | None = None,
    cell_type_key: str | None = None,
    library_key: str = LIBRARY_KEY,
    radius_um: float | None = None,
    n_neighbors_target: float = DEFAULT_N_NEIGHBORS,
    n_rings: int = 1,
    batch_correct: bool = False,
    max_eval_cells: int = 50_000,
    random_state: int = 0,
    progress: bool = True,
    **teacher_kwargs: Any,
) -> pd.DataFrame:
    """Fit the teacher for every K and several seeds; report stability and fit, to choose K.

    The latent and the neighbourhoods (the expensive part) are computed once and shared across K and seeds;
    only the K-niche head is refitted.

    Parameters
    ----------
    sdata
        SpatialData in the nichekd layout, or its table.
    k_values
        Numbers of niches to try.
    n_seeds
        Seeds per K (``random_state, random_state + 1, ...``); at least 2 for a stability estimate.
    method
        Teacher method (``"aggregate"``, ``"composition"`` or ``"transformer"``; see
        :func:`nichekd.tl.teacher_niches`).
    table_key
        %(table_key)s
    use_rep, cell_type_key, library_key, radius_um, n_neighbors_target, n_rings, batch_correct
        As in :func:`nichekd.tl.teacher_niches`.
    max_eval_cells
        Cells (random subset) on which labels are compared and the BIC is evaluated.
    random_state
        %(random_state)s
    progress
        %(progress)s
    **teacher_kwargs
        Further :class:`~nichekd.models.NicheTeacher` arguments (``n_comps``, ``transformer_kwargs``, ...).

    Returns
    -------
    DataFrame, one row per K (sorted by ``k``), columns:

    - ``k``: number of niches;
    - ``n_seeds``: fits per K;
    - ``stability_ari_mean``, ``stability_ari_sd``: mean and SD of the adjusted Rand index between the labels
      of every pair of seeds (higher: more reproducible; NaN with one seed);
    - ``bic``, ``bic_sd``: mean and SD over seeds of the Gaussian mixture's Bayesian information criterion
      on the evaluation cells (lower is better; NaN for ``"transformer"``);
    - ``min_niche_fraction``: mean over seeds of the smallest niche's share of cells (flags tiny niches).

    Examples
    --------
    >>> df = nk.tl.niche_k_sweep(sdata, k_values=range(3, 9), n_seeds=3)
    >>> df.sort_values("stability_ari_mean", ascending=False).head()
    >>> nk.pl.k_sweep(df)
    """
    if method == "labels":
        raise ValueError(
            "method='labels' has a fixed K; a K sweep needs 'aggregate', 'composition' or 'transformer'."
        )
    ks = sorted(
        set(
            _val.check_number_list(
                "k_values", k_values, integer=True, minimum=2, open_minimum=False, allow_empty=False
            )
        )
    )
    _val.check_int("n_seeds", n_seeds, maximum=MAX_SEEDS)
    _val.check_int("max_eval_cells", max_eval_cells, minimum=2)
    teacher = NicheTeacher(
        max(ks),
        method=method,
        use_rep=use_rep,
        cell_type_key=cell_type_key,
        library_key=library_key,
        radius_um=radius_um,
        n_neighbors_target=n_neighbors_target,
        n_rings=n_rings,
        batch_correct=batch_correct,
        random_state=random_state,
        progress=False,
        **teacher_kwargs,
    )
    teacher._check_params()  # every option of the teacher, before the table is read
    adata = get_table(sdata, table_key)
    xy_um = micron_coords(sdata, table_key=table_key, library_key=library_key)
    inputs = teacher.prepare(
        adata, fit=True, xy_um=xy_um
    )  # validates the largest K against every library, once
    rng = np.random.default_rng(random_state)
    n = inputs.n_obs
    eval_rows = np.sort(rng.choice(n, max_eval_cells, replace=False)) if n > max_eval_cells else np.arange(n)
    from sklearn.metrics import adjusted_rand_score

    rows = []
    bar = tqdm(total=len(ks) * n_seeds, desc="K sweep", disable=not progress, leave=False)
    for k in ks:
        labels, bics, smallest = [], [], []
        for s in range(n_seeds):
            teacher.fit_head(inputs, n_niches=k, random_state=random_state + s)
            proba = teacher.proba_from_inputs(inputs)
            lab = proba.argmax(1)
            labels.append(lab[eval_rows])
            smallest.append(np.bincount(lab, minlength=k).min() / n)
            bics.append(teacher.gmm_.bic(inputs.features[eval_rows]) if teacher.gmm_ is not None else np.nan)
            bar.update()
        aris = [adjusted_rand_score(a, b) for a, b in combinations(labels, 2)]
        rows.append(
            {
                "k": k,
                "n_seeds": n_seeds,
                "stability_ari_mean": float(np.mean(aris)) if aris else np.nan,
                "stability_ari_sd": float(np.std(aris)) if aris else np.nan,
                "bic": float(np.mean(bics)),
                "bic_sd": float(np.std(bics)),
                "min_niche_fraction": float(np.mean(smallest)),
            }
        )
    bar.close()
    return pd.DataFrame(rows, columns=list(K_SWEEP_COLUMNS))
