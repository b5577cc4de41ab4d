"""spatial_split: strips, blocks, held-out sections, buffers and bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from nichekd.io._build import build_library
from nichekd.pp import spatial_split


def _table(n=2000, libraries=("A", "B"), seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    parts = []
    for lib in libraries:
        a = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
        a.obs_names = [f"{lib}_{i}" for i in range(n)]
        parts.append(
            build_library(
                a, library=lib, xy_um=rng.uniform(0, 1000, (n, 2)), diameter_um=10, kind="cell"
            ).tables["table"]
        )
    table = ad.concat(parts, uns_merge="unique")
    table.obs["library"] = pd.Categorical(table.obs["library"].astype(str))
    return table


def test_strips_second_from_top_is_test_with_buffer():
    t = _table()
    spatial_split(t, buffer_um=20)
    lab = t.obs["split"].astype(str).to_numpy()
    y = t.obsm["spatial"][:, 1]
    assert list(t.obs["split"].cat.categories) == ["train", "test", "buffer"]
    # strip 1 of 4 over [0, 1000] (smallest y = top): 250..500
    assert ((y[lab == "test"] > 250) & (y[lab == "test"] < 500)).all()
    assert ((y[lab == "train"] < 230) | (y[lab == "train"] > 520)).all()
    assert (lab == "buffer").sum() > 0
    # no train cell within the buffer of a test cell, within a section
    for lib in ("A", "B"):
        sel = t.obs["library"].to_numpy() == lib
        d, _ = cKDTree(t.obsm["spatial"][sel & (lab == "test")]).query(
            t.obsm["spatial"][sel & (lab == "train")]
        )
        assert d.min() >= 20
    assert t.uns["split"]["params"]["buffer_um"] == 20
    assert t.uns["split"]["counts"]["test"] == (lab == "test").sum()


def test_buffer_defaults_to_half_the_patch_size():
    t = _table(libraries=("A",))
    t.uns["feats"] = {"params": {"patch_size_um": 100.0}}
    spatial_split(t)
    assert t.uns["split"]["params"]["buffer_um"] == 50.0


def test_blocks_reach_test_fraction_and_are_seeded():
    t = _table()
    a = spatial_split(t, method="blocks", test_fraction=0.3, buffer_um=10, copy=True)
    b = spatial_split(t, method="blocks", test_fraction=0.3, buffer_um=10, copy=True)
    c = spatial_split(t, method="blocks", test_fraction=0.3, buffer_um=10, random_state=1, copy=True)
    assert "split" not in t.obs  # copy leaves the input alone
    assert (a.obs["split"] == b.obs["split"]).all()
    assert not (a.obs["split"] == c.obs["split"]).all()
    share = (a.obs["split"] != "train").mean()
    assert 0.25 < share < 0.6


def test_held_out_sections():
    t = _table()
    spatial_split(t, method="libraries", test_libraries=["B"])
    lab = t.obs["split"].astype(str)
    assert (lab[t.obs["library"] == "B"] == "test").all()
    assert (lab[t.obs["library"] == "A"] == "train").all()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, "buffer_um is required"),
        ({"buffer_um": 10, "method": "nope"}, "method must be"),
        ({"buffer_um": 10, "test_strip": 4}, "test_strip"),
        ({"method": "libraries", "test_libraries": ["C"]}, "not in obs"),
        ({"method": "libraries", "test_libraries": ["A", "B"]}, "All sections"),
        ({"buffer_um": 10_000}, "no train"),
    ],
)
def test_bad_input_raises_and_writes_nothing(kwargs, error):
    t = _table()
    with pytest.raises((ValueError, KeyError), match=error):
        spatial_split(t, **kwargs)
    assert "split" not in t.obs and "split" not in t.uns


def test_buffer_covers_the_widest_read_including_augmented_views():
    t = _table(libraries=("A",))
    t.uns["he"] = {"params": {"patch_size_um": 100.0, "mpp_used": {"A": 0.5}}}
    spatial_split(t)
    # half of (patch + 4 level pixels of resampling margin on each side)
    assert t.uns["split"]["params"]["buffer_um"] == pytest.approx(50.0 + 4 * 0.5)
    assert "he: " in t.uns["split"]["params"]["buffer_from"]
    t.uns["he_aug"] = {"params": {"features_key": "he", "scales": [0.93, 1.08, 1.01]}}
    spatial_split(t)
    assert t.uns["split"]["params"]["buffer_um"] == pytest.approx((108.0 + 4.0) / 2)
    assert "he_aug" in t.uns["split"]["params"]["buffer_from"]
    spatial_split(t, features_key="other", buffer_um=10)  # given: used as is
    assert t.uns["split"]["params"]["buffer_from"] == "given"


def test_teacher_radius_beyond_the_gap_widens_the_buffer_or_warns():
    t = _table(libraries=("A",))
    t.uns["teacher_niche"] = {"params": {"radius_um": 150.0}}
    spatial_split(t, buffer_um=30)
    params = t.uns["split"]["params"]
    assert params["buffer_um"] == 75.0 and params["teacher_guard_applied"] == "widen"
    assert params["buffer_from"] == "teacher radius"
    y = t.obsm["spatial"][:, 1]
    lab = t.obs["split"].astype(str).to_numpy()
    # train and test cells are now at least the teacher's radius apart
    gap = np.abs(y[lab == "train"][:, None] - y[lab == "test"][None]).min()
    assert gap >= 150.0
    with pytest.warns(UserWarning, match="Refit the teacher after this split"):
        spatial_split(t, buffer_um=30, teacher_guard="within")
    assert t.uns["split"]["params"]["buffer_um"] == 30.0
    assert t.uns["split"]["params"]["teacher_guard_applied"] == "within"
    # a teacher already fitted within the split's sides needs neither
    t.uns["teacher_niche"]["params"]["split_key"] = "split"
    spatial_split(t, buffer_um=30)
    assert t.uns["split"]["params"]["buffer_um"] == 30.0
    spatial_split(t, buffer_um=80, teacher_key=None)
    assert "teacher_guard_applied" not in t.uns["split"]["params"]  # None is not stored
    with pytest.raises(ValueError, match="teacher_guard"):
        spatial_split(t, buffer_um=30, teacher_guard="ignore")


def test_teacher_within_split_sides_ignores_test_expression():
    import nichekd as nk
    from nichekd.models import NicheTeacher

    sd = nk.datasets.synthetic_tissue(1500, n_niches=3, image=False, random_state=0, progress=False)
    t = sd["table"]
    spatial_split(t, buffer_um=20, teacher_key=None)
    test = (t.obs["split"] == "test").to_numpy()
    teacher = NicheTeacher(3, split_key="split", progress=False).fit(t)
    inputs = teacher.prepare(t)
    idx = inputs.nbrs.index
    side = t.obs["split"].astype(str).to_numpy()
    ok = idx >= 0
    assert (side[np.where(ok, idx, 0)] == side[:, None])[ok].all()  # neighbourhoods stay on their side
    t2 = t.copy()
    rng = np.random.default_rng(0)
    x = t2.X.toarray() if hasattr(t2.X, "toarray") else np.array(t2.X)
    x[test] = rng.poisson(2.0, size=(test.sum(), t2.n_vars))
    t2.X = x.astype(np.float32)
    other = NicheTeacher(3, split_key="split", progress=False).fit(t2)
    np.testing.assert_array_equal(teacher.predict_proba(t)[~test], other.predict_proba(t2)[~test])
    nk.tl.teacher_niches(t, n_niches=3, split_key="split", progress=False)
    assert t.uns["teacher_niche"]["params"]["split_key"] == "split"
    with pytest.raises(KeyError, match="spatial_split"):
        NicheTeacher(3, split_key="nope", progress=False).fit(t)
