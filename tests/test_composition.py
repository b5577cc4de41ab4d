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
    nk.tl.teacher_niches(a, n_niches=4, progress=False)
    a.obs["shuffled"] = pd.Categorical(np.random.default_rng(0).permutation(a.obs["true_niche"].to_numpy()))
    return a


def test_niche_composition_fractions(labelled):
    comp = nk.tl.niche_composition(labelled, niche_key="true_niche", cell_type_key="cell_type")
    assert comp.shape == (4, 6) and comp.index.name == "niche"
    np.testing.assert_allclose(comp.sum(1), 1.0)
    expected = pd.crosstab(labelled.obs["true_niche"], labelled.obs["cell_type"], normalize="index")
    np.testing.assert_allclose(comp.to_numpy(), expected.to_numpy())
    # spot mode: fractions from obsm give the mean fraction per niche
    frac = np.random.default_rng(1).dirichlet(np.ones(3), size=labelled.n_obs)
    labelled.obsm["cell_type_fractions"] = pd.DataFrame(
        frac, index=labelled.obs_names, columns=["a", "b", "c"]
    )
    comp2 = nk.tl.niche_composition(labelled, niche_key="true_niche", cell_type_key="cell_type_fractions")
    assert list(comp2.columns) == ["a", "b", "c"]
    first = labelled.obs["true_niche"] == comp2.index[0]
    np.testing.assert_allclose(comp2.iloc[0].to_numpy(), frac[first.to_numpy()].mean(0))
    with pytest.raises(KeyError, match="No obs column"):
        nk.tl.niche_composition(labelled, niche_key="nope", cell_type_key="cell_type")


def test_compare_compositions_detects_agreement(labelled):
    res = nk.tl.compare_compositions(
        labelled,
        teacher_key="teacher_niche",
        student_key="true_niche",
        cell_type_key="cell_type",
        n_permutations=2000,
    )
    assert len(res.pairs) == 4 and set(res.pairs.columns) >= {"niche_a", "niche_b", "jsd"}
    assert res.mean_jsd < 0.05 and res.p_value == pytest.approx(1 / 2001)
    assert res.null.shape == (2000,) and res.null.min() > res.mean_jsd
    # Hungarian pairs agree with the overlap-based matching of the labels themselves
    by_overlap = match_niches(labelled.obs["teacher_niche"], b=labelled.obs["true_niche"])
    assert dict(zip(res.pairs.niche_a, res.pairs.niche_b, strict=True)) == dict(
        zip(by_overlap.niche_a, by_overlap.niche_b, strict=True)
    )
    shuffled = nk.tl.compare_compositions(
        labelled,
        teacher_key="teacher_niche",
        student_key="shuffled",
        cell_type_key="cell_type",
        n_permutations=500,
    )
    assert shuffled.p_value > 0.05 and shuffled.mean_jsd > res.mean_jsd
    again = nk.tl.compare_compositions(
        labelled,
        teacher_key="teacher_niche",
        student_key="shuffled",
        cell_type_key="cell_type",
        n_permutations=500,
    )
    np.testing.assert_array_equal(again.null, shuffled.null)  # same seed, same null


def test_ten_thousand_permutations_vectorised(labelled):
    res = nk.tl.compare_compositions(
        labelled,
        teacher_key="teacher_niche",
        student_key="true_niche",
        cell_type_key="cell_type",
        n_permutations=10_000,
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
    pairs = match_niches(a, b=b)
    assert dict(zip(pairs.niche_a, pairs.niche_b, strict=True)) == {"x": "2", "y": "1"}
    with pytest.raises(ValueError, match="different lengths"):
        match_niches(a, b=b[:3])


def _renamed(labels: pd.Series, mapping: dict[str, str]) -> pd.Categorical:
    return pd.Categorical(labels.astype(str).map(mapping))


def test_pairing_null_asks_a_different_question(labelled):
    """Names rotated: the labels null re-matches by JSD and rejects; the pairing null (names fixed) does not."""
    obs = labelled.obs
    names = [str(c) for c in obs["teacher_niche"].cat.categories]
    # a "student" that is the teacher with 10% of cells relabelled at random: same names, same niches
    rng = np.random.default_rng(3)
    noisy = obs["teacher_niche"].astype(str).to_numpy().copy()
    flip = rng.random(len(noisy)) < 0.1
    noisy[flip] = rng.choice(names, flip.sum())
    labelled.obs["good"] = pd.Categorical(noisy)
    labelled.obs["rotated"] = _renamed(obs["good"], dict(zip(names, names[1:] + names[:1], strict=True)))
    kw = {"n_permutations": 10_000, "null": "pairings"}
    good = nk.tl.compare_compositions(
        labelled, teacher_key="teacher_niche", student_key="good", cell_type_key="cell_type", **kw
    )
    assert good.null_kind == "pairings" and good.pairing == "names" and len(good.null) == 10_000
    # 4 niches: 24 pairings, so the smallest reachable p is about 1/24
    assert good.p_value < 0.06 and good.null.min() <= good.mean_jsd
    rotated = nk.tl.compare_compositions(
        labelled, teacher_key="teacher_niche", student_key="rotated", cell_type_key="cell_type", **kw
    )
    assert rotated.p_value > 0.2
    assert nk.tl.compare_compositions(labelled, teacher_key="teacher_niche", student_key="rotated", cell_type_key="cell_type",
                                      n_permutations=500).p_value < 0.01  # fmt: skip
    # a valid test: random labellings (with the teacher's names, or other names paired by shared cells) are
    # called significant at about the nominal rate, not always (p is uniform on multiples of 1/24 here)
    p_random = []
    for i in range(40):
        names_i = names if i % 2 else [f"C{j}" for j in range(len(names))]
        labelled.obs["random"] = pd.Categorical(rng.choice(names_i, labelled.n_obs))
        p_random.append(nk.tl.compare_compositions(labelled, teacher_key="teacher_niche", student_key="random", cell_type_key="cell_type",
                                                   null="pairings", n_permutations=2000).p_value)  # fmt: skip
    assert np.mean(np.array(p_random) < 0.05) <= 0.15, p_random
    assert np.median(p_random) > 0.2, p_random
    # unsupervised clusters (other names) are paired by shared cells, never by their compositions
    labelled.obs["clusters"] = _renamed(obs["good"], {n: f"C{i}" for i, n in enumerate(names)})
    clusters = nk.tl.compare_compositions(
        labelled, teacher_key="teacher_niche", student_key="clusters", cell_type_key="cell_type", **kw
    )
    assert clusters.pairing == "overlap" and clusters.mean_jsd == pytest.approx(good.mean_jsd)
    again = nk.tl.compare_compositions(
        labelled, teacher_key="teacher_niche", student_key="good", cell_type_key="cell_type", **kw
    )
    np.testing.assert_array_equal(again.null, good.null)
    with pytest.raises(ValueError, match="null must be one of"):
        nk.tl.compare_compositions(
            labelled, teacher_key="teacher_niche", student_key="good", cell_type_key="cell_type", null="cells"
        )
    with pytest.raises(ValueError, match="share no niche name"):
        nk.tl.compare_compositions(labelled, teacher_key="teacher_niche", student_key="clusters", cell_type_key="cell_type", null="pairings",
                                   pairing="names")  # fmt: skip


@pytest.fixture(scope="module")
def five_niches():
    """``synthetic_tissue`` with 5 teacher niches (120 one-to-one pairings), a noisy copy of the teacher (a real
    pairing: same names, 20% of cells relabelled) and uniformly random labels with the teacher's names."""
    t = nk.datasets.synthetic_tissue(3000, n_niches=5, image=False, random_state=0, progress=False)["table"]
    nk.tl.teacher_niches(t, n_niches=5, progress=False)
    names = [str(c) for c in t.obs["teacher_niche"].cat.categories]
    rng = np.random.default_rng(3)
    noisy = t.obs["teacher_niche"].astype(str).to_numpy().copy()
    flip = rng.random(len(noisy)) < 0.2
    noisy[flip] = rng.choice(names, flip.sum())
    t.obs["noisy"] = pd.Categorical(noisy)
    for seed in range(5):
        t.obs[f"random{seed}"] = pd.Categorical(np.random.default_rng(seed).choice(names, t.n_obs))
    t.obs["random3k"] = pd.Categorical(np.random.default_rng(9).choice(names[:3], t.n_obs))
    return t


def _compare(adata, student, null, n=10_000, **kw):
    return nk.tl.compare_compositions(adata, teacher_key="teacher_niche", student_key=student,
                                      cell_type_key="cell_type", null=null, n_permutations=n, **kw)  # fmt: skip


def test_literal_paper_null_is_degenerate(five_niches):
    """JSD-optimal pairs against random pairings: p sits at about 1/K! = 1/120 whatever the labels."""
    floor = 1 / 120
    for student in ["noisy"] + [f"random{s}" for s in range(5)]:
        res = _compare(five_niches, student, "optimal_vs_random_pairings")
        assert res.degenerate and res.null_kind == "optimal_vs_random_pairings" and res.pairing == "jsd"
        assert res.n_pairings == 120 and len(res.null) == 10_000 and "degenerate=True" in repr(res)
        # the optimum is the minimum over all pairings: no random pairing beats it, only the optimum itself ties
        assert res.null.min() >= res.mean_jsd - 1e-12
        ties = int(np.isclose(res.null, res.mean_jsd, rtol=0, atol=1e-12).sum())
        assert res.p_value == pytest.approx((1 + ties) / 10_001)
        # ties ~ Binomial(10,000, 1/120): p within 4 sd of the floor, "significant" even for random labels
        assert abs(res.p_value - floor) < 0.004 and res.p_value < 0.05, (student, res)
        # the statistic is the Hungarian matching, as for the labels null
        assert res.mean_jsd == pytest.approx(_compare(five_niches, student, "labels", n=0).mean_jsd)
    # fewer niches in B (3 of 5): the optimum pairs all of B's, the floor is 1 / (5 * 4 * 3)
    res = _compare(five_niches, "random3k", "optimal_vs_random_pairings", n=5000)
    assert len(res.pairs) == 3 and res.n_pairings == 60 and res.null.min() >= res.mean_jsd - 1e-12
    assert abs(res.p_value - 1 / 60) < 0.008, res


def test_pairings_and_labels_nulls_do_not_reject_random_labels(five_niches):
    """Random labels (seeds 0-4; seeds 0-11 all give p > 0.07 for both) are not significant."""
    for seed in range(5):
        pairings = _compare(five_niches, f"random{seed}", "pairings", random_state=seed)
        assert not pairings.degenerate and pairings.pairing == "names" and pairings.n_pairings == 120
        assert pairings.p_value > 0.05, (seed, pairings)
        labels = _compare(five_niches, f"random{seed}", "labels", n=1000, random_state=seed)
        assert not labels.degenerate and labels.p_value > 0.05, (seed, labels)


def test_pairings_and_labels_nulls_reject_a_real_pairing(five_niches):
    """Teacher against a noisy copy of itself: both informative nulls reject, at their floors."""
    pairings = _compare(five_niches, "noisy", "pairings")
    assert pairings.pairing == "names" and (pairings.pairs.niche_a == pairings.pairs.niche_b).all()
    # p cannot go below about 1/120 (the observed pairing is one of the 120); only it is as good
    assert pairings.p_value < 0.015 and pairings.null.min() == pytest.approx(pairings.mean_jsd)
    labels = _compare(five_niches, "noisy", "labels", n=1000)
    assert labels.p_value == pytest.approx(1 / 1001) and labels.null.min() > labels.mean_jsd
    assert labels.mean_jsd == pytest.approx(pairings.mean_jsd)  # the JSD-optimal pairs are the named ones


def test_one_jensen_shannon(labelled):
    from scipy.spatial.distance import jensenshannon

    from nichekd.pl._composition import _jsd
    from nichekd.tl._composition import jensen_shannon

    p, q = np.array([0.7, 0.2, 0.1, 0.0]), np.array([0.1, 0.1, 0.4, 0.4])
    assert _jsd(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert jensen_shannon(p[None], q[None])[0, 0] == pytest.approx(_jsd(p, q))


def test_composition_null_plot(labelled, tmp_path):
    import matplotlib.pyplot as plt

    res = nk.tl.compare_compositions(labelled, teacher_key="teacher_niche", student_key="true_niche", cell_type_key="cell_type", null="pairings",
                                     n_permutations=1000)  # fmt: skip
    ax = nk.pl.composition_null(res, show=False, save=tmp_path / "null.png")
    assert (tmp_path / "null.png").stat().st_size > 0
    assert "p = " in ax.get_title() and len(ax.lines) == 1
    plt.close("all")
    with pytest.raises(TypeError, match="compare_compositions"):
        nk.pl.composition_null({"null": []}, show=False)
    empty = nk.tl.compare_compositions(
        labelled,
        teacher_key="teacher_niche",
        student_key="true_niche",
        cell_type_key="cell_type",
        n_permutations=0,
    )
    with pytest.raises(ValueError, match="no permutations"):
        nk.pl.composition_null(empty, show=False)


@pytest.mark.realdata
@pytest.mark.slow
def test_pairing_null_separates_student_from_shuffled_on_st_mob():
    import torch
    from conftest import dataset_path

    root = dataset_path("st_mob").parent
    torch.set_num_threads(1)
    sdata = nk.datasets.st_mob(root)
    t = sdata["table"]
    nk.tl.teacher_niches(t, n_niches=5, batch_correct=True, progress=False)
    nk.pp.cell_types(t, resolution=1.0)
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=300.0, key_added="he", device="cpu",
                             standardize="library")  # fmt: skip
    torch.set_num_threads(1)
    nk.pp.spatial_split(sdata, features_key="he")
    nk.tl.distill(sdata, features_key="he", architecture="mlp", progress=False, device="cpu")
    test = t[(t.obs["split"] == "test").to_numpy()].copy()
    rng = np.random.default_rng(0)
    names = list(test.obs["teacher_niche"].cat.categories)
    student = nk.tl.compare_compositions(
        test,
        teacher_key="teacher_niche",
        student_key="student_niche",
        cell_type_key="cell_type",
        null="pairings",
    )
    assert len(student.null) == 10_000 and student.p_value < 0.05, student
    p_shuffled, p_random, jsd_shuffled = [], [], []
    for _ in range(20):  # 20 shuffled students and 20 random labellings
        test.obs["shuffled"] = pd.Categorical(
            rng.permutation(test.obs["student_niche"].astype(str).to_numpy())
        )
        test.obs["random"] = pd.Categorical(rng.choice(names, test.n_obs))
        shuffled = nk.tl.compare_compositions(test, teacher_key="teacher_niche", student_key="shuffled", cell_type_key="cell_type", null="pairings",
                                              n_permutations=2000)  # fmt: skip
        p_shuffled.append(shuffled.p_value)
        jsd_shuffled.append(shuffled.mean_jsd)
        p_random.append(nk.tl.compare_compositions(test, teacher_key="teacher_niche", student_key="random", cell_type_key="cell_type",
                                                   null="pairings", n_permutations=2000).p_value)  # fmt: skip
    # a shuffled student or a random labelling is significant at about the nominal 5% rate, never routinely
    assert np.mean(np.array(p_shuffled) < 0.05) <= 0.15 and np.median(p_shuffled) > 0.2, p_shuffled
    assert np.mean(np.array(p_random) < 0.05) <= 0.15 and np.median(p_random) > 0.2, p_random
    assert student.mean_jsd < min(jsd_shuffled)
