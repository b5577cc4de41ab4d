"""Degenerate data (issue 21): inputs that used to give a silent, meaningless result now raise or warn, and the
message names the fix.

- all-zero counts (one niche or cluster for everything) and many cells without counts;
- an ``X`` that is already log-normalised (normalised again without a word before);
- every observation at one position, on one line, or on a few duplicated positions;
- a split that leaves a handful of test cells, and scores computed on them.

One count rule serves the readers and the functions that normalise counts (issue 22).
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import nichekd as nk
from nichekd._core import validate as _val
from nichekd._core.neighbors import estimate_radius
from nichekd.pp._split import MIN_PART_CELLS
from nichekd.tl._evaluate import MIN_SCORED_CELLS


@pytest.fixture(scope="module")
def base():
    """300 cells of synthetic tissue (integer counts), one section."""
    return nk.datasets.synthetic_tissue(n_cells=300, random_state=0, progress=False).tables["table"]


@pytest.fixture
def table(base):
    return base.copy()


def _untouched(before, after) -> None:
    assert list(after.obs.columns) == list(before.obs.columns)
    assert sorted(after.obsm) == sorted(before.obsm) and sorted(after.uns) == sorted(before.uns)
    assert sorted(after.obsp) == sorted(before.obsp)


# ---------------------------------------------------------------------------------------------------------------
# counts: all zero, many zero cells, already log-normalised


def test_all_zero_counts_are_refused_everywhere(table):
    table.X = sparse.csr_matrix(table.shape, dtype=np.float32)
    before = table.copy()
    for call, fix in (
        (lambda: nk.tl.teacher_niches(table, n_niches=3, progress=False), "use_rep="),
        (lambda: nk.pp.cell_types(table, key_added="clusters"), "use_rep="),
        (lambda: nk.pp.scvi_latent(table, max_epochs=1, progress=False, batch_key=None), "layer="),
    ):
        with pytest.raises(ValueError, match=rf"X has no counts: all 300 observations sum to zero.*{fix}"):
            call()
        _untouched(before, table)


def test_many_cells_without_counts_warn_naming_how_many(table):
    x = table.X.toarray()
    x[:90] = 0  # 30% of the cells
    table.X = x
    with pytest.warns(UserWarning, match=r"90 of 300 observations \(30%\) have no counts in X.*Drop them"):
        nk.tl.teacher_niches(table, n_niches=3, progress=False)
    assert table.obs["teacher_niche"].notna().all()  # a warning, not a refusal
    with pytest.warns(UserWarning, match="90 of 300 observations"):
        nk.pp.cell_types(table, key_added="clusters")


def test_a_split_teacher_warns_once(table):
    """Fitted outside the test strip then applied to every cell: one warning, from the fit."""
    x = table.X.toarray()
    x[::3] = 0
    table.X = x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        nk.pp.spatial_split(table, buffer_um=5.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        nk.tl.teacher_niches(table, n_niches=3, progress=False)
    assert sum("have no counts" in str(w.message) for w in rec) == 1


def test_a_few_cells_without_counts_pass_silently(table):
    x = table.X.toarray()
    x[: int(_val.ZERO_COUNT_WARN_FRACTION * 300)] = 0  # at the threshold: no warning
    table.X = x
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*have no counts")
        nk.tl.teacher_niches(table, n_niches=3, progress=False)


@pytest.mark.parametrize("as_sparse", [False, True])
def test_log_normalised_x_is_refused_with_the_fix(table, as_sparse):
    import scanpy as sc

    sc.pp.normalize_total(table, target_sum=1e4)
    sc.pp.log1p(table)
    if as_sparse:
        table.X = sparse.csr_matrix(table.X)
    before = table.copy()
    for call in (
        lambda: nk.tl.teacher_niches(table, n_niches=3, progress=False),
        lambda: nk.pp.cell_types(table, key_added="clusters"),
    ):
        with pytest.raises(
            ValueError, match=r"non-integer values.*log-normalised already.*layers\['counts'\]"
        ):
            call()
        _untouched(before, table)
    with pytest.raises(ValueError, match="log-normalised already.*raw counts"):
        nk.pp.scvi_latent(table, max_epochs=1, progress=False)


def test_non_integer_counts_above_the_log_range_warn(table):
    x = table.X.toarray().astype(np.float32) * 10.5  # e.g. ambient-corrected, not log: used, with a warning
    table.X = x
    assert x.max() > _val.LOG_MAX
    with pytest.warns(UserWarning, match=r"non-integer values.*used as counts"):
        nk.tl.teacher_niches(table, n_niches=3, progress=False)
    assert "teacher_niche" in table.obs


def test_readers_refuse_any_non_integer_count():
    from nichekd.io._checks import check_counts as reader_check

    with pytest.raises(ValueError, match=r"The count matrix from f.mtx has non-integer values.*raw counts"):
        reader_check(np.array([[25.5, 30.0]]), "f.mtx")  # above the log range: still refused by a reader
    reader_check(sparse.csr_matrix(np.array([[2.0, 0.0], [1.0, 3.0]])), "f.mtx")


def test_one_count_rule():
    """The teacher, cell types, scVI and the readers share one implementation (issue 22)."""
    from nichekd.models import _teacher_latent, teacher

    assert _teacher_latent.check_counts is _val.check_counts is teacher.check_counts
    with pytest.raises(ValueError, match="negative"):
        _val.check_counts(np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        _val.check_counts(sparse.csr_matrix(np.array([[1.0, np.nan]])))
    _val.check_counts(np.array([[1, 2]], dtype=np.int32))


# ---------------------------------------------------------------------------------------------------------------
# coordinates: one point, one line, duplicated positions


def test_all_cells_at_one_point_name_the_coordinates(table):
    table.obsm["spatial"] = np.full_like(table.obsm["spatial"], 7.0)
    before = table.copy()
    with pytest.raises(ValueError, match=r"All observations share one position.*obsm\['spatial'\]"):
        nk.tl.teacher_niches(table, n_niches=3, progress=False)
    _untouched(before, table)
    with pytest.raises(ValueError, match=r"share one position.*obsm\['spatial'\]"):
        nk.pp.spatial_split(table, buffer_um=5.0)
    assert "split" not in table.obs
    with pytest.raises(ValueError, match="All observations share one position"):
        estimate_radius(np.zeros((50, 2)), 10)


def test_cells_on_one_horizontal_line_cannot_be_split_in_strips(table):
    table.obsm["spatial"][:, 1] = 3.0
    with pytest.raises(
        ValueError, match=r"one y coordinate \(a horizontal line\).*obsm\['spatial'\].*blocks"
    ):
        nk.pp.spatial_split(table, buffer_um=5.0)
    assert "split" not in table.obs


def test_duplicated_positions_name_the_coordinates():
    xy = np.repeat(np.random.default_rng(0).uniform(0, 100, (20, 2)), 15, axis=0)
    with pytest.raises(ValueError, match=r"20 distinct positions for 300.*obsm\['spatial'\].*radius_um="):
        estimate_radius(xy, 10)
    assert estimate_radius(xy, 30) > 0  # a target beyond the duplicates has a positive radius


# ---------------------------------------------------------------------------------------------------------------
# small splits and scores on a handful of cells


def test_split_warns_when_a_part_is_small_naming_the_fix(table):
    with pytest.warns(
        UserWarning, match=r"'synthetic': \d+ test of 300.*n_strips=4.*test_strip=.*buffer_um="
    ) as rec:
        nk.pp.spatial_split(table, buffer_um=20.0)
    assert sum("few observations" in str(w.message) for w in rec) == 1
    assert (table.obs["split"] == "test").sum() < MIN_PART_CELLS  # the split is still made


def test_split_of_a_normal_section_is_silent(table):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*few observations")
        nk.pp.spatial_split(table, buffer_um=5.0)


def test_blocks_split_names_its_own_fix(table):
    with pytest.warns(UserWarning, match=r"n_blocks=4\) or a larger test_fraction"):
        nk.pp.spatial_split(table, method="blocks", test_fraction=0.05, buffer_um=10.0)


def _scored(n_test: int, n: int = 600):
    """A table whose first ``n_test`` cells are test, the student right on every cell."""
    rng = np.random.default_rng(0)
    t = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    truth = rng.integers(0, 3, n)
    t.obs["teacher_niche"] = pd.Categorical([f"N{i}" for i in truth])
    t.obs["student_niche"] = t.obs["teacher_niche"].copy()
    t.obs["split"] = pd.Categorical(np.where(np.arange(n) < n_test, "test", "train"))
    return t


def test_evaluate_warns_on_a_handful_of_test_cells_naming_the_fix():
    t = _scored(7)
    with pytest.warns(UserWarning, match=r"Scoring on few cells \(obs\['split'\] == 'test'.*'student_niche': 7"
                      r".*fewer than 50.*nk.pp.spatial_split.*split_key=None"):  # fmt: skip
        df = nk.tl.evaluate(t)
    assert df.loc["student_niche", "n_cells"] == 7  # still scored: the warning says what it is worth


def test_evaluate_on_enough_test_cells_is_silent():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Scoring on few cells")
        df = nk.tl.evaluate(_scored(MIN_SCORED_CELLS))
    assert df.loc["student_niche", "n_cells"] == MIN_SCORED_CELLS


def test_evaluate_counts_only_cells_with_a_prediction():
    t = _scored(300)
    t.obs["partial"] = t.obs["student_niche"].astype(object)
    t.obs.loc[t.obs_names[10:300], "partial"] = np.nan  # predicted on 10 test cells only
    with pytest.warns(UserWarning, match=r"\{'partial': 10\}"):  # student_niche has 300: not named
        nk.tl.evaluate(t, predictions=["student_niche", "partial"])
