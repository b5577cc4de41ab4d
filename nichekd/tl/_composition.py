"""Cell-type composition of niches, and whether two niche labelings agree in composition.

:func:`compare_compositions` runs one of three permutation tests, chosen with ``null=``. They share the
compositions of A's and B's niches and the Jensen-Shannon divergence (JSD) between them; they differ in how the
niches are paired and in what the null holds fixed, so each answers a different question:

- ``"labels"`` (default): *do B's niches have cell-type compositions that can be matched to A's better than
  niches of the same sizes drawn without regard to the cells?* Statistic: the mean JSD of the JSD-optimal
  one-to-one matching (Hungarian). Null: B's labels permuted across cells (B's niche sizes kept, their
  compositions drift to the tissue average), re-matched by JSD each time. It tests that B has composition
  structure at all, not that B's niches are A's: any labelling with spatial or cell-type structure (a baseline
  clustering, random spatial patches) rejects it, at the floor ``1 / (1 + n_permutations)``.
- ``"pairings"``: *are the niches paired beforehand (same name, or most shared cells) more alike in composition
  than niches of A and B paired at random?* The pairs are fixed without looking at compositions; the
  compositions and the JSD matrix are held fixed and only the pairing is drawn: each paired niche of A gets a
  random distinct niche of B. It tests that B's niches correspond to A's: a labelling whose niches do not (a
  shuffled student, random clusters) is significant at about the nominal rate. The observed pairing is one of
  the ``n_pairings`` possible pairings (``K!`` for K niches on each side), so p cannot go far below
  ``1 / n_pairings`` (1/24 for 4 niches, 1/120 for 5).
- ``"optimal_vs_random_pairings"``: the paper's procedure taken literally, *is the JSD-optimal matching better
  than random one-to-one pairings of the same niches?* Statistic: the Hungarian-matched mean JSD (as for
  ``"labels"``); null: mean JSD of random one-to-one pairings of the same niches (same JSD matrix). **This test
  is degenerate**: the optimal matching is by construction the minimum of the mean JSD over all pairings, so no
  random pairing is below it and only draws of the optimal pairing itself (probability ``1 / n_pairings``,
  ``1/K!``) tie with it. Hence ``p = (1 + #ties) / (1 + n_permutations)``, about ``1/K!`` (0.0083 for K = 5),
  whatever the labelings: random labels reach it (p = 0.0074 in one of our runs). It is provided to reproduce
  the paper's number and to show why it is not evidence; the result records ``degenerate=True``.

There is one Jensen-Shannon divergence in nichekd: :func:`jensen_shannon` (base 2, in [0, 1]).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from .._core import validate as _val
from .._core.cell_types import cell_type_weights
from .._core.docs import inject_docs
from .._core.keys import TABLE_KEY
from .._core.records import stale_teacher
from .._core.table import get_table

_EPS = 1e-12
NULLS = ("labels", "pairings", "optimal_vs_random_pairings")
DEGENERATE_NULLS = ("optimal_vs_random_pairings",)
PAIRINGS = ("auto", "names", "overlap")
# the null distribution is held in memory (one float per permutation); p-values need far fewer
MAX_PERMUTATIONS = 10_000_000


def _categorical(adata, key: str) -> pd.Categorical:
    if key not in adata.obs:
        raise KeyError(f"No obs column {key!r}; available: {list(adata.obs.columns)[:20]}.")
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(
            f"obs[{key!r}] has {int(col.isna().sum())} missing values; drop or label those cells."
        )
    values = col.astype(str).to_numpy()
    if isinstance(col.dtype, pd.CategoricalDtype):  # keep the user's order, drop empty categories
        cats = [str(c) for c in col.cat.remove_unused_categories().cat.categories]
    else:
        cats = sorted(set(values))
    return pd.Categorical(values, categories=cats)


def _composition(codes: np.ndarray, n_groups: int, weights: np.ndarray) -> np.ndarray:
    """Summed cell-type weights per group (rows: groups)."""
    ind = sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_groups, len(codes))
    )
    return np.asarray(ind @ weights)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    tot = x.sum(-1, keepdims=True)
    return np.divide(x, tot, out=np.zeros_like(x), where=tot > 0)


@inject_docs
def niche_composition(
    sdata: Any, *, niche_key: str, cell_type_key: str, table_key: str = TABLE_KEY, normalize: bool = True
) -> pd.DataFrame:
    """Cell-type make-up of each niche.

    Parameters
    ----------
    sdata
        SpatialData in the nichekd layout, or its table.
    niche_key
        ``obs`` column with the niche of each cell/spot.
    cell_type_key
        ``obs`` categorical of cell types, or ``obsm`` key of per-spot cell-type fractions (spot data: each spot
        contributes its fractions, e.g. ``obsm['cell_type_fractions']`` from a deconvolution).
    table_key
        %(table_key)s
    normalize
        Fractions (rows sum to 1; default) or summed counts/fractions.

    Returns
    -------
    DataFrame niches x cell types (index named ``niche``, columns named ``cell_type``).

    Examples
    --------
    >>> comp = nk.tl.niche_composition(sdata, niche_key="teacher_niche", cell_type_key="cell_type")
    >>> comp.loc["N0"].sort_values(ascending=False).head()
    """
    adata = get_table(sdata, table_key)
    niches = _categorical(adata, niche_key)
    weights, types = cell_type_weights(adata, cell_type_key)
    comp = _composition(niches.codes.astype(np.int64), len(niches.categories), weights)
    if normalize:
        comp = _normalise_rows(comp)
    return pd.DataFrame(
        comp,
        index=pd.Index(niches.categories, name="niche"),
        columns=pd.Index(types, name="cell_type"),
    )


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between all rows of ``p`` and ``q`` (broadcast on the
    leading axes): ``p (..., A, T)``, ``q (..., B, T)`` -> ``(..., A, B)``."""
    p = p[..., :, None, :]
    q = q[..., None, :, :]
    m = 0.5 * (p + q)

    def kl(a, b):
        return np.where(a > 0, a * (np.log2(np.maximum(a, _EPS)) - np.log2(np.maximum(b, _EPS))), 0.0).sum(-1)

    return np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, 1.0)


def match_niches(
    a: pd.DataFrame | np.ndarray | pd.Series | pd.Categorical | list,
    b: np.ndarray | pd.Series | pd.Categorical | list | None = None,
    *,
    maximize: bool | None = None,
) -> pd.DataFrame:
    """One-to-one matching of two sets of niches (Hungarian algorithm).

    Two uses:

    - ``match_niches(labels_a, b=labels_b)``: two labelings of the same cells; pairs maximise the number of
      shared cells (the contingency table).
    - ``match_niches(score)``: a precomputed DataFrame (rows: niches of A, columns: niches of B), e.g. a
      divergence matrix (``maximize=False``, the default for a matrix) or an overlap matrix
      (``maximize=True``).

    With different numbers of niches, ``min(K_a, K_b)`` pairs are returned and the rest stay unmatched.

    Parameters
    ----------
    a
        Labels of the cells under A, or the score matrix.
    b
        Labels of the same cells under B (omit when ``a`` is a matrix).
    maximize
        Maximise (overlaps) rather than minimise (costs); default True for labels, False for a matrix.

    Returns
    -------
    DataFrame with columns ``niche_a``, ``niche_b``, ``score`` (shared cells, or the matrix entry), one row per
    matched pair, in the order of A's niches.

    Examples
    --------
    >>> pairs = match_niches(adata.obs["teacher_niche"], b=adata.obs["predicted_niche"])
    >>> mapping = dict(zip(pairs["niche_b"], pairs["niche_a"]))
    """
    if b is not None:
        ca = pd.Categorical(np.asarray(a).astype(str))
        cb = pd.Categorical(np.asarray(b).astype(str))
        if len(ca) != len(cb):
            raise ValueError(f"The two labelings have different lengths ({len(ca)} and {len(cb)}).")
        score = pd.crosstab(pd.Series(ca, name="a"), pd.Series(cb, name="b"), dropna=False)
        maximize = True if maximize is None else maximize
    else:
        score = a if isinstance(a, pd.DataFrame) else pd.DataFrame(np.asarray(a))
        maximize = False if maximize is None else maximize
    values = score.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ValueError("The score matrix has NaN or infinite entries.")
    rows, cols = linear_sum_assignment(values, maximize=maximize)
    return pd.DataFrame(
        {
            "niche_a": [str(score.index[i]) for i in rows],
            "niche_b": [str(score.columns[j]) for j in cols],
            "score": values[rows, cols],
        }
    )


@dataclass
class CompositionComparison:
    """Result of :func:`compare_compositions`.

    Attributes
    ----------
    pairs
        Matched niches: ``niche_a``, ``niche_b``, ``jsd`` (per pair), ``n_a``, ``n_b`` (cells).
    mean_jsd
        Mean JSD over matched pairs (lower: more similar compositions).
    p_value
        Permutation p-value ``(1 + #{null <= observed}) / (1 + n_permutations)`` (ties within floating-point
        rounding count).
    null
        The statistic under each permutation: matched mean JSD after permuting B's labels (``null_kind``
        ``"labels"``), or mean JSD of random one-to-one niche pairings (``"pairings"``,
        ``"optimal_vs_random_pairings"``).
    jsd
        Full JSD matrix (A's niches x B's niches).
    composition_a, composition_b
        Niche x cell-type fractions under each labeling.
    null_kind
        The ``null`` that was run.
    pairing
        How the pairs were chosen: ``"names"`` or ``"overlap"`` (``null="pairings"``), ``"jsd"`` (Hungarian on the
        JSD matrix, the other nulls).
    n_pairings
        Number of distinct one-to-one pairings the random-pairing nulls draw from (``K!`` for K niches on each
        side); ``1 / n_pairings`` is about the smallest p they can give.
    degenerate
        True for ``null="optimal_vs_random_pairings"``: its p is about ``1 / n_pairings`` whatever the labelings
        (see :func:`compare_compositions`), so it is not evidence that they agree.
    """

    pairs: pd.DataFrame
    mean_jsd: float
    p_value: float
    null: np.ndarray
    jsd: pd.DataFrame
    composition_a: pd.DataFrame
    composition_b: pd.DataFrame
    null_kind: str = "labels"
    pairing: str = "jsd"
    n_pairings: int = 0
    degenerate: bool = False

    def __repr__(self) -> str:
        flag = ", degenerate=True (p ~ 1/n_pairings whatever the labels)" if self.degenerate else ""
        return (
            f"CompositionComparison(null={self.null_kind!r}, mean_jsd={self.mean_jsd:.4f}, "
            f"p_value={self.p_value:.3g}, pairs={len(self.pairs)}, n_permutations={len(self.null)}, "
            f"n_pairings={self.n_pairings}{flag})"
        )


def _matched_mean(jsd: np.ndarray) -> float:
    r, c = linear_sum_assignment(jsd)
    return float(jsd[r, c].mean())


@inject_docs
def compare_compositions(
    sdata: Any,
    *,
    teacher_key: str = "teacher_niche",
    student_key: str = "student_niche",
    cell_type_key: str = "cell_type",
    table_key: str = TABLE_KEY,
    n_permutations: int = 10_000,
    random_state: int = 0,
    batch_size: int = 256,
    null: str = "labels",
    pairing: str = "auto",
) -> CompositionComparison:
    """Do two niche labelings of the same cells have matching cell-type compositions?

    The compositions of A's niches (``teacher_key``) and B's (``student_key``) are compared by Jensen-Shannon
    divergence (base 2) and a permutation test asks one of three questions (``null``; the module docstring has
    the details):

    - ``"labels"`` (default): *can B's niches be matched to A's in composition better than niches of the same
      sizes with randomly permuted cells?* Pairs: Hungarian matching on the JSD matrix; statistic: their mean
      JSD; null: B's labels permuted across cells and re-matched each time. Rejected by any labelling with
      composition structure (baselines included), so it shows structure, not correspondence.
    - ``"pairings"``: *are niches paired without looking at compositions (``pairing``: same name, or most shared
      cells) more alike than randomly paired niches?* Statistic: mean JSD of the fixed pairs; null: each paired
      niche of A with a random distinct niche of B, compositions fixed. Shows that B's niches correspond to A's;
      random or shuffled labellings are not significant. p is at least about ``1 / n_pairings`` (``1/K!``).
    - ``"optimal_vs_random_pairings"``: the paper's procedure taken literally, *is the JSD-optimal (Hungarian)
      matching better than random one-to-one pairings of the same niches?* **Degenerate**: the optimal matching
      is by construction the minimum over all pairings, so only random draws of that same pairing tie with it
      and ``p = (1 + #ties) / (1 + n_permutations)`` is about ``1/K!`` whatever the labelings (random labels
      reach it). Use it only to reproduce the paper's number; the result has ``degenerate=True``.

    ``p = (1 + #{null <= observed}) / (1 + n_permutations)``. The label permutations are vectorised (one sparse
    indicator product per batch), so 10,000 permutations of 5,000 cells take seconds.

    Parameters
    ----------
    sdata
        %(sdata)s
    teacher_key
        %(teacher_key)s
    student_key
        ``obs`` column of the labelling compared with it (the student's niches, a baseline's clusters, ...).
    cell_type_key
        ``obs`` cell types or ``obsm`` per-spot fractions (see :func:`niche_composition`).
    table_key
        %(table_key)s
    n_permutations
        Permutations for the p-value (0 skips the test: ``p_value`` is NaN).
    random_state
        %(random_state)s
    batch_size
        Permutations per vectorised batch (memory ``batch_size x K x T``).
    null
        ``"labels"`` (permute B's labels across cells, re-match by JSD), ``"pairings"`` (fixed pairs against
        random pairings of niches) or ``"optimal_vs_random_pairings"`` (JSD-optimal pairs against random
        pairings; degenerate, see above).
    pairing
        For ``null="pairings"``: ``"names"`` (same category name), ``"overlap"`` (Hungarian on shared cells,
        as :func:`nichekd.tl.evaluate` matches baselines) or ``"auto"`` (names when every niche of B is a
        niche of A, else overlap).

    Returns
    -------
    :class:`CompositionComparison` with ``pairs`` (DataFrame), ``mean_jsd``, ``p_value``, ``null``, ``jsd``,
    ``n_pairings`` and ``degenerate``.

    Examples
    --------
    >>> res = nk.tl.compare_compositions(sdata, teacher_key="teacher_niche", student_key="predicted_niche", cell_type_key="cell_type")
    >>> res.pairs, res.mean_jsd, res.p_value
    >>> nk.tl.compare_compositions(sdata, teacher_key="teacher_niche", student_key="student_niche", cell_type_key="cell_type", null="pairings")
    >>> nk.tl.compare_compositions(sdata, teacher_key="teacher_niche", student_key="student_niche", cell_type_key="cell_type", null="optimal_vs_random_pairings").degenerate
    True
    """
    _val.check_int("n_permutations", n_permutations, minimum=0, maximum=MAX_PERMUTATIONS)
    _val.check_seed("random_state", random_state)
    _val.check_int("batch_size", batch_size)
    _val.check_choice("null", null, NULLS)
    _val.check_choice("pairing", pairing, PAIRINGS)
    adata = get_table(sdata, table_key)
    la, lb = _categorical(adata, teacher_key), _categorical(adata, student_key)
    stale = stale_teacher(adata, student_key, teacher_key)  # a student of an earlier run of this teacher
    if stale is not None:
        warnings.warn(stale, UserWarning, stacklevel=2)
    weights, types = cell_type_weights(adata, cell_type_key)
    ca, cb = la.codes.astype(np.int64), lb.codes.astype(np.int64)
    ka, kb = len(la.categories), len(lb.categories)
    comp_a = _normalise_rows(_composition(ca, ka, weights))
    comp_b = _normalise_rows(_composition(cb, kb, weights))
    jsd = jensen_shannon(comp_a, comp_b)
    rng = np.random.default_rng(random_state)
    if null == "pairings":
        rows, cols, pairing = _fixed_pairs(la, lb, pairing)
        observed = float(jsd[rows, cols].mean())
        null_values = _pairing_null(jsd, rows, n_permutations, rng)
        n_pairings = _n_injections(len(rows), kb)
    else:
        rows, cols = linear_sum_assignment(jsd)
        observed = float(jsd[rows, cols].mean())
        if null == "optimal_vs_random_pairings":
            null_values = _random_matching_null(jsd, n_permutations, rng)
        else:
            null_values = _label_null(comp_a, cb, kb, weights, n_permutations, batch_size, rng)
        pairing = "jsd"
        n_pairings = _n_injections(min(ka, kb), max(ka, kb))
    # the same pairing summed in another order may differ in the last bits: such ties count as ties
    tol = 1e-12 * max(1.0, abs(observed))
    p_value = (
        float((1 + (null_values <= observed + tol).sum()) / (1 + n_permutations))
        if n_permutations
        else float("nan")
    )
    sizes_a, sizes_b = np.bincount(ca, minlength=ka), np.bincount(cb, minlength=kb)
    pairs = pd.DataFrame(
        {
            "niche_a": [la.categories[i] for i in rows],
            "niche_b": [lb.categories[j] for j in cols],
            "jsd": jsd[rows, cols],
            "n_a": sizes_a[rows],
            "n_b": sizes_b[cols],
        }
    )
    cols_idx = pd.Index(types, name="cell_type")
    return CompositionComparison(
        pairs=pairs,
        mean_jsd=observed,
        p_value=p_value,
        null=null_values,
        jsd=pd.DataFrame(
            jsd,
            index=pd.Index(la.categories, name=teacher_key),
            columns=pd.Index(lb.categories, name=student_key),
        ),
        composition_a=pd.DataFrame(comp_a, index=pd.Index(la.categories, name="niche"), columns=cols_idx),
        composition_b=pd.DataFrame(comp_b, index=pd.Index(lb.categories, name="niche"), columns=cols_idx),
        null_kind=null,
        pairing=pairing,
        n_pairings=n_pairings,
        degenerate=null in DEGENERATE_NULLS,
    )


def _fixed_pairs(la: pd.Categorical, lb: pd.Categorical, pairing: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Pairs of niches (indices into A's and B's categories) chosen without looking at compositions."""
    cats_a, cats_b = [str(c) for c in la.categories], [str(c) for c in lb.categories]
    if pairing == "auto":
        pairing = "names" if set(cats_b) <= set(cats_a) else "overlap"
    if pairing == "names":
        shared = [c for c in cats_a if c in set(cats_b)]
        if not shared:
            raise ValueError(
                "pairing='names' but the two labelings share no niche name; use pairing='overlap'."
            )
        return (
            np.array([cats_a.index(c) for c in shared]),
            np.array([cats_b.index(c) for c in shared]),
            pairing,
        )
    overlap = np.zeros((len(cats_a), len(cats_b)))
    np.add.at(overlap, (la.codes, lb.codes), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    return rows, cols, pairing


def _pairing_null(jsd: np.ndarray, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mean JSD when each paired niche of A gets a random distinct niche of B, ``n`` times."""
    if n == 0:
        return np.empty(0)
    kb = jsd.shape[1]  # pairs never outnumber B's niches (one-to-one)
    # the first len(rows) entries of a random permutation of B's niches: random distinct partners
    partners = np.argsort(rng.random((n, kb)), axis=1)[:, : len(rows)]
    return jsd[rows[None, :], partners].mean(1)


def _random_matching_null(jsd: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mean JSD of ``n`` random one-to-one pairings of all ``min(K_a, K_b)`` niches of the smaller side."""
    d = jsd if jsd.shape[0] <= jsd.shape[1] else jsd.T
    return _pairing_null(d, np.arange(d.shape[0]), n, rng)


def _n_injections(m: int, k: int) -> int:
    """Ways to pair ``m`` niches one-to-one with distinct niches among ``k``: ``k! / (k - m)!``."""
    return math.perm(k, m)


def _label_null(
    comp_a: np.ndarray,
    cb: np.ndarray,
    kb: int,
    weights: np.ndarray,
    n_permutations: int,
    batch_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Matched mean JSD after permuting B's labels across cells, ``n_permutations`` times (vectorised)."""
    n = len(cb)
    null = np.empty(n_permutations)
    for s in range(0, n_permutations, batch_size):
        p = min(batch_size, n_permutations - s)
        perm_codes = np.stack([rng.permutation(cb) for _ in range(p)])  # (p, n)
        # one sparse indicator (p * kb, n) times the cell-type weights gives every permuted composition
        row = (perm_codes + kb * np.arange(p)[:, None]).ravel()
        ind = sparse.csr_matrix((np.ones(p * n), (row, np.tile(np.arange(n), p))), shape=(p * kb, n))
        comp = _normalise_rows(np.asarray(ind @ weights).reshape(p, kb, -1))
        d = jensen_shannon(comp_a[None], comp)  # (p, ka, kb)
        null[s : s + p] = [_matched_mean(m) for m in d]
    return null
