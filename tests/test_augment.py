"""nk.pp.augmented_features and augmentation in distillation: views, determinism, provenance, TTA, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from test_distill_data import one_torch_thread, toy_tissue  # noqa: F401

import nichekd as nk
from nichekd.io._build import build_library
from nichekd.pp._augment import flip_rotate, hed_jitter, views_of


def _tissue(n: int = 60, seed: int = 0):
    """240 x 240 um image at 1 um/px: a pink left half and a purple right half with dark nuclei."""
    rng = np.random.default_rng(seed)
    img = np.zeros((240, 240, 3), np.uint8)
    img[:, :120] = (235, 160, 205)
    img[:, 120:] = (120, 60, 150)
    for y, x in rng.integers(4, 236, (80, 2)):
        img[y - 3 : y + 3, x - 3 : x + 3] = (40, 20, 90)
    xy = rng.uniform(40, 200, (n, 2))
    a = ad.AnnData(np.ones((n, 2), np.float32))
    a.obs_names = [f"c{i}" for i in range(n)]
    return build_library(a, library="L", xy_um=xy, diameter_um=10, image=img, mpp=1.0)


def test_hed_jitter_and_flip_rotate_change_patches_but_keep_content():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 3, 16, 16)).astype(np.uint8)
    assert np.array_equal(hed_jitter(x, rng, 0.0), x)
    jittered = hed_jitter(x, np.random.default_rng(1), 0.05)
    diff = np.abs(jittered.astype(int) - x.astype(int))
    assert diff.mean() > 0.5 and diff.mean() < 30  # a colour shift, not a new image
    turned = flip_rotate(x, np.random.default_rng(2))
    # each output patch is one of the 8 dihedral transforms of its input
    for a, b in zip(x, turned, strict=True):
        cands = [np.rot90(p, k, axes=(1, 2)) for p in (a, a[:, :, ::-1]) for k in range(4)]
        assert any(np.array_equal(b, c) for c in cands)
    assert np.array_equal(flip_rotate(x, rng, flips=False, rotations=False), x)


def test_augmented_features_views_provenance_and_determinism():
    sdata = _tissue()
    t = sdata.tables["table"]
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=32, key_added="he", standardize="library")
    nk.pp.augmented_features(sdata, features_key="he", n_views=3, random_state=0)
    views = views_of(t, "he")
    assert views.shape == (t.n_obs, 3, t.obsm["he"].shape[1]) and np.isfinite(views).all()
    p = t.uns["he_aug"]["params"]
    assert p["features_key"] == "he" and p["n_views"] == 3 and len(p["scales"]) == 3
    # views differ from the originals and from each other, but stay close to them (same tissue)
    orig = t.obsm["he"]
    assert not np.allclose(views[:, 0], orig) and not np.allclose(views[:, 0], views[:, 1])
    corr = np.corrcoef(views[:, 0].ravel(), orig.ravel())[0, 1]
    assert corr > 0.5
    first = t.obsm["he_aug"].copy()
    again = nk.pp.augmented_features(sdata, features_key="he", n_views=3, copy=True, overwrite=True)
    np.testing.assert_array_equal(again.obsm["he_aug"], first)  # same seed, same views
    other = nk.pp.augmented_features(sdata, features_key="he", n_views=3, random_state=1, copy=True,
                                     overwrite=True)  # fmt: skip
    assert not np.allclose(other.obsm["he_aug"], first)
    np.testing.assert_array_equal(t.obsm["he_aug"], first)  # copy=True left the input alone
    assert nk.pp.augmented_features(sdata, features_key="he", n_views=3) is None  # cached: reused
    with pytest.raises(ValueError, match="overwrite"):
        nk.pp.augmented_features(sdata, features_key="he", n_views=2)


def test_augmented_features_bad_input_leaves_data_untouched():
    sdata = _tissue()
    t = sdata.tables["table"]
    with pytest.raises(KeyError, match="histology_features"):
        nk.pp.augmented_features(sdata, features_key="he")
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=32, key_added="he")
    before = (set(t.obsm), set(t.uns))
    with pytest.raises(ValueError, match="n_views"):
        nk.pp.augmented_features(sdata, features_key="he", n_views=0)
    with pytest.raises(ValueError, match="SpatialData"):
        nk.pp.augmented_features(t, features_key="he")
    t.obsm["spatial"] = t.obsm["spatial"] + 1000.0  # coordinates off the image
    with pytest.raises(ValueError):
        nk.pp.augmented_features(sdata, features_key="he")
    assert (set(t.obsm), set(t.uns)) == before


def _with_views(sdata, n_views=2, scale=0.3, seed=5):
    t = sdata.tables["table"]
    rng = np.random.default_rng(seed)
    x = t.obsm["feats"]
    views = x[:, None, :] + rng.normal(scale=scale, size=(x.shape[0], n_views, x.shape[1]))
    t.obsm["feats_aug"] = views.reshape(len(x), -1).astype(np.float32)
    t.uns["feats_aug"] = {"params": {"features_key": "feats", "n_views": n_views}}


def test_distill_samples_views_and_tta():
    sdata = toy_tissue(n=800)
    t = sdata.tables["table"]
    _with_views(sdata)
    kw = {"features_key": "feats", "architecture": "mlp", "epochs": 3, "progress": False, "device": "cpu"}
    nk.tl.distill(sdata, **kw)
    p = t.uns["student_niche"]["params"]
    assert p["augmented_key"] == "feats_aug" and p["n_views"] == 2 and not p["tta"]
    with_aug = t.obsm["student_niche_proba"].copy()
    nk.tl.distill(sdata, augmented_key=None, **kw)
    assert t.uns["student_niche"]["params"]["n_views"] == 0
    assert not np.allclose(with_aug, t.obsm["student_niche_proba"])  # views changed the training
    model = nk.tl.distill(sdata, tta=True, **kw)
    tta = t.obsm["student_niche_proba"]
    assert np.allclose(tta.sum(1), 1, atol=1e-5)
    groups = np.char.add("L1|", t.obs["split"].astype(str).to_numpy().astype(str))
    views = views_of(t, "feats")
    per_view = [model.predict_proba(t.obsm["feats"], t.obsm["spatial"], groups=groups)] + [
        model.predict_proba(views[:, v], t.obsm["spatial"], groups=groups) for v in range(2)
    ]
    test = (t.obs["split"] == "test").to_numpy()
    np.testing.assert_allclose(tta[test], np.mean(per_view, 0)[test], atol=1e-5)


def test_distill_view_errors_write_nothing():
    sdata = toy_tissue(n=400)
    t = sdata.tables["table"]
    before = (set(t.obs.columns), set(t.obsm), set(t.uns))
    kw = {"features_key": "feats", "epochs": 1, "progress": False, "device": "cpu"}
    with pytest.raises(ValueError, match="augmented_features"):
        nk.tl.distill(sdata, tta=True, **kw)
    with pytest.raises(KeyError, match="augmented"):
        nk.tl.distill(sdata, augmented_key="nope", **kw)
    t.obsm["feats_aug"] = np.zeros((t.n_obs, 33), np.float32)
    with pytest.raises(ValueError, match="n_views"):
        nk.tl.distill(sdata, **kw)
    del t.obsm["feats_aug"]
    assert (set(t.obs.columns), set(t.obsm), set(t.uns)) == before
    assert isinstance(t.obs["teacher_niche"].dtype, pd.CategoricalDtype) and torch.get_num_threads() == 1
