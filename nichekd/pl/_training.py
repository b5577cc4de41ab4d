"""Training curves of the distilled student."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.table import get_table
from ._utils import check_save, finish, single_ax


def _history(data, key: str, table_key: str) -> dict[str, np.ndarray]:
    if isinstance(data, Mapping):
        hist = data
    else:
        table = get_table(data, table_key)
        record = table.uns.get(key)
        if not isinstance(record, Mapping) or "history" not in record:
            raise KeyError(
                f"No uns[{key!r}]['history']; run nichekd.tl.distill(..., key_added={key!r}) first, "
                "or pass key= naming the student's key_added."
            )
        hist = record["history"]
    curves = {}
    for name, values in hist.items():
        arr = np.asarray(values, dtype=float).ravel() if np.ndim(values) else np.array([])
        if arr.size:
            curves[str(name)] = arr
    if not any("loss" in k for k in curves):
        raise ValueError(
            f"The history has no loss curve (keys: {sorted(hist)}); expected 'train_loss', 'val_loss'."
        )
    return curves


@inject_docs
def training(
    data,
    *,
    key: str = "student_niche",
    table_key: str = TABLE_KEY,
    log_scale: bool = False,
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Axes | None:
    """Per-epoch loss curves of :func:`nichekd.tl.distill`, with the best validation epoch marked.

    Parameters
    ----------
    data
        SpatialData or AnnData with ``uns[key]['history']``, or the history itself (a dict of per-epoch lists
        such as ``{"train_loss": [...], "val_loss": [...]}``).
    key
        The student's ``key_added``.
    table_key
        %(table_key)s
    log_scale
        Logarithmic loss axis.
    %(figure)s
    title
        Axes title.

    Returns
    -------
    The axes, or ``None`` when the figure was shown.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.pl.training(sdata, show=False)  # doctest: +SKIP
    """
    curves = _history(data, key, table_key)
    save_path = check_save(save)
    user_ax = ax is not None
    ax = single_ax(ax, figsize, (6.5, 4.0))
    styles = {"train_loss": {"color": "#1f77b4"}, "val_loss": {"color": "#d62728"}}
    for name, values in curves.items():
        if "loss" not in name:
            continue
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, ms=3, lw=1.6, label=name.replace("_", " "),
                **styles.get(name, {}))  # fmt: skip
    val = curves.get("val_loss")
    if val is not None and np.isfinite(val).any():
        best = int(np.nanargmin(val))
        ax.axvline(best + 1, color="0.4", ls=":", lw=1.2, label=f"best epoch ({best + 1})")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False)
    ax.set_title(title if title is not None else f"training of {key}")
    return finish(ax.figure, ax, save=save_path, show=show, user_ax=user_ax)
