"""Shared plumbing of the plotting functions: checking inputs, the ``ax``/``save``/``show`` convention."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# backends that cannot display: calling plt.show() there only warns
_HEADLESS = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def as_list(value: str | list | tuple | None) -> list:
    """``"a"`` -> ``["a"]``; ``None`` -> ``[]``."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def check_obs_key(adata: ad.AnnData, key: str, *, categorical: bool | None = None, hint: str = "") -> None:
    """Raise a clear error if ``obs[key]`` is missing or of the wrong kind."""
    if not isinstance(key, str):
        raise TypeError(f"Column names must be strings, got {key!r}.")
    if key not in adata.obs:
        raise KeyError(f"No column {key!r} in obs; available: {list(adata.obs.columns)}. {hint}".strip())
    col = adata.obs[key]
    is_numeric = pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype)
    if categorical is True and is_numeric:
        raise ValueError(
            f"obs[{key!r}] is numeric; a niche column must hold labels. For a continuous value over the "
            "tissue use nichekd.pl.uncertainty(..., key=...)."
        )
    if categorical is False:
        if not is_numeric:
            raise ValueError(f"obs[{key!r}] must be numeric (e.g. the student's entropy), got {col.dtype}.")
        vals = np.asarray(col, dtype=float)
        if np.isinf(vals).any():
            raise ValueError(f"obs[{key!r}] has infinite values; replace them with NaN or finite values.")
        if np.isnan(vals).all():
            raise ValueError(f"obs[{key!r}] is all NaN; nothing to plot.")


def as_categorical(adata: ad.AnnData, key: str) -> None:
    """Turn a string column into a categorical in place, as scanpy's plots do."""
    if not isinstance(adata.obs[key].dtype, pd.CategoricalDtype):
        adata.obs[key] = pd.Categorical(adata.obs[key].astype("string").astype(object))


def check_save(save: str | Path | None) -> Path | None:
    """A path to write to, checked before plotting."""
    if save is None:
        return None
    if isinstance(save, bool) or not isinstance(save, str | Path):
        raise TypeError(f"save= takes a file path such as 'figures/niches.png', got {save!r}.")
    path = Path(save)
    if not path.suffix:
        raise ValueError(f"save={str(save)!r} needs a file extension (.png, .pdf, .svg) to pick the format.")
    return path


def single_ax(ax: Axes | None, figsize: tuple[float, float] | None, default: tuple[float, float]) -> Axes:
    """The user's axes, or a new figure with one axes."""
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax= must be a matplotlib Axes, got {type(ax).__name__}.")
        return ax
    _, ax = plt.subplots(figsize=figsize or default, layout="constrained")
    return ax


def finish(fig: Figure, axes, *, save: Path | None, show: bool | None, user_ax: bool):
    """Save and/or show like scanpy: return the axes unless the figure was shown.

    ``show=None`` shows the figure unless the caller passed ``ax`` (they will keep drawing on it).
    """
    if show is None:
        show = not user_ax
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, bbox_inches="tight", dpi=150)
    if show:
        if matplotlib.get_backend().lower() not in _HEADLESS:
            plt.show()
        plt.close(fig)
        return None
    return axes
