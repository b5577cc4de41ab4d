"""nk.pp.histology_features: provenance, replay, cache, multi-library, custom/precomputed backbones, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import spatialdata as sd
import torch

import nichekd as nk
from nichekd.io._build import build_library
from nichekd.models import encoders

PINK, PURPLE = (235, 160, 205), (120, 60, 150)


def _tissue(library: str = "L", n: int = 40, seed: int = 0, left=PINK, right=PURPLE):
    """300 x 300 um image at 0.5 um/px: left half one colour, right half another with dark nuclei."""
    rng = np.random.default_rng(seed)
    img = np.zeros((600, 600, 3), np.uint8)
    img[:, :300] = left
    img[:, 300:] = right
    for y, x in rng.integers(300, 600, (60, 2))[:, ::-1] * [1, 1] - [0, 0]:
        img[max(y - 300, 0) : y - 292, x - 4 : x + 4] = (40, 20, 90)
    xy = np.c_[rng.uniform(20, 280, n), rng.uniform(20, 280, n)]
    a = ad.AnnData(np.ones((n, 3), np.float32))
    a.obs_names = [f"{library}_{i}" for i in range(n)]
    return build_library(a, library=library, xy_um=xy, diameter_um=10, image=img, mpp=0.5)


def _table(sdata):
    return sdata.tables["table"]


def test_stain_features_provenance_and_determinism():
    sdata = _tissue()
    nk.pp.histology_features(sdata, backbone="stain")
    t = _table(sdata)
    x = t.obsm["X_stain"]
    assert x.shape == (40, len(encoders._stain.FEATURE_NAMES)) and x.dtype == np.float32
    assert np.isfinite(x).all()
    p = t.uns["X_stain"]["params"]
    assert p["backbone"] == "stain" and p["patch_size_um"] == 64.0
    assert p["mpp_used"] == {"L": 1.0} and p["pyramid_level"] == {"L": 1}
    assert p["output_dim"] == x.shape[1] and "weights" in p
    # tissue on the right half (x > 150 um) is purple: more hematoxylin than the pink half
    right = t.obsm["spatial"][:, 0] > 190
    left = t.obsm["spatial"][:, 0] < 110
    h = encoders._stain.FEATURE_NAMES.index("h_mean")
    assert x[right, h].mean() > x[left, h].mean()
    again = nk.pp.histology_features(_tissue(), backbone="stain", copy=True)
    np.testing.assert_array_equal(again.obsm["X_stain"], x)


def test_replay_cache_overwrite_and_conflict(monkeypatch):
    sdata = _tissue()
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=50.0, standardize="library")
    t = _table(sdata)
    first = t.obsm["X_stain"].copy()
    params = dict(t.uns["X_stain"]["params"])

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(encoders, "build_encoder", boom)
    nk.pp.histology_features(sdata, **params)  # same settings: reused, no encoder built
    with pytest.raises(ValueError, match="overwrite=True"):
        nk.pp.histology_features(sdata, backbone="stain", patch_size_um=80.0)
    monkeypatch.undo()
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=80.0, overwrite=True)
    assert t.uns["X_stain"]["params"]["patch_size_um"] == 80.0
    assert not np.allclose(t.obsm["X_stain"], first)
    other = _tissue(seed=0)
    nk.pp.histology_features(
        other, **params
    )  # replay on another object: identical settings, identical result
    np.testing.assert_allclose(_table(other).obsm["X_stain"], first, rtol=1e-6, atol=1e-6)
    assert _table(other).uns["X_stain"]["params"]["standardize"] == "library"


def test_copy_leaves_input_untouched():
    sdata = _tissue()
    out = nk.pp.histology_features(sdata, backbone="stain", copy=True, key_added="feat")
    assert "feat" in out.obsm and "feat" not in _table(sdata).obsm and "feat" not in _table(sdata).uns


def test_multi_library_each_uses_its_own_image():
    a = _tissue("A", seed=1, left=PINK, right=PINK)
    b = _tissue("B", seed=2, left=PURPLE, right=PURPLE)
    sdata = sd.concatenate([a, b], concatenate_tables=True, uns_merge="unique")
    nk.pp.histology_features(sdata, backbone="stain")
    t = _table(sdata)
    h = encoders._stain.FEATURE_NAMES.index("h_mean")
    lib = t.obs["library"].astype(str).to_numpy()
    assert t.obsm["X_stain"][lib == "B", h].min() > t.obsm["X_stain"][lib == "A", h].max()
    assert set(t.uns["X_stain"]["params"]["mpp_used"]) == {"A", "B"}


def test_efficientnet_default_offline():
    sdata = _tissue(n=6)
    nk.pp.histology_features(sdata, batch_size=4, device="cpu")
    t = _table(sdata)
    x = t.obsm["X_efficientnet_lite0"]
    assert x.shape == (6, 1280) and np.isfinite(x).all() and x.std() > 0
    p = t.uns["X_efficientnet_lite0"]["params"]
    assert p["patch_size_um"] == 112.0 and p["mpp_used"] == {"L": 0.5}
    assert p["normalization"]["mean"] == pytest.approx([127 / 255] * 3)


def test_custom_module_and_precomputed():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 5, 3)

        def forward(self, x):
            return self.conv(x)  # (n, 5, h, w): pooled over space

    sdata = _tissue(n=10)
    nk.pp.histology_features(
        sdata, backbone=Tiny(), input_size=32, mpp=2.0, mean=(0.5,) * 3, std=(0.5,) * 3, key_added="X_tiny"
    )
    t = _table(sdata)
    assert t.obsm["X_tiny"].shape == (10, 5)
    p = t.uns["X_tiny"]["params"]
    assert p["backbone"].startswith("custom:") and p["input_size"] == 32 and p["patch_size_um"] == 64.0
    with pytest.raises(ValueError, match="pass the module"):
        nk.pp.histology_features(_tissue(n=10), **p)
    nk.pp.histology_features(sdata, backbone="precomputed", features_key="X_tiny")  # keeps its provenance
    assert t.uns["X_tiny"]["params"]["backbone"].startswith("custom:")
    nk.pp.histology_features(sdata, backbone="precomputed", features_key="X_tiny", key_added="X_pre")
    assert t.uns["X_pre"]["params"]["backbone"] == "precomputed"
    np.testing.assert_array_equal(t.obsm["X_pre"], t.obsm["X_tiny"])
    t.obsm["bad"] = np.full((10, 2), np.nan)
    with pytest.raises(ValueError, match="NaN"):
        nk.pp.histology_features(sdata, backbone="precomputed", features_key="bad")
    with pytest.raises(KeyError, match="No obsm"):
        nk.pp.histology_features(sdata, backbone="precomputed", features_key="missing")


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_stain_normalization_replays_reference(method):
    sdata = _tissue(n=12)
    nk.pp.histology_features(sdata, backbone="stain", stain_normalization=method)
    p = dict(_table(sdata).uns["X_stain"]["params"])
    assert p["stain_normalization"] == method and p["stain_reference"]["method"] == method
    other = _tissue(n=12)
    nk.pp.histology_features(other, **p)
    np.testing.assert_allclose(
        _table(other).obsm["X_stain"], _table(sdata).obsm["X_stain"], rtol=1e-5, atol=1e-5
    )


def _snapshot(sdata):
    t = _table(sdata)
    return sorted(t.obsm), sorted(t.uns), t.obs.copy()


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"backbone": "nope"}, KeyError, "Known backbones: .*efficientnet_lite0"),
        ({"backbone": "stain", "patch_size_um": 0.2}, ValueError, "below one pixel"),
        ({"backbone": "stain", "patch_size_um": 1000.0}, ValueError, "larger than image"),
        ({"backbone": "stain", "image_key": "missing"}, KeyError, "No image element"),
        ({"backbone": "stain", "standardize": "slide"}, ValueError, "standardize"),
        ({"backbone": "stain", "input_size": 128}, ValueError, "fixed for the registered backbone"),
        (
            {"backbone": "stain", "shapes_key": "L_spots_moved"},
            ValueError,
            "not registered to the coordinate system",
        ),
        ({"backbone": "stain", "mystery": 1}, TypeError, "unexpected keyword"),
    ],
)
def test_bad_input_raises_and_leaves_data_untouched(kwargs, err, match):
    from spatialdata.transformations import Identity, set_transformation

    sdata = _tissue(n=5)
    moved = sdata.shapes["L_spots"].copy()
    set_transformation(moved, {"elsewhere": Identity()}, set_all=True)
    sdata.shapes["L_spots_moved"] = moved
    before = _snapshot(sdata)
    with pytest.raises(err, match=match):
        nk.pp.histology_features(sdata, **kwargs)
    after = _snapshot(sdata)
    assert before[:2] == after[:2]
    assert before[2].equals(after[2])


def test_no_image_and_off_image_coordinates():
    a = ad.AnnData(np.ones((4, 2), np.float32))
    no_img = build_library(a, library="L", xy_um=np.ones((4, 2)), diameter_um=10)
    with pytest.raises(ValueError, match="no H&E image"):
        nk.pp.histology_features(no_img, backbone="stain")
    sdata = _tissue(n=5)
    _table(sdata).obsm["spatial"] = _table(sdata).obsm["spatial"] * 1000  # e.g. nanometres by mistake
    with pytest.raises(ValueError, match="disagrees with the centroids"):
        nk.pp.histology_features(sdata, backbone="stain")
    assert "X_stain" not in _table(sdata).obsm
    # the element itself off the image (e.g. registered in nanometres)
    sdata = _tissue(n=5)
    shapes = sdata.shapes["L_spots"]
    sdata.shapes["L_spots"] = shapes.set_geometry(shapes.geometry.scale(1000, 1000, origin=(0, 0)))
    del _table(sdata).obsm["spatial"]
    with pytest.raises(ValueError, match="spots lie off image"):
        nk.pp.histology_features(sdata, backbone="stain")
    assert "X_stain" not in _table(sdata).obsm


def test_shapes_key_centroids_match_obsm():
    sdata = _tissue(n=8)
    a = nk.pp.histology_features(sdata, backbone="stain", copy=True)
    b = nk.pp.histology_features(sdata, backbone="stain", shapes_key="L_spots", copy=True)
    np.testing.assert_allclose(a.obsm["X_stain"], b.obsm["X_stain"], rtol=1e-5, atol=1e-6)
