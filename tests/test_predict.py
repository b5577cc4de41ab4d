"""predict_niches: cells or tiled tissue on H&E-only slides, encoder replay, zarr round trip, bad input.

``histology_features`` is replaced by a small colour extractor here (replayable params, like the real one), so
these tests check predict_niches itself, independently of the image encoders.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_distill_data import one_torch_thread  # noqa: F401

import nichekd.pp
from nichekd._core.spatial import resolve
from nichekd._core.table import get_table, library_labels
from nichekd.io._build import build_library, make_image
from nichekd.models import NicheStudent
from nichekd.pp import spatial_split
from nichekd.pp._split import split_groups
from nichekd.tl import distill, predict_niches

MPP = 4.0
SIZE_PX = 300  # 1200 um square
COLOURS = np.array([[200, 90, 150], [120, 60, 170]], dtype=float)  # pink (x < 600 um) / purple


def _image(rng, blank=False):
    img = np.full((SIZE_PX, SIZE_PX, 3), 245, dtype=float)
    if not blank:
        yy, xx = np.mgrid[:SIZE_PX, :SIZE_PX]
        tissue = (xx - 150) ** 2 + (yy - 150) ** 2 < 130**2
        region = (xx * MPP >= 600).astype(int)
        img[tissue] = COLOURS[region[tissue]]
        img += rng.normal(scale=25, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def fake_histology_features(
    sdata, *, backbone="colour", patch_size_um=40.0, key_added="he_features", table_key="table", copy=False
):
    """Mean and std of RGB in a square patch around each centre; params replayable like the real function."""
    t = get_table(sdata, table_key)
    feats = np.zeros((t.n_obs, 6), dtype=np.float32)
    ctx = resolve(sdata, table_key=table_key)
    for lib in ctx.libraries:
        level = ctx.pyramid(lib).levels[0]
        img = np.asarray(level.data.values).transpose(1, 2, 0).astype(np.float32)
        sel = np.flatnonzero(t.obs["library"].astype(str).to_numpy() == lib)
        px = level.um_to_px(t.obsm["spatial"][sel])
        half = int(patch_size_um / level.mpp / 2)
        for i, (x, y) in zip(sel, px.astype(int), strict=True):
            patch = img[max(y - half, 0) : y + half + 1, max(x - half, 0) : x + half + 1].reshape(-1, 3)
            feats[i] = np.r_[patch.mean(0), patch.std(0)] / 255
    out = t.copy() if copy else t
    out.obsm[key_added] = feats
    out.uns[key_added] = {
        "params": {
            "backbone": backbone,
            "patch_size_um": patch_size_um,
            "key_added": key_added,
            "table_key": table_key,
        }
    }
    return out if copy else None


@pytest.fixture
def features(monkeypatch):
    monkeypatch.setattr(nichekd.pp, "histology_features", fake_histology_features, raising=False)
    return fake_histology_features


def _cells(seed=0, n=1500):
    rng = np.random.default_rng(seed)
    r, a = 480 * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
    xy = np.c_[600 + r * np.cos(a), 600 + r * np.sin(a)]
    adata = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    adata.obs_names = [f"c{i}" for i in range(n)]
    sdata = build_library(
        adata, library="S1", xy_um=xy, diameter_um=10, kind="cell", image=_image(rng), mpp=MPP
    )
    t = sdata.tables["table"]
    niche = (xy[:, 0] >= 600).astype(int)
    t.obs["teacher_niche"] = pd.Categorical(np.array(["pink", "purple"])[niche])
    return sdata


@pytest.fixture
def trained(features, tmp_path):
    sdata = _cells()
    features(sdata, patch_size_um=40.0)
    spatial_split(sdata)
    model = distill(sdata, features_key="he_features", architecture="mlp", epochs=10, progress=False)
    model.save(tmp_path / "model")
    return sdata, model, tmp_path / "model"


def _groups(t):
    """distill's neighbourhood groups: section and split part."""
    return split_groups(library_labels(t), t.obs["split"].astype(str).to_numpy())


def test_predict_cells_reuses_matching_features(trained):
    sdata, model, _ = trained
    t = sdata.tables["table"]
    assert model.encoder["backbone"] == "colour" and model.encoder["patch_size_um"] == 40.0
    predict_niches(sdata, model, key_added="pred")
    # on the training object neighbourhoods stay within each split part, as in distill: the same answer
    expected = model.predict_proba(t.obsm["he_features"], t.obsm["spatial"], groups=_groups(t))
    np.testing.assert_allclose(t.obsm["pred_proba"], expected, atol=1e-5)
    np.testing.assert_array_equal(t.obs["pred"].astype(str), t.obs["student_niche"].astype(str))
    # without the split column (a new slide) they span the section
    del t.obs["split"]
    predict_niches(sdata, model, key_added="whole")
    whole = model.predict_proba(t.obsm["he_features"], t.obsm["spatial"])
    np.testing.assert_allclose(t.obsm["whole_proba"], whole, atol=1e-5)
    assert list(t.obs["pred"].cat.categories) == ["pink", "purple"]
    assert (t.obs["pred"] == t.obs["teacher_niche"]).mean() > 0.9


def test_saved_model_predicts_the_same_after_zarr_round_trip(trained, tmp_path):
    import spatialdata as sd

    sdata, model, path = trained
    sdata.write(tmp_path / "data.zarr")
    back = sd.read_zarr(tmp_path / "data.zarr")
    del back.tables["table"].obsm["he_features"]  # force the replay of the encoder on the read-back image
    predict_niches(back, path, key_added="pred")
    t = sdata.tables["table"]
    expected = model.predict_proba(t.obsm["he_features"], t.obsm["spatial"], groups=_groups(t))
    np.testing.assert_allclose(back.tables["table"].obsm["pred_proba"], expected, atol=1e-5)


def test_he_only_slide_is_tiled(trained):
    _, model, path = trained
    rng = np.random.default_rng(5)
    he = _cells(seed=5).__class__(images={"S9_he": make_image(_image(rng), MPP, "S9")})
    predict_niches(he, path, tile_size_um=40.0)
    t = he.tables["table"]
    assert "S9_tiles" in he.shapes and "S9_tissue" in he.shapes
    assert t.n_obs == len(he.shapes["S9_tiles"]) > 100
    assert t.obsm["he_features"].shape == (t.n_obs, 6)
    x = t.obsm["spatial"][:, 0]
    truth = np.where(x >= 600, "purple", "pink")
    assert (t.obs["student_niche"].astype(str) == truth).mean() > 0.9
    assert (t.obs["student_niche_entropy"] >= 0).all()
    assert resolve(he).library("S9").image == "S9_he"


def test_bad_input(trained, tmp_path):
    sdata, model, path = trained
    t = sdata.tables["table"]
    # encoder settings differ
    t.uns["he_features"]["params"]["patch_size_um"] = 80.0
    with pytest.raises(ValueError, match="other encoder settings"):
        predict_niches(sdata, model, key_added="pred")
    t.uns["he_features"]["params"]["patch_size_um"] = 40.0
    # feature width differs
    saved = t.obsm["he_features"]
    t.obsm["he_features"] = saved[:, :4]
    with pytest.raises(ValueError, match="expects 6 features"):
        predict_niches(sdata, model, key_added="pred")
    t.obsm["he_features"] = saved.copy()
    t.obsm["he_features"][3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_niches(sdata, model, key_added="pred")
    assert "pred" not in t.obs and "pred_proba" not in t.obsm and "pred" not in t.uns
    # a slide without tissue: clear error, nothing added
    blank = sdata.__class__(
        images={"B_he": make_image(_image(np.random.default_rng(0), blank=True), MPP, "B")}
    )
    with pytest.raises(ValueError, match="[Nn]o tissue|is blank"):
        predict_niches(blank, path)
    assert len(blank.tables) == 0 and len(blank.shapes) == 0
    with pytest.raises(FileNotFoundError):
        predict_niches(sdata, tmp_path / "nothing")
    # K recorded in the config must match the weights: the definition checksum catches the edit
    cfg = (path / "config.json").read_text().replace('"n_niches": 2', '"n_niches": 3')
    (path / "config.json").write_text(
        cfg.replace('"niche_names": [\n    "pink",', '"niche_names": [\n    "x",\n    "pink",')
    )
    with pytest.raises(ValueError, match="config.json does not match its checksum"):
        NicheStudent.load(path)


def test_feature_record_one_list_and_one_comparison():
    """The grid read-out defines features: a model trained on per-observation features refuses grid features
    (it used to pass, the prediction list of settings lacked grid_um), with the same tolerance as the cache."""
    from types import SimpleNamespace

    from nichekd._core.feature_record import FEATURE_SETTINGS, same_setting
    from nichekd.pp import _features
    from nichekd.tl._predict import check_encoder

    record = {"backbone": "stain", "patch_size_um": 64.0, "standardize": None, "grid_um": None}
    model = SimpleNamespace(encoder=dict(record))
    check_encoder(model, dict(record), "he")
    with pytest.raises(ValueError, match="grid_um"):
        check_encoder(model, {**record, "grid_um": 32.0}, "he")
    check_encoder(model, {**record, "patch_size_um": 64.0 * (1 + 1e-9)}, "he")
    assert set(_features._SETTINGS) <= set(FEATURE_SETTINGS) | {"features_key", "image_key", "shapes_key"}
    assert "grid_um" in _features._SETTINGS and "grid_um" in FEATURE_SETTINGS
    assert same_setting(64.0, 64.0 * (1 + 1e-9)) and not same_setting(64.0, 64.1)


def test_a_table_under_another_name_is_predicted_not_tiled(trained):
    """An object whose one table is not called "table" (spatialdata-io's Visium HD "square_008um") has its own
    observations predicted: predict_niches finds the table as every function does (it used to tile the
    tissue into a new table). Several tables and no "table": an error names them."""
    sdata, model, path = trained
    t = sdata.tables["table"]
    expected = model.predict_proba(t.obsm["he_features"], t.obsm["spatial"], groups=_groups(t))
    renamed = sdata.__class__(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"square_008um": t}
    )
    predict_niches(renamed, path, key_added="pred")
    assert list(renamed.tables) == ["square_008um"] and not any(k.endswith("_tiles") for k in renamed.shapes)
    np.testing.assert_allclose(renamed.tables["square_008um"].obsm["pred_proba"], expected, atol=1e-5)
    two = sdata.__class__(
        images=dict(sdata.images),
        shapes=dict(sdata.shapes),
        tables={"square_008um": t.copy(), "other": t.copy()},
    )
    with pytest.raises(KeyError, match="table_key"):
        predict_niches(two, path, key_added="pred2")
