"""Bar chart of the annotation probe: macro-F1 of each niche assignment, with the chance level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from .._core.docs import inject_docs
from ._utils import check_save, finish, single_ax


@inject_docs
def annotation_probe(
    result: pd.DataFrame,
    *,
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Axes | None:
    """Macro-F1 of every assignment (mean over folds, one dot per fold), the chance level as a dashed line.

    Parameters
    ----------
    result
        The DataFrame returned by :func:`nichekd.tl.annotation_probe`.
    %(figure)s
    title
        Axes title.

    Returns
    -------
    The axes, or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> df = nk.tl.annotation_probe(sdata, annotation_key="layer", keys=["student_niche", "he_leiden_niche"])
    >>> nk.pl.annotation_probe(df, show=False)  # doctest: +SKIP
    """
    from ..tl._annotation_probe import CHANCE

    if not isinstance(result, pd.DataFrame) or "macro_f1" not in result or CHANCE not in result.index:
        raise TypeError("Expected the DataFrame returned by nichekd.tl.annotation_probe.")
    save_path = check_save(save)
    folds = [c for c in result.columns if c not in ("macro_f1", "sd", "input")]
    rows = [k for k in result.index if k != CHANCE]
    user_ax = ax is not None
    ax = single_ax(ax, figsize, (1.1 * len(rows) + 2.0, 3.4))
    x = np.arange(len(rows))
    ax.bar(x, result.loc[rows, "macro_f1"], color="tab:blue", alpha=0.75, width=0.6)
    for i, k in enumerate(rows):
        ax.scatter(np.full(len(folds), i), result.loc[k, folds].astype(float), color="k", s=12, zorder=3)
    chance = float(result.loc[CHANCE, "macro_f1"])
    ax.axhline(chance, color="0.4", ls="--", lw=1.2, label=f"chance {chance:.2f}")
    ax.set_xticks(x, rows, rotation=30, ha="right")
    ax.set_ylabel("macro-F1 (held-out folds)")
    ax.set_ylim(0, 1)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=9)
    ax.set_title(title if title is not None else "annotation probe (SVM)")
    return finish(ax.figure, ax, save=save_path, show=show, user_ax=user_ax)
