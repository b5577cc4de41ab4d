"""Cell-type composition of niches, and teacher vs student compositions compared niche by niche."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex

from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.table import get_table
from ._palette import natural_key, niche_palette
from ._utils import check_obs_key, check_save, finish, single_ax


def _fractions(
    table: ad.AnnData, key: str, cell_type_key: str, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """Niches x cell types, each row summing to one (labelled observations only)."""
    obs = table.obs if rows is None else table.obs.iloc[rows]
    sub = obs[[key, cell_type_key]].dropna().astype(str)
    counts = pd.crosstab(sub[key], sub[cell_type_key])
    counts = counts.loc[sorted(counts.index, key=natural_key)]
    return counts.div(counts.sum(1), axis=0)


def _cell_type_colours(table: ad.AnnData | None, cell_type_key: str, types: list[str]) -> dict[str, str]:
    """Stored scanpy colours for the cell types if aligned, else a stable palette by name."""
    if table is not None:
        cats = table.obs[cell_type_key]
        stored = table.uns.get(f"{cell_type_key}_colors")
        if (
            isinstance(cats.dtype, pd.CategoricalDtype)
            and stored is not None
            and len(stored) == len(cats.cat.categories)
        ):
            return {str(c): to_hex(v) for c, v in zip(cats.cat.categories, stored, strict=True)}
    import seaborn as sns

    ordered = sorted(types, key=natural_key)
    # not tab10: its first colours are the niches' colours, and cell types must not read as niches
    pal = sns.color_palette("Set2" if len(ordered) <= 8 else "husl", len(ordered))
    return {t: to_hex(c) for t, c in zip(ordered, pal, strict=True)}


def _stacked(ax: Axes, frac: pd.DataFrame, labels: list[str], colours: dict[str, str]) -> None:
    """Horizontal stacked bars, first row on top."""
    y = np.arange(len(frac))[::-1]
    left = np.zeros(len(frac))
    for ct in frac.columns:
        ax.barh(y, frac[ct].to_numpy(), left=left, color=colours[ct], label=ct, height=0.8, edgecolor="white",
                linewidth=0.4)  # fmt: skip
        left += frac[ct].to_numpy()
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of cells")
    ax.spines[["top", "right"]].set_visible(False)


def _colour_ticklabels(ax: Axes, names: list[str]) -> None:
    """Colour each niche tick label like the niche on the maps."""
    pal = niche_palette(names)
    for lab in ax.get_yticklabels():
        name = lab.get_text().split(" ")[0]
        if name in pal:
            lab.set_color(pal[name])
            lab.set_fontweight("bold")


@inject_docs
def composition(
    data,
    *,
    key: str = "teacher_niche",
    cell_type_key: str = "cell_type",
    table_key: str = TABLE_KEY,
    kind: str = "bar",
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Axes | None:
    """Cell-type fractions per niche, as stacked bars or a heatmap.

    Parameters
    ----------
    data
        SpatialData or AnnData with ``obs[key]`` and ``obs[cell_type_key]``, or a niches x cell types
        DataFrame such as :func:`nichekd.tl.niche_composition` returns (counts or fractions).
    key
        Niche column.
    cell_type_key
        Cell-type column.
    table_key
        %(table_key)s
    kind
        ``"bar"`` (stacked bars) or ``"heatmap"``.
    %(figure)s
    title
        Axes title; default names the niche column.

    Returns
    -------
    The axes, or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pl.composition(sdata, key="teacher_niche", cell_type_key="cell_type", show=False)  # doctest: +SKIP
    """
    if kind not in ("bar", "heatmap"):
        raise ValueError(f"kind must be 'bar' or 'heatmap', got {kind!r}.")
    table = None
    if isinstance(data, pd.DataFrame):
        frac = data.astype(float)
        if frac.empty or (frac.to_numpy() < 0).any() or not np.isfinite(frac.to_numpy()).all():
            raise ValueError(
                "The composition DataFrame must be niches x cell types with finite non-negative values."
            )
        frac = frac.div(frac.sum(1).replace(0, 1), axis=0)
        frac.index = frac.index.astype(str)
        frac.columns = frac.columns.astype(str)
    else:
        table = get_table(data, table_key)
        check_obs_key(table, key, categorical=True, hint="Pass key= naming a niche column.")
        check_obs_key(
            table, cell_type_key, categorical=True, hint="Pass cell_type_key= naming the cell types."
        )
        frac = _fractions(table, key, cell_type_key)
        if frac.empty:
            raise ValueError(
                f"No observation has both obs[{key!r}] and obs[{cell_type_key!r}]; nothing to plot."
            )
    save_path = check_save(save)
    user_ax = ax is not None
    n, m = frac.shape
    default = (max(6.0, 0.55 * m + 4.0), 0.42 * n + 1.6) if kind == "heatmap" else (8.0, 0.42 * n + 1.4)
    ax = single_ax(ax, figsize, default)
    names = list(frac.index)
    if kind == "bar":
        colours = _cell_type_colours(table, cell_type_key, list(frac.columns))
        _stacked(ax, frac, names, colours)
        ax.legend(title=cell_type_key, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9,
                  ncol=1 if m <= 14 else 2)  # fmt: skip
    else:
        import seaborn as sns

        sns.heatmap(frac, ax=ax, cmap="Blues", vmin=0, vmax=1, annot=m <= 12 and n <= 20, fmt=".2f",
                    annot_kws={"fontsize": 8}, cbar_kws={"label": "fraction of cells", "shrink": 0.8},
                    linewidths=0.5, linecolor="white")  # fmt: skip
        ax.set_xlabel(cell_type_key)
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=45)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
    _colour_ticklabels(ax, names)
    ax.set_title(title if title is not None else f"cell types per {key}")
    return finish(ax.figure, ax, save=save_path, show=show, user_ax=user_ax)


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2 (0 = identical, 1 = disjoint): nichekd's one implementation."""
    from ..tl._composition import jensen_shannon

    return float(jensen_shannon(np.asarray(p, dtype=float)[None], np.asarray(q, dtype=float)[None])[0, 0])


@inject_docs
def compare_compositions(
    data,
    *,
    teacher_key: str = "teacher_niche",
    student_key: str = "student_niche",
    cell_type_key: str = "cell_type",
    table_key: str = TABLE_KEY,
    split: str | None = None,
    split_key: str = "split",
    match: bool = True,
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Axes | None:
    """Teacher and student cell-type compositions side by side for each matched niche, with their JSD.

    Each niche gets two stacked bars (teacher above, student below); the Jensen-Shannon divergence (base 2)
    between them is written at the right, and the mean over niches in the title. A teacher niche the student
    never predicts gets an empty student bar and JSD 1.

    Parameters
    ----------
    data
        SpatialData or AnnData with the three columns.
    teacher_key
        %(teacher_key)s
    student_key
        Student (or any predicted) niche column.
    cell_type_key
        Cell-type column.
    table_key
        %(table_key)s
    split
        Restrict to ``obs[split_key] == split`` (e.g. ``"test"``); ``None`` uses every labelled observation.
    split_key
        %(split_key)s
    match
        Rename predicted niches to teacher niches by one-to-one matching (as :func:`nichekd.tl.evaluate`
        does); not needed for the student, whose niches already carry the teacher's names.
    %(figure)s
    title
        Axes title; default reports the mean JSD.

    Returns
    -------
    The axes, or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pl.compare_compositions(sdata, split="test", show=False)  # doctest: +SKIP
    """
    table = get_table(data, table_key)
    for k, what in (
        (teacher_key, "teacher_key"),
        (student_key, "student_key"),
        (cell_type_key, "cell_type_key"),
    ):
        check_obs_key(table, k, categorical=True, hint=f"Pass {what}=.")
    rows = np.arange(table.n_obs)
    if split is not None:
        check_obs_key(table, split_key, hint="Run nichekd.pp.spatial_split first, or pass split=None.")
        rows = np.flatnonzero((table.obs[split_key].astype(str) == split).to_numpy())
        if not len(rows):
            raise ValueError(
                f"No observation has obs[{split_key!r}] == {split!r}; values: {sorted(table.obs[split_key].dropna().unique())}."
            )
    obs = table.obs.iloc[rows][[teacher_key, student_key, cell_type_key]].dropna().astype(str)
    if obs.empty:
        raise ValueError(
            f"No observation has {teacher_key!r}, {student_key!r} and {cell_type_key!r} all set."
        )
    save_path = check_save(save)
    pred = obs[student_key].to_numpy()
    if match:
        from ..tl._evaluate import match_labels

        mapping = match_labels(obs[teacher_key].to_numpy(), pred)
        pred = np.array([mapping[p] for p in pred])
    types = sorted(obs[cell_type_key].unique(), key=natural_key)
    niches = sorted(obs[teacher_key].unique(), key=natural_key)
    teacher = pd.crosstab(obs[teacher_key], obs[cell_type_key]).reindex(
        index=niches, columns=types, fill_value=0
    )
    student = pd.crosstab(pd.Series(pred, index=obs.index), obs[cell_type_key]).reindex(
        index=niches, columns=types, fill_value=0
    )
    t_frac = teacher.div(teacher.sum(1), axis=0)
    s_frac = student.div(student.sum(1).replace(0, 1), axis=0)
    jsd = [
        _jsd(t_frac.loc[n].to_numpy(), s_frac.loc[n].to_numpy()) if student.loc[n].sum() else 1.0
        for n in niches
    ]

    user_ax = ax is not None
    ax = single_ax(ax, figsize, (8.5, 0.8 * len(niches) + 1.4))
    # interleave teacher/student rows with a gap between niches
    stacked = pd.concat([pd.concat([t_frac.loc[[n]], s_frac.loc[[n]]]) for n in niches])
    labels = [lab for n in niches for lab in (f"{n} teacher", f"{n} student")]
    y = np.concatenate([[-3 * i, -3 * i - 1] for i in range(len(niches))]).astype(float)
    colours = _cell_type_colours(table, cell_type_key, types)
    left = np.zeros(len(stacked))
    for ct in types:
        ax.barh(y, stacked[ct].to_numpy(), left=left, color=colours[ct], label=ct, height=0.9, edgecolor="white",
                linewidth=0.4)  # fmt: skip
        left += stacked[ct].to_numpy()
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of cells")
    ax.spines[["top", "right"]].set_visible(False)
    for i, value in enumerate(jsd):
        ax.annotate(f"JSD {value:.3f}", xy=(1.0, -3 * i - 0.5), xycoords=("axes fraction", "data"),
                    xytext=(6, 0), textcoords="offset points", va="center", fontsize=9)  # fmt: skip
    _colour_ticklabels(ax, niches)
    ax.legend(title=cell_type_key, loc="center left", bbox_to_anchor=(1.16, 0.5), frameon=False, fontsize=9,
              ncol=1 if len(types) <= 14 else 2)  # fmt: skip
    where = f" ({split} cells)" if split is not None else ""
    ax.set_title(
        title if title is not None else f"composition, teacher vs student{where}: mean JSD {np.mean(jsd):.3f}"
    )
    return finish(ax.figure, ax, save=save_path, show=show, user_ax=user_ax)


@inject_docs
def composition_null(
    result,
    *,
    bins: int = 40,
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Axes | None:
    """The null distribution of a composition test, with the observed statistic and the p-value.

    Parameters
    ----------
    result
        A :class:`~nichekd.tl._composition.CompositionComparison` from :func:`nichekd.tl.compare_compositions`
        (``null="pairings"``: random niche pairings; ``"labels"``: permuted labels), with permutations.
    bins
        Histogram bins.
    %(figure)s
    title
        Axes title; default names the null and the p-value.

    Returns
    -------
    The axes, or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> res = nk.tl.compare_compositions(sdata, teacher_key="teacher_niche", student_key="student_niche", cell_type_key="cell_type", null="pairings")
    >>> nk.pl.composition_null(res, show=False)  # doctest: +SKIP
    """
    null = getattr(result, "null", None)
    if null is None or not hasattr(result, "mean_jsd"):
        raise TypeError(
            f"Expected the result of nichekd.tl.compare_compositions, got {type(result).__name__}."
        )
    null = np.asarray(null, dtype=float)
    if not len(null):
        raise ValueError(
            "The comparison has no permutations; rerun compare_compositions with n_permutations > 0."
        )
    save_path = check_save(save)
    user_ax = ax is not None
    ax = single_ax(ax, figsize, (5.5, 3.2))
    kind = getattr(result, "null_kind", "labels")
    what = {"pairings": "random niche pairings", "labels": "permuted labels"}.get(kind, kind)
    ax.hist(null, bins=bins, color="0.7", edgecolor="white", label=f"null: {what} (n={len(null)})")
    ax.axvline(result.mean_jsd, color="tab:red", lw=2, label=f"observed {result.mean_jsd:.3f}")
    ax.set_xlabel("mean JSD of paired niches" if kind == "pairings" else "matched mean JSD")
    ax.set_ylabel("permutations")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=9)
    ax.set_title(title if title is not None else f"composition test ({what}): p = {result.p_value:.3g}")
    return finish(ax.figure, ax, save=save_path, show=show, user_ax=user_ax)
