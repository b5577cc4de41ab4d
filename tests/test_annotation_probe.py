"""The annotation probe: an SVM predicts an external annotation from niche assignments (macro-F1, chance)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import nichekd as nk


@pytest.fixture(scope="module")
def tissue():
    torch.set_num_threads(1)
    sdata = nk.datasets.synthetic_tissue(4000, n_niches=5, random_state=0, progress=False)
    nk.tl.teacher_niches(sdata, n_niches=5, progress=False)
    nk.pp.histology_features(sdata, backbone="stain", key_added="he", device="cpu")
    torch.set_num_threads(1)
    nk.tl.histology_baseline(sdata, method="leiden", n_niches=5, features_key="he")
    return sdata


def test_teacher_probe_beats_leiden_on_he_and_chance(tissue):
    t = tissue["table"]
    keys = ["teacher_niche", "he_leiden_niche"]
    df = nk.tl.annotation_probe(tissue, annotation_key="true_niche", keys=keys, groups="blocks", n_blocks=2)
    assert list(df.index) == [*keys, "chance"]
    assert df.loc["teacher_niche", "input"] == "proba" and df.loc["he_leiden_niche", "input"] == "onehot"
    folds = [c for c in df.columns if c not in ("macro_f1", "sd", "input")]
    assert len(folds) == 4
    teacher, leiden, chance = (
        df.loc[keys[0], "macro_f1"],
        df.loc[keys[1], "macro_f1"],
        df.loc["chance", "macro_f1"],
    )
    assert teacher > leiden + 0.1 and leiden > chance + 0.05, df
    assert 0.1 < chance < 0.3  # 5 niches guessed at their frequencies: about 1/5
    assert t.uns["annotation_probe"]["params"]["groups"] == "blocks"
    assert t.uns["annotation_probe"]["results"]["teacher_niche"]["macro_f1"] == pytest.approx(teacher)
    again = nk.tl.annotation_probe(
        tissue, annotation_key="true_niche", keys=keys, groups="blocks", n_blocks=2, key_added="again"
    )
    pd.testing.assert_frame_equal(df, again)
    # one-hot instead of probabilities for the teacher
    onehot = nk.tl.annotation_probe(
        tissue, annotation_key="true_niche", keys=["teacher_niche"], groups="blocks", use_proba=False
    )
    assert onehot.loc["teacher_niche", "input"] == "onehot" and onehot.loc["teacher_niche", "macro_f1"] > 0.6


def test_probe_plot(tissue, tmp_path):
    import matplotlib.pyplot as plt

    df = nk.tl.annotation_probe(
        tissue, annotation_key="true_niche", keys=["teacher_niche", "he_leiden_niche"], groups="blocks"
    )
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
    df = nk.tl.annotation_probe(sdata, annotation_key="layer", keys=keys, groups="libraries", subset="split")
    assert list(df.columns[2:4]) == ["151509", "151510"]
    assert np.isfinite(df["macro_f1"]).all()
    # measured (stain features, lowres H&E): see benchmarks/results_annotation_probe.md
    assert df.loc["student_niche", "macro_f1"] > df.loc["chance", "macro_f1"] + 0.1, df
    assert df.loc["student_niche", "macro_f1"] >= df.loc[keys[1:], "macro_f1"].max() - 0.02, df
