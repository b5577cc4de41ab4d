"""Niche compositions, Hungarian matching and the permutation test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_teacher import multi_library_tissue

import nichekd as nk
from nichekd.tl import match_niches


@pytest.fixture(scope="module")
def labelled():
    a = multi_library_tissue(n_per_lib=1250)  # 2,500 cells
    nk.tl.teacher_niches(a, 4, progress=False)
    a.obs["shuffled"] = pd.Categorical(np.random.default_rng(0).permutation(a.obs["true_niche"].to_numpy()))
    return a


def test_niche_composition_fractions(labelled):
    comp = nk.tl.niche_composition(labelled, "true_niche", "cell_type")
    assert comp.shape == (4, 6) and comp.index.name == "niche"
    np.testing.assert_allclose(comp.sum(1), 1.0)
    expected = pd.crosstab(labelled.obs["true_niche"], labelled.obs["cell_type"], normalize="index")
    np.testing.assert_allclose(comp.to_numpy(), expected.to_numpy())
    # spot mode: fractions from obsm give the mean fraction per niche
    frac = np.random.default_rng(1).dirichlet(np.ones(3), size=labelled.n_obs)
    labelled.obsm["cell_type_fractions"] = pd.DataFrame(
        frac, index=labelled.obs_names, columns=["a", "b", "c"]
    )
    comp2 = nk.tl.niche_composition(labelled, "true_niche", "cell_type_fractions")
    assert list(comp2.columns) == ["a", "b", "c"]
    first = labelled.obs["true_niche"] == comp2.index[0]
    np.testing.assert_allclose(comp2.iloc[0].to_numpy(), frac[first.to_numpy()].mean(0))
    with pytest.raises(KeyError, match="No obs column"):
        nk.tl.niche_composition(labelled, "nope", "cell_type")


def test_compare_compositions_detects_agreement(labelled):
    res = nk.tl.compare_compositions(
        labelled, "teacher_niche", "true_niche", "cell_type", n_permutations=2000
    )
    assert len(res.pairs) == 4 and set(res.pairs.columns) >= {"niche_a", "niche_b", "jsd"}
    assert res.mean_jsd < 0.05 and res.p_value == pytest.approx(1 / 2001)
    assert res.null.shape == (2000,) and res.null.min() > res.mean_jsd
    # Hungarian pairs agree with the overlap-based matching of the labels themselves
    by_overlap = match_niches(labelled.obs["teacher_niche"], labelled.obs["true_niche"])
    assert dict(zip(res.pairs.niche_a, res.pairs.niche_b, strict=True)) == dict(
        zip(by_overlap.niche_a, by_overlap.niche_b, strict=True)
    )
    shuffled = nk.tl.compare_compositions(
        labelled, "teacher_niche", "shuffled", "cell_type", n_permutations=500
    )
    assert shuffled.p_value > 0.05 and shuffled.mean_jsd > res.mean_jsd
    again = nk.tl.compare_compositions(labelled, "teacher_niche", "shuffled", "cell_type", n_permutations=500)
    np.testing.assert_array_equal(again.null, shuffled.null)  # same seed, same null


def test_ten_thousand_permutations_vectorised(labelled):
    res = nk.tl.compare_compositions(
        labelled, "teacher_niche", "true_niche", "cell_type", n_permutations=10_000
    )
    assert len(res.null) == 10_000 and np.isfinite(res.null).all()


def test_match_niches_on_a_matrix_and_rectangular():
    cost = pd.DataFrame([[0.9, 0.1, 0.5], [0.2, 0.8, 0.05]], index=["A0", "A1"], columns=["B0", "B1", "B2"])
    pairs = match_niches(cost)
    assert list(zip(pairs.niche_a, pairs.niche_b, strict=True)) == [("A0", "B1"), ("A1", "B2")]
    best = match_niches(cost, maximize=True)
    assert list(best.niche_b) == ["B0", "B1"]
    a = np.array(["x", "x", "y", "y", "z"])
    b = np.array(["2", "2", "1", "1", "1"])
    pairs = match_niches(a, b)
    assert dict(zip(pairs.niche_a, pairs.niche_b, strict=True)) == {"x": "2", "y": "1"}
    with pytest.raises(ValueError, match="different lengths"):
        match_niches(a, b[:3])
