"""The annotation probe: an SVM predicts an external annotation from niche assignments (macro-F1, chance)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import nichekd as nk
from nichekd._core.records import read_params


@pytest.fixture(scope="module")
def tissue():
    torch.set_num_threads(1)
    sdata = nk.datasets.synthetic_tissue(4000, n_niches=5, random_state=0, progress=False)
    nk.tl.teacher_niches(sdata, n_niches=5, progress=False)
    nk.pp.histology_features(sdata, backbone="stain", key_added="he", device="cpu")
    torch.set_num_threads(1)
    nk.tl.histology_baseline(sdata, method="leiden", n_niches=5, features_key="he")
    nk.pp.spatial_split(sdata, features_key="he")  # strips: one test strip per section, buffered
    return sdata


KEYS = ["teacher_niche", "he_leiden_niche"]


def _folds(df):
    return [c for c in df.columns if c not in ("macro_f1", "sd", "input")]


def test_teacher_probe_beats_leiden_on_he_and_chance(tissue):
    t = tissue["table"]
    df = nk.tl.annotation_probe(tissue, annotation_key="true_niche", keys=KEYS, groups="blocks", n_blocks=2)
    assert list(df.index) == [*KEYS, "chance"]
    assert len(_folds(df)) == 4  # a 2 x 2 grid over the test strip
    teacher, leiden, chance = (df.loc[k, "macro_f1"] for k in [*KEYS, "chance"])
    assert teacher > leiden + 0.1 and leiden > chance + 0.05, df
    assert 0.1 < chance < 0.3  # 4-5 niches guessed at their frequencies: about 1/5
    params = t.uns["annotation_probe"]["params"]
    assert params["groups"] == "blocks" and params["split_key"] == "split" and params["split"] == "test"
    assert t.uns["annotation_probe"]["results"]["teacher_niche"]["macro_f1"] == pytest.approx(teacher)
    again = nk.tl.annotation_probe(
        tissue, annotation_key="true_niche", keys=KEYS, groups="blocks", n_blocks=2, key_added="again"
    )
    pd.testing.assert_frame_equal(df, again)


def test_default_probes_only_the_test_cells(tissue):
    t = tissue["table"]
    test = (t.obs["split"] == "test").to_numpy()
    df = nk.tl.annotation_probe(tissue, annotation_key="true_niche", keys=KEYS, groups="blocks")
    params = t.uns["annotation_probe"]["params"]
    assert params["n_cells"] == test.sum() < t.n_obs and params["scored"] == "obs['split'] == 'test'"
    # scrambling the labels (niches and annotation) of the train and buffer cells changes nothing
    work = t.copy()
    rng = np.random.default_rng(0)
    for key in ["teacher_niche", "true_niche"]:
        col = work.obs[key]
        values = col.to_numpy().copy()
        values[~test] = rng.permutation(values[~test])
        work.obs[key] = pd.Categorical(values, categories=col.cat.categories)
    assert (work.obs["teacher_niche"] != t.obs["teacher_niche"]).any()
    scrambled = nk.tl.annotation_probe(work, annotation_key="true_niche", keys=KEYS, groups="blocks")
    pd.testing.assert_frame_equal(df, scrambled)
    # every cell on request: the teacher was fit on them all, so it scores higher there
    every = nk.tl.annotation_probe(
        tissue, annotation_key="true_niche", keys=KEYS, groups="blocks", split_key=None
    )
    params = read_params(t.uns["annotation_probe"]["params"])
    assert params["n_cells"] == t.n_obs and params["scored"] == "all cells" and params["split_key"] is None
    assert every.loc["teacher_niche", "macro_f1"] != df.loc["teacher_niche", "macro_f1"]


def test_no_split_raises_naming_spatial_split(tissue):
    work = tissue["table"].copy()
    del work.obs["split"]
    with pytest.raises(KeyError, match="nk.pp.spatial_split"):
        nk.tl.annotation_probe(work, annotation_key="true_niche", keys=KEYS, groups="blocks")
    df = nk.tl.annotation_probe(work, annotation_key="true_niche", keys=KEYS, groups="blocks", split_key=None)
    assert (
        work.uns["annotation_probe"]["params"]["n_cells"] == work.n_obs and np.isfinite(df["macro_f1"]).all()
    )


def test_one_encoding_for_every_key(tissue):
    t = tissue["table"]
    assert "teacher_niche_proba" in t.obsm and "he_leiden_niche_proba" not in t.obsm
    df = nk.tl.annotation_probe(tissue, annotation_key="true_niche", keys=KEYS, groups="blocks")
    assert (df.loc[KEYS, "input"] == "onehot").all()
    assert t.uns["annotation_probe"]["params"]["input"] == "onehot"
    # the teacher's probabilities are not read by default: without them the result is the same
    work = t.copy()
    del work.obsm["teacher_niche_proba"]
    pd.testing.assert_frame_equal(
        df, nk.tl.annotation_probe(work, annotation_key="true_niche", keys=KEYS, groups="blocks")
    )
    # probabilities on request, when every key has them
    proba = nk.tl.annotation_probe(
        tissue, annotation_key="true_niche", keys=["teacher_niche"], groups="blocks", use_proba=True
    )
    assert proba.loc["teacher_niche", "input"] == "proba" and proba.loc["teacher_niche", "macro_f1"] > 0.5
    assert t.uns["annotation_probe"]["params"]["use_proba"] is True
    # mixing encodings is refused, naming the key without probabilities
    with pytest.raises(ValueError, match="'he_leiden_niche' has no obsm"):
        nk.tl.annotation_probe(
            tissue, annotation_key="true_niche", keys=KEYS, groups="blocks", use_proba=True
        )


def test_subset_is_deprecated_for_split_key(tissue):
    df = nk.tl.annotation_probe(tissue, annotation_key="true_niche", keys=KEYS, groups="blocks")
    with pytest.warns(FutureWarning, match="split_key"):
        old = nk.tl.annotation_probe(
            tissue, annotation_key="true_niche", keys=KEYS, groups="blocks", subset="split"
        )
    pd.testing.assert_frame_equal(df, old)


def test_probe_plot(tissue, tmp_path):
    import matplotlib.pyplot as plt

    df = nk.tl.annotation_probe(tissue, annotation_key="true_niche", keys=KEYS, groups="blocks")
    ax = nk.pl.annotation_probe(df, show=False, save=tmp_path / "probe.png")
    assert (tmp_path / "probe.png").stat().st_size > 0 and len(ax.patches) == 2
    plt.close("all")
    with pytest.raises(TypeError, match="annotation_probe"):
        nk.pl.annotation_probe(df.drop(index="chance"), show=False)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"keys": ["nope"]}, KeyError, "No niche assignment"),
        ({"keys": "teacher_niche"}, ValueError, "non-empty list"),
        ({"keys": ["chance"]}, ValueError, "reserved"),
        ({"annotation_key": "nope"}, KeyError, "No obs"),
        ({"groups": "libraries"}, ValueError, "at least two sections"),
        ({"groups": "strips"}, ValueError, "groups must be"),
        ({"split_key": "nope"}, KeyError, "spatial_split"),
        ({"split": "nope"}, ValueError, "No cell has"),
        ({"keys": KEYS, "use_proba": True}, ValueError, "he_leiden_niche"),
    ],
)
def test_bad_input_raises_and_writes_nothing(tissue, kwargs, exc, match):
    t = tissue["table"]
    before = set(t.uns)
    args = {"annotation_key": "true_niche", "keys": ["teacher_niche"], "groups": "blocks", **kwargs}
    with pytest.raises(exc, match=match):
        nk.tl.annotation_probe(
            tissue, annotation_key=args.pop("annotation_key"), keys=args.pop("keys"), key_added="bad", **args
        )
    assert set(t.uns) == before


@pytest.mark.realdata
@pytest.mark.slow
def test_dlpfc_labels_teacher_on_two_sections_probe_on_the_other_two():
    from conftest import dataset_path

    root = dataset_path("dlpfc_donor1").parent
    torch.set_num_threads(1)
    sdata = nk.datasets.dlpfc(root)
    t = sdata["table"]
    assert t.n_obs > 15_000 and set(t.obs["layer"].cat.categories) == {
        "L1",
        "L2",
        "L3",
        "L4",
        "L5",
        "L6",
        "WM",
    }
    nk.tl.teacher_niches(sdata, n_niches=None, method="labels", labels_key="layer", progress=False)
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=150.0, key_added="he", device="cpu",
                             standardize="library")  # fmt: skip
    torch.set_num_threads(1)
    nk.pp.spatial_split(sdata, method="libraries", test_libraries=["151509", "151510"])
    nk.tl.distill(sdata, features_key="he", architecture="mlp", progress=False, device="cpu")
    for method in ("leiden", "kmeans", "teacher"):
        nk.tl.histology_baseline(
            sdata, method=method, n_niches=7, features_key="he", neighbourhood=method != "teacher"
        )
    keys = ["student_niche", "he_leiden_niche", "he_kmeans_niche", "he_teacher_niche"]
    df = nk.tl.annotation_probe(sdata, annotation_key="layer", keys=keys, groups="libraries")  # test sections
    assert list(df.columns[2:4]) == ["151509", "151510"]
    assert (df.loc[keys, "input"] == "onehot").all()
    assert np.isfinite(df["macro_f1"]).all()
    # measured (stain features, lowres H&E): see benchmarks/results_annotation_probe.md
    assert df.loc["student_niche", "macro_f1"] > df.loc["chance", "macro_f1"] + 0.1, df
    assert df.loc["student_niche", "macro_f1"] >= df.loc[keys[1:], "macro_f1"].max() - 0.02, df
