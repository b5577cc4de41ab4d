"""Choosing the number of niches: stability and BIC against k."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from .._core.docs import inject_docs
from ._utils import check_save, finish

REQUIRED = ("k", "stability_ari_mean")


@inject_docs
def k_sweep(
    result: pd.DataFrame,
    *,
    chosen_k: int | None = None,
    ax: Axes | list[Axes] | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> list[Axes] | None:
    """Stability (mean ARI over resamples, with its SD) and, when present, BIC against the number of niches.

    Parameters
    ----------
    result
        The DataFrame of :func:`nichekd.tl.niche_k_sweep`: columns ``k``, ``stability_ari_mean`` and optionally
        ``stability_ari_sd`` and ``bic``.
    chosen_k
        k to mark; default the most stable k.
    %(figure)s
    title
        Figure title.

    Returns
    -------
    The list of axes, or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> sweep = nk.tl.niche_k_sweep(sdata, ks=range(3, 11))  # doctest: +SKIP
    >>> nk.pl.k_sweep(sweep, show=False)  # doctest: +SKIP
    """
    if not isinstance(result, pd.DataFrame):
        raise TypeError(
            f"k_sweep takes the DataFrame of nichekd.tl.niche_k_sweep, got {type(result).__name__}."
        )
    missing = [c for c in REQUIRED if c not in result.columns]
    if missing:
        raise KeyError(f"The sweep lacks columns {missing}; it has {list(result.columns)}.")
    df = result.sort_values("k")
    k = df["k"].to_numpy(dtype=float)
    ari = df["stability_ari_mean"].to_numpy(dtype=float)
    if not np.isfinite(k).all() or not np.isfinite(ari).any():
        raise ValueError("The sweep has non-finite k or no finite stability values.")
    if chosen_k is None:
        chosen_k = int(k[np.nanargmax(ari)])
    elif chosen_k not in set(k.astype(int)):
        raise ValueError(f"chosen_k={chosen_k} is not among the swept k {sorted(k.astype(int))}.")
    save_path = check_save(save)
    has_bic = "bic" in df.columns and np.isfinite(df["bic"].to_numpy(dtype=float)).any()
    n_panels = 2 if has_bic else 1
    user_ax = ax is not None
    if ax is None:
        fig, axs = plt.subplots(1, n_panels, figsize=figsize or (4.6 * n_panels, 3.6), layout="constrained",
                                squeeze=False)  # fmt: skip
        axes = list(axs.ravel())
    else:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(ax))
        if len(axes) != n_panels:
            raise ValueError(f"ax= must hold {n_panels} axes for this sweep, got {len(axes)}.")
        fig = axes[0].figure
    sd = df["stability_ari_sd"].to_numpy(dtype=float) if "stability_ari_sd" in df.columns else None
    axes[0].errorbar(k, ari, yerr=sd, marker="o", color="#1f77b4", capsize=3, lw=1.6)
    axes[0].set_ylabel("stability (mean ARI)")
    if has_bic:
        axes[1].plot(k, df["bic"].to_numpy(dtype=float), marker="o", color="#8c564b", lw=1.6)
        axes[1].set_ylabel("BIC (lower is better)")
    for a in axes:
        a.axvline(chosen_k, color="#d62728", ls="--", lw=1.2, label=f"k = {chosen_k}")
        a.set_xlabel("number of niches k")
        a.set_xticks(k.astype(int))
        a.spines[["top", "right"]].set_visible(False)
    axes[0].legend(frameon=False)
    if title is not None:
        fig.suptitle(title)
    return finish(fig, axes, save=save_path, show=show, user_ax=user_ax)
