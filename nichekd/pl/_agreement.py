"""Teacher vs prediction agreement as a confusion heatmap, after matching predicted to teacher niches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.table import get_table
from ._palette import natural_key, niche_palette
from ._utils import check_obs_key, check_save, finish, single_ax

NORMALIZE = ("true", "pred", None)


@inject_docs
def agreement(
    data,
    *,
    teacher_key: str = "teacher_niche",
    student_key: str = "student_niche",
    table_key: str = TABLE_KEY,
    split: str | None = None,
    split_key: str = "split",
    match: bool = True,
    normalize: str | None = "true",
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Axes | None:
    """Confusion heatmap of teacher niches (rows) against predicted niches (columns).

    Predicted niches are first renamed to teacher niches by one-to-one matching (as
    :func:`nichekd.tl.evaluate` does), so the diagonal holds the agreement; accuracy and ARI are in the title.

    Parameters
    ----------
    data
        SpatialData or AnnData with both columns.
    teacher_key
        %(teacher_key)s
    student_key
        Predicted niche column (columns).
    table_key
        %(table_key)s
    split
        Restrict to ``obs[split_key] == split`` (e.g. ``"test"``); ``None`` uses every labelled observation.
    split_key
        %(split_key)s
    match
        Match predicted to teacher niches before comparing; ``False`` compares names as they are.
    normalize
        ``"true"``: each row sums to one (recall per teacher niche); ``"pred"``: each column; ``None``: counts.
    %(figure)s
    title
        Axes title; default reports accuracy and ARI.

    Returns
    -------
    The axes, or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pl.agreement(sdata, split="test", show=False)  # doctest: +SKIP
    """
    import seaborn as sns
    from sklearn.metrics import adjusted_rand_score

    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}.")
    table = get_table(data, table_key)
    check_obs_key(table, teacher_key, categorical=True, hint="Pass teacher_key=.")
    check_obs_key(table, student_key, categorical=True, hint="Pass student_key=.")
    obs = table.obs
    if split is not None:
        check_obs_key(table, split_key, hint="Run nichekd.pp.spatial_split first, or pass split=None.")
        obs = obs[(obs[split_key].astype(str) == split).to_numpy()]
    obs = obs[[teacher_key, student_key]].dropna().astype(str)
    if obs.empty:
        where = f" with obs[{split_key!r}] == {split!r}" if split is not None else ""
        raise ValueError(
            f"No observation{where} has both {teacher_key!r} and {student_key!r}; nothing to compare."
        )
    save_path = check_save(save)
    truth, pred = obs[teacher_key].to_numpy(), obs[student_key].to_numpy()
    if match:
        from ..tl._evaluate import match_labels

        mapping = match_labels(truth, pred)
        pred = np.array([mapping[p] for p in pred])
    rows = sorted(set(truth), key=natural_key)
    cols = rows + sorted(set(pred) - set(rows), key=natural_key)
    counts = pd.crosstab(pd.Series(truth, name=teacher_key), pd.Series(pred, name=student_key))
    counts = counts.reindex(index=rows, columns=cols, fill_value=0)
    if normalize == "true":
        shown = counts.div(counts.sum(1).replace(0, 1), axis=0)
    elif normalize == "pred":
        shown = counts.div(counts.sum(0).replace(0, 1), axis=1)
    else:
        shown = counts
    acc = float((truth == pred).mean())
    ari = float(adjusted_rand_score(truth, pred))

    user_ax = ax is not None
    side = 0.6 * max(len(rows), len(cols)) + 2.2
    ax = single_ax(ax, figsize, (side + 1.2, side))
    annot = len(cols) <= 15
    sns.heatmap(shown, ax=ax, cmap="Blues", vmin=0, vmax=1 if normalize else None, annot=annot,
                fmt=".2f" if normalize else "d", annot_kws={"fontsize": 8}, square=True, linewidths=0.5,
                linecolor="white", cbar_kws={"label": "fraction of row" if normalize == "true" else
                                             "fraction of column" if normalize == "pred" else "count",
                                             "shrink": 0.8})  # fmt: skip
    ax.set_ylabel(f"{teacher_key} (teacher)")
    ax.set_xlabel(f"{student_key}" + (" (matched)" if match else ""))
    ax.tick_params(axis="y", labelrotation=0)
    pal = niche_palette(cols)
    for lab in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if lab.get_text() in pal:
            lab.set_color(pal[lab.get_text()])
            lab.set_fontweight("bold")
    where = f", {split} cells" if split is not None else ""
    ax.set_title(title if title is not None else f"agreement{where}: accuracy {acc:.2f}, ARI {ari:.2f}")
    return finish(ax.figure, ax, save=save_path, show=show, user_ax=user_ax)
