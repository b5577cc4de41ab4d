"""nk.tl.cross_validate: leave-one-section-out and leave-one-block-out scores, summary rows, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_distill_data import one_torch_thread  # noqa: F401

import nichekd as nk
from nichekd.io._build import build_library
from nichekd.tl._cross_validate import summarise

FAST = {"epochs": 6, "device": "cpu"}


def _sections(n_sections: int = 3, n: int = 300, d: int = 16, k: int = 3, seed: int = 0, shift: float = 3.0):
    """Sections whose features carry the niche plus a per-section offset (a stain batch effect)."""
    from spatialdata import concatenate

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 1.5
    parts = []
    for s in range(n_sections):
        xy = rng.uniform(0, 600, (n, 2))
        niche = (xy[:, 0] // 200).astype(int) % k
        feats = centres[niche] + rng.normal(size=(n, d)) * 2.0 + rng.normal(size=d) * shift
        a = ad.AnnData(np.zeros((n, 1), np.float32))
        a.obs_names = [f"S{s}_{i}" for i in range(n)]
        sd = build_library(a, library=f"S{s}", xy_um=xy, diameter_um=10, kind="cell")
        tab = sd.tables["table"]
        tab.obs["teacher_niche"] = pd.Categorical(
            [f"N{i}" for i in niche], categories=[f"N{i}" for i in range(k)]
        )
        tab.obsm["feats"] = feats.astype(np.float32)
        parts.append(sd)
    sdata = concatenate(parts, concatenate_tables=True, uns_merge="unique")
    t = sdata.tables["table"]
    t.uns["feats"] = {"params": {"backbone": "toy", "patch_size_um": 40.0}}
    t.uns["teacher_niche"] = {"params": {"radius_um": 45.0, "n_neighbors_target": 10}}
    return sdata


def test_leave_one_section_out_scores_every_method_and_summarises():
    sdata = _sections()
    t = sdata.tables["table"]
    before = (set(t.obs.columns), set(t.obsm), set(t.uns))
    df = nk.tl.cross_validate(sdata, features_key="feats", baselines=("kmeans",), distill_kwargs=FAST,
                              progress=False)  # fmt: skip
    assert (set(t.obs.columns), set(t.obsm), set(t.uns)) == before  # nothing written
    folds = sorted({f for f, _ in df.index} - {"mean", "std"})
    assert folds == ["S0", "S1", "S2"]
    assert set(df.loc["S0"].index) == {"student", "kmeans", "kmeans_nbr"}
    assert (df.loc["S0", "n_test"] == 300).all()
    # the niche signal is learnable and the offsets are per section: the student finds the niches
    assert df.loc[("mean", "student"), "ari"] > 0.5
    per_fold = df.drop(index=["mean", "std"], level="fold")
    student = per_fold.xs("student", level="method")
    np.testing.assert_allclose(df.loc[("mean", "student"), "ari"], student["ari"].mean())
    np.testing.assert_allclose(df.loc[("std", "student"), "ari"], student["ari"].std(ddof=1))
    best = per_fold.drop(index="student", level="method").groupby(level="fold")["ari"].max()
    np.testing.assert_allclose(student["margin"], student["ari"] - best.loc[student.index])


def test_blocks_on_one_section_and_same_seed_same_scores():
    sdata = _sections(n_sections=1, n=500)
    kw = {"features_key": "feats", "folds": "blocks", "n_blocks": 2, "baselines": ("kmeans",),
          "neighbourhood_baselines": False, "distill_kwargs": FAST, "progress": False}  # fmt: skip
    a = nk.tl.cross_validate(sdata, **kw)
    assert sorted({f for f, _ in a.index} - {"mean", "std"}) == ["block0", "block1", "block2", "block3"]
    assert (a.drop(index=["mean", "std"], level="fold")["n_test"] < 125).all()  # a buffer is dropped
    b = nk.tl.cross_validate(sdata, **kw)
    pd.testing.assert_frame_equal(a, b)


def test_summarise_margin():
    df = pd.DataFrame({"fold": ["a", "a", "b", "b"], "method": ["student", "kmeans"] * 2,
                       "ari": [0.5, 0.3, 0.2, 0.4], "nmi": [0.5, 0.4, 0.3, 0.3], "n_test": [10] * 4})  # fmt: skip
    out = summarise(df)
    assert out.loc[("b", "student"), "margin"] == pytest.approx(-0.2)
    assert out.loc[("mean", "student"), "margin"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"teacher_key": "nope"}, "teacher_niches"),
        ({"features_key": "nope"}, "histology_features"),
        ({"folds": "random"}, "folds"),
        ({"baselines": ("dbscan",)}, "baselines"),
        ({"folds": "blocks", "n_blocks": 1}, "n_blocks"),
    ],
)
def test_bad_input_raises(kwargs, error):
    sdata = _sections(n_sections=2, n=60)
    with pytest.raises((ValueError, KeyError), match=error):
        nk.tl.cross_validate(sdata, **{"features_key": "feats", "progress": False, **kwargs})


def test_one_section_needs_blocks():
    sdata = _sections(n_sections=1, n=100)
    with pytest.raises(ValueError, match="folds='blocks'"):
        nk.tl.cross_validate(sdata, features_key="feats", progress=False)


def test_fold_key_holds_out_groups_of_sections_and_scores_each():
    sdata = _sections(n_sections=4, n=300)
    t = sdata.tables["table"]
    t.obs["animal"] = pd.Categorical(t.obs["library"].astype(str).map({"S0": "a", "S1": "a", "S2": "b",
                                                                        "S3": "b"}))  # fmt: skip
    df = nk.tl.cross_validate(sdata, features_key="feats", fold_key="animal", baselines=("kmeans",),
                              neighbourhood_baselines=False, distill_kwargs=FAST, progress=False)  # fmt: skip
    assert sorted({f for f, _ in df.index} - {"mean", "std"}) == ["S0", "S1", "S2", "S3"]
    assert (df.drop(index=["mean", "std"], level="fold")["n_test"] == 300).all()
    assert df.loc[("mean", "student"), "ari"] > 0.5
    t.obs["mixed"] = np.where(np.arange(t.n_obs) % 2, "x", "y")
    with pytest.raises(ValueError, match="span several values"):
        nk.tl.cross_validate(sdata, features_key="feats", fold_key="mixed", progress=False)
    with pytest.raises(KeyError, match="nope"):
        nk.tl.cross_validate(sdata, features_key="feats", fold_key="nope", progress=False)
