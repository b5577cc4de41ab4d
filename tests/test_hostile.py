"""Hostile and careless input (issue 16): every case gives a clear error naming the file/argument, or is
handled correctly, and nothing in the user's object changes when a function raises.

The student fixtures come from ``test_predict`` (a colour-feature stand-in for ``histology_features``), so the
prediction cases run in seconds; reader cases use the shared real data (skipped with a reason where absent).
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import zlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import dataset_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_distill_data import one_torch_thread  # noqa: F401
from test_predict import _cells, _image, fake_histology_features

import nichekd as nk
from nichekd._core import validate as _validate
from nichekd._core.image import as_rgb_cyx, to_uint8
from nichekd._core.predictions import write_niche_predictions
from nichekd._core.records import read_params, store_params
from nichekd._core.table import library_labels
from nichekd.io._build import make_image
from nichekd.io._checks import MAX_IN_MEMORY_PIXELS, ReaderError, is_blank, read_image
from nichekd.models import NicheStudent
from nichekd.models._integrity import arrays_digest
from nichekd.pp._split import split_groups
from nichekd.tl import distill, predict_niches

# ---------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def trained_student(monkeypatch, tmp_path):
    """A two-niche MLP student distilled on colour features of a small slide, and the folder it is saved in."""
    monkeypatch.setattr(nk.pp, "histology_features", fake_histology_features, raising=False)
    sdata = _cells()
    fake_histology_features(sdata, patch_size_um=40.0)
    nk.pp.spatial_split(sdata)
    model = distill(sdata, features_key="he_features", architecture="mlp", epochs=10, progress=False)
    return sdata, model, model.save(tmp_path / "model")


def _snapshot(sdata) -> dict:
    """Everything a function could change: element names, and the table's obs, obsm, uns and X."""
    t = sdata.tables["table"] if "table" in sdata.tables else None
    return {
        "elements": (sorted(sdata.images), sorted(sdata.shapes), sorted(sdata.tables)),
        "table": None if t is None else t.copy(),
    }


def _assert_unchanged(before: dict, sdata) -> None:
    after = _snapshot(sdata)
    assert after["elements"] == before["elements"]
    a, b = before["table"], after["table"]
    if a is None:
        assert b is None
        return
    assert list(a.obs.columns) == list(b.obs.columns)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert sorted(a.obsm) == sorted(b.obsm)
    for k in a.obsm:
        np.testing.assert_array_equal(np.asarray(a.obsm[k]), np.asarray(b.obsm[k]))
    assert _canonical(a.uns) == _canonical(b.uns)


def _canonical(uns) -> str:
    return json.dumps(uns, sort_keys=True, default=lambda v: repr(np.asarray(v).tolist()))


def _two_libraries(sdata) -> ad.AnnData:
    """Relabel the fixture's cells as two sections (top / bottom half); neighbourhoods stay within each."""
    t = sdata.tables["table"]
    y = t.obsm["spatial"][:, 1]
    t.obs["library"] = pd.Categorical(np.where(y < np.median(y), "S1", "S2"))
    return t


# ---------------------------------------------------------------------------------------------------------------
# 1. prediction writes only its own rows and keeps every run's record


def test_predict_one_library_refuses_to_erase_distill_results(trained_student):
    sdata, model, _ = trained_student
    t = _two_libraries(sdata)
    before = _snapshot(sdata)
    with pytest.raises(ValueError, match=r"already holds predictions.*overwrite=True"):
        predict_niches(sdata, model, library="S1")
    _assert_unchanged(before, sdata)

    old = t.obs["student_niche"].copy()
    old_proba = np.asarray(t.obsm["student_niche_proba"]).copy()
    predict_niches(sdata, model, library="S1", overwrite=True)
    s2 = (t.obs["library"] == "S2").to_numpy()
    # the other library keeps distill's predictions; none is NaN
    assert t.obs["student_niche"][s2].equals(old[s2])
    np.testing.assert_array_equal(t.obsm["student_niche_proba"][s2], old_proba[s2])
    assert t.obs["student_niche"].notna().all()
    # distill's record is kept; the prediction run is recorded beside it
    rec = t.uns["student_niche"]
    assert rec["params"]["teacher_key"] == "teacher_niche" and "history" in rec
    assert rec["runs"]["run0"]["params"]["library"] == "S1"


def test_per_library_loop_keeps_every_library(trained_student):
    sdata, model, _ = trained_student
    t = _two_libraries(sdata)
    for lib in ("S1", "S2"):
        predict_niches(sdata, model, library=lib, key_added="loop")
    predict_niches(sdata, model, key_added="all")
    assert t.obs["loop"].notna().all()
    np.testing.assert_allclose(t.obsm["loop_proba"], t.obsm["all_proba"], atol=1e-6)
    runs = t.uns["loop"]["runs"]
    assert [runs[k]["params"]["library"] for k in sorted(runs)] == ["S1", "S2"]
    # a third run on held rows re-runs predict_niches on its own key: allowed (issue 21), and recorded; a model
    # with other niche names cannot share the column
    predict_niches(sdata, model, library="S2", key_added="loop")
    assert "obs/loop" in t.uns["loop"]["runs"]["run2"]["params"]["replaced"]
    other = NicheStudent.load(trained_student[2])
    other.niche_names = ["a", "b"]
    t.obs.loc[t.obs["library"] == "S2", "loop"] = np.nan
    with pytest.raises(ValueError, match="other niche names"):
        predict_niches(sdata, other, library="S2", key_added="loop", overwrite=True)


def test_a_users_own_column_is_never_overwritten():
    adata = ad.AnnData(np.zeros((6, 1), dtype=np.float32))
    adata.obs["k"] = ["mine"] * 6  # the user's annotation under the key prediction would use
    proba = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="already holds"):
        write_niche_predictions(adata, "k", proba, ["a", "b"], rows=np.arange(3), overwrite=False)
    with pytest.raises(ValueError, match="not niche predictions"):
        write_niche_predictions(adata, "k", proba, ["a", "b"], rows=np.arange(3), overwrite=True)
    assert (adata.obs["k"] == "mine").all() and "k_proba" not in adata.obsm


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.lists(st.booleans(), min_size=12, max_size=12),
    second=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_writer_merges_rows_and_refuses_overlaps(first, second):
    adata = ad.AnnData(np.zeros((12, 1), dtype=np.float32))
    rng = np.random.default_rng(0)
    p1, p2 = rng.dirichlet(np.ones(3), 12), rng.dirichlet(np.ones(3), 12)
    rows1, rows2 = np.flatnonzero(first), np.flatnonzero(second)
    write_niche_predictions(adata, "k", p1[rows1], ["a", "b", "c"], rows=rows1, overwrite=False)
    before = adata.obsm["k_proba"].copy()
    if np.intersect1d(rows1, rows2).size:
        with pytest.raises(ValueError, match="already holds"):
            write_niche_predictions(adata, "k", p2[rows2], ["a", "b", "c"], rows=rows2, overwrite=False)
        np.testing.assert_array_equal(adata.obsm["k_proba"], before)
        return
    write_niche_predictions(adata, "k", p2[rows2], ["a", "b", "c"], rows=rows2, overwrite=False)
    proba = adata.obsm["k_proba"]
    np.testing.assert_allclose(proba[rows1], p1[rows1], rtol=1e-6)
    np.testing.assert_allclose(proba[rows2], p2[rows2], rtol=1e-6)
    untouched = np.setdiff1d(np.arange(12), np.union1d(rows1, rows2))
    assert np.isnan(proba[untouched]).all() and adata.obs["k"].iloc[untouched].isna().all()


# ---------------------------------------------------------------------------------------------------------------
# 2. every encoder setting recorded (None included) and compared; unrecorded features refused


def test_store_params_keeps_none_settings_through_h5ad(tmp_path):
    adata = ad.AnnData(np.zeros((3, 1), dtype=np.float32))
    store_params(adata, "x", {"standardize": None, "backbone": "stain", "nested": {"a": None, "b": 1}})
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = read_params(ad.read_h5ad(tmp_path / "a.h5ad").uns["x"]["params"])
    assert back["standardize"] is None and back["backbone"] == "stain"
    assert read_params(back["nested"]) == {"a": None, "b": 1}


def test_features_made_with_other_settings_are_refused(trained_student):
    sdata, model, _ = trained_student
    t = sdata.tables["table"]
    params = t.uns["he_features"]["params"]
    before = _snapshot(sdata)
    params["standardize"] = "library"  # the data were standardised, the model's features were not
    with pytest.raises(ValueError, match="standardize: model None vs data 'library'"):
        predict_niches(sdata, model, key_added="p")
    del params["standardize"]
    model.encoder["standardize"] = "library"  # and the other way round
    with pytest.raises(ValueError, match="standardize: model 'library' vs data None"):
        predict_niches(sdata, model, key_added="p")
    del model.encoder["standardize"]
    model.encoder["stain_reference"] = {"method": "macenko", "max_c": [1.0, 2.0]}
    with pytest.raises(ValueError, match="stain_reference"):
        predict_niches(sdata, model, key_added="p")
    del model.encoder["stain_reference"]
    t.uns["before"] = 1
    before = _snapshot(sdata)
    saved = t.uns.pop("he_features")  # no provenance record
    with pytest.raises(ValueError, match="trust_features=True"):
        predict_niches(sdata, model, key_added="p")
    t.uns["he_features"] = saved
    _assert_unchanged(before, sdata)
    del t.uns["he_features"]
    predict_niches(sdata, model, key_added="p", trust_features=True)  # the user vouches
    assert t.obs["p"].notna().all() and t.uns["p"]["runs"]["run0"]["params"]["trust_features"]


# ---------------------------------------------------------------------------------------------------------------
# 4. models: checksums, normalisation, load errors naming the file


def _corrupt_payload(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    header = struct.unpack("<Q", raw[:8])[0]
    start = 8 + header
    rng = np.random.default_rng(0)
    pos = rng.integers(start, len(raw), 64)
    for p in pos:
        raw[p] = (raw[p] + 1 + int(rng.integers(0, 254))) % 256
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["payload", "names", "radius", "json", "truncated", "missing"])
def test_damaged_student_is_refused(trained_student, tmp_path, damage):
    _, model, _ = trained_student
    path = model.save(tmp_path / "m")
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    cfg = json.loads(cfg_file.read_text())
    if damage == "payload":
        _corrupt_payload(weights)
        match, exc = "model.safetensors does not match the checksum", ValueError
    elif damage == "names":
        cfg["niche_names"] = cfg["niche_names"][::-1]
        cfg_file.write_text(json.dumps(cfg))
        match, exc = "config.json does not match its checksum", ValueError
    elif damage == "radius":
        cfg["radius_um"] *= 3
        cfg_file.write_text(json.dumps(cfg))
        match, exc = "config.json does not match its checksum", ValueError
    elif damage == "json":
        cfg_file.write_text(cfg_file.read_text()[:-20])
        match, exc = "config.json is not valid JSON", ValueError
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
        match, exc = "model.safetensors cannot be read as safetensors", ValueError
    else:
        weights.unlink()
        match, exc = "model.safetensors is missing", FileNotFoundError
    with pytest.raises(exc, match=match):
        NicheStudent.load(path)


def test_zero_feature_std_is_refused_even_with_a_valid_checksum(trained_student, tmp_path):
    from safetensors.torch import load_file, save_file

    _, model, _ = trained_student
    path = model.save(tmp_path / "m")
    tensors = load_file(str(path / "model.safetensors"))
    tensors["feature_std"] = tensors["feature_std"] * 0
    save_file(tensors, str(path / "model.safetensors"))
    cfg = json.loads((path / "config.json").read_text())
    cfg["checksum"]["weights"] = arrays_digest(tensors)  # as if saved so
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="feature_std is zero"):
        NicheStudent.load(path)


def test_student_round_trip_is_exact(trained_student, tmp_path):
    sdata, model, _ = trained_student
    back = NicheStudent.load(model.save(tmp_path / "m"))
    t = sdata.tables["table"]
    np.testing.assert_array_equal(
        back.predict_proba(t.obsm["he_features"], t.obsm["spatial"]),
        model.predict_proba(t.obsm["he_features"], t.obsm["spatial"]),
    )
    assert back.train_mean_neighbors == model.train_mean_neighbors > 0


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    sdata = nk.datasets.synthetic_tissue(n_cells=600, n_niches=3, random_state=0, image=False, progress=False)
    teacher = nk.tl.teacher_niches(sdata, n_niches=3, return_model=True, progress=False)
    return teacher, teacher.save(tmp_path_factory.mktemp("teacher") / "t")


@pytest.mark.parametrize("damage", ["arrays", "names", "json", "truncated"])
def test_damaged_teacher_is_refused(saved_teacher, tmp_path, damage):
    from nichekd.models.teacher import NicheTeacher

    path = shutil.copytree(saved_teacher[1], tmp_path / "t")
    meta_file, arrays = path / "teacher.json", path / "teacher.safetensors"
    NicheTeacher.load(path)  # intact: loads
    if damage == "arrays":
        _corrupt_payload(arrays)
        match = "do not match the checksum"
    elif damage == "names":
        meta = json.loads(meta_file.read_text())
        meta["niche_names_"] = meta["niche_names_"][::-1]
        meta_file.write_text(json.dumps(meta))
        match = "teacher.json does not match its checksum"
    elif damage == "json":
        meta_file.write_text("{ not json")
        match = "teacher.json is not valid JSON"
    else:
        arrays.write_bytes(arrays.read_bytes()[:100])
        match = "teacher.safetensors cannot be read"
    with pytest.raises(ValueError, match=match):
        NicheTeacher.load(path)


# ---------------------------------------------------------------------------------------------------------------
# 5. numeric arguments and stale derived arrays


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"radius_um": -5.0}, "radius_um"),
        ({"lr": 0.0}, "lr"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_components": 0}, "n_components"),
        ({"patience": 0}, "patience"),
        ({"max_neighbors": 2.5}, "max_neighbors"),
        ({"epochs": "10"}, "epochs"),
    ],
)
def test_distill_refuses_bad_numbers(trained_student, kwargs, name):
    sdata, _, _ = trained_student
    before = _snapshot(sdata)
    with pytest.raises((ValueError, TypeError), match=name):
        distill(sdata, features_key="he_features", architecture="mlp", progress=False, **kwargs)
    _assert_unchanged(before, sdata)


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"batch_size": 0}, "batch_size"), ({"tile_size_um": 0.0}, "tile_size_um"),
                         ({"grid": "triangle"}, "grid")],
)  # fmt: skip
def test_predict_refuses_bad_numbers(trained_student, kwargs, name):
    sdata, model, _ = trained_student
    before = _snapshot(sdata)
    with pytest.raises(ValueError, match=name):
        predict_niches(sdata, model, key_added="p", **kwargs)
    _assert_unchanged(before, sdata)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=3)))
def test_fraction_validator_accepts_only_fractions(value):
    try:
        out = _validate.check_fraction("f", value)
    except (ValueError, TypeError) as err:
        assert "f must" in str(err)
    else:
        assert 0 <= out < 1


def test_stale_teacher_logits_are_refused(trained_student):
    sdata, _, _ = trained_student
    t = sdata.tables["table"]
    codes = t.obs["teacher_niche"].cat.codes.to_numpy()
    t.obsm["teacher_niche_logits"] = np.eye(2, dtype=np.float32)[codes] * 4
    distill(sdata, features_key="he_features", architecture="mlp", epochs=1, progress=False, key_added="ok")
    flip = np.random.default_rng(0).random(t.n_obs) < 0.1  # the user relabels 10% of the cells
    new = t.obs["teacher_niche"].astype(str).to_numpy()
    new[flip] = np.where(new[flip] == "pink", "purple", "pink")
    t.obs["teacher_niche"] = pd.Categorical(new, categories=["pink", "purple"])
    before = _snapshot(sdata)
    with pytest.raises(ValueError, match=r"teacher_niche_logits.*disagrees.*stale"):
        distill(
            sdata, features_key="he_features", architecture="mlp", epochs=1, progress=False, key_added="x"
        )
    _assert_unchanged(before, sdata)


# ---------------------------------------------------------------------------------------------------------------
# 6. images: bit depth, grayscale, size from the header


def test_16bit_rgb_tiff_is_rescaled_not_clipped(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (64, 80, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "he16.tif", rgb16, photometric="rgb")
    with pytest.warns(UserWarning, match="65535"):
        arr = np.asarray(read_image(tmp_path / "he16.tif"))
    assert arr.dtype == np.uint8 and arr.mean() < 200  # clipping at 255 made it all white
    np.testing.assert_allclose(arr, rgb16 / 257.0, atol=0.51)


def test_16bit_grayscale_png_is_not_blank(tmp_path):
    gray = (np.linspace(0, 65535, 90 * 70).reshape(90, 70)).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    with pytest.warns(UserWarning, match="grayscale"):
        arr = read_image(tmp_path / "g16.png")
    assert arr.shape == (90, 70, 3) and not is_blank(arr)
    np.testing.assert_allclose(arr[..., 0], gray / 257.0, atol=0.51)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` RGB pixels but holds (almost) no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_png_claiming_a_huge_size_is_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 100_000, 100_000)
    guard = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"bomb.png.*(too large|tiled pyramidal TIFF)"):
        read_image(path)
    with pytest.raises(ValueError, match="bomb.png"):
        nk.io.read_wsi(path, mpp=0.5)
    assert Image.MAX_IMAGE_PIXELS == guard  # Pillow's guard is never switched off process-wide
    assert guard is not None and guard < MAX_IN_MEMORY_PIXELS


@given(
    st.sampled_from([np.uint16, np.uint32, np.int16]),
    st.integers(min_value=0, max_value=2**15 - 1),
)
def test_integer_images_scale_by_their_range(dtype, value):
    arr = np.full((4, 4, 3), value, dtype=dtype)
    from nichekd._core.image import integer_range

    out, rule = to_uint8(arr)
    # the range the data were recorded in (8-bit values kept, 12-bit data in uint16 by 4095, ...), not the type's
    bits = integer_range(dtype, value)
    assert out.dtype == np.uint8 and rule and bits >= max(value, 255)
    assert int(out.max()) == round(value * 255 / bits)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=4),
    st.sampled_from([np.uint8, np.uint16, np.float32]),
)
def test_any_image_shape_gives_rgb_or_a_clear_error(shape, dtype):
    import warnings

    arr = np.ones(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            out = as_rgb_cyx(arr)
        except ValueError as err:
            assert "H&E image" in str(err)
            return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[0] == 3


def test_float_images_follow_the_documented_rule():
    assert int(to_uint8(np.full((2, 2, 3), 1.0, np.float32))[0].max()) == 255
    assert int(to_uint8(np.full((2, 2, 3), 128.0, np.float32))[0].max()) == 128
    with pytest.raises(ValueError, match="range is unknown"):
        to_uint8(np.full((2, 2, 3), 4000.0, np.float32))
    with pytest.warns(UserWarning, match="grayscale"):
        assert as_rgb_cyx(np.zeros((5, 6), np.uint8)).shape == (3, 5, 6)


# ---------------------------------------------------------------------------------------------------------------
# 7. writes that cannot lose data


def _store_ok(path: Path, marker: str) -> None:
    import spatialdata as sd

    back = sd.read_zarr(path)
    assert back.tables["table"].uns["marker"] == marker


def test_failed_overwrite_keeps_the_previous_store(tmp_path):
    sdata = nk.datasets.synthetic_tissue(n_cells=300, n_niches=3, random_state=0, image=False, progress=False)
    t = sdata.tables["table"]
    store = tmp_path / "tissue.zarr"
    t.uns["marker"] = "first"
    nk.io.write(sdata, store)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        nk.io.write(sdata, store)
    t.uns["marker"] = "second"
    t.uns["unwritable"] = object()  # anndata cannot write it: the write fails part way
    with pytest.raises(Exception):  # noqa: B017 - whatever anndata raises
        nk.io.write(sdata, store, overwrite=True)
    _store_ok(store, "first")
    assert [p.name for p in tmp_path.iterdir()] == ["tissue.zarr"]  # no half-written leftovers
    del t.uns["unwritable"]
    nk.io.write(sdata, store, overwrite=True)
    _store_ok(store, "second")


def test_ctrl_c_mid_write_keeps_the_previous_store(tmp_path, monkeypatch):
    import spatialdata as sd

    sdata = nk.datasets.synthetic_tissue(n_cells=300, n_niches=3, random_state=0, image=False, progress=False)
    sdata.tables["table"].uns["marker"] = "first"
    store = tmp_path / "tissue.zarr"
    nk.io.write(sdata, store)
    sdata.tables["table"].uns["marker"] = "second"
    real = sd.SpatialData._write_element
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first element is on disk, then the user presses Ctrl-C
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sd.SpatialData, "_write_element", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nk.io.write(sdata, store, overwrite=True)
    assert len(calls) == 2
    _store_ok(store, "first")
    assert [p.name for p in tmp_path.iterdir()] == ["tissue.zarr"]


def test_demo_writes_through_the_atomic_writer():
    import inspect

    import nichekd.demo

    src = inspect.getsource(nichekd.demo.run_demo)
    assert "nk.io.write(sdata, store, overwrite=True)" in src and "sdata.write(" not in src


# ---------------------------------------------------------------------------------------------------------------
# 8. readers name the file and the expected format


@pytest.fixture
def mob_copy(tmp_path):
    src = dataset_path("st_mob")
    out = {}
    for name in ("MOB1.tsv.gz", "alignment_table_MOB1.tsv", "MOB1.jpg"):
        shutil.copy(src / name, tmp_path / name)
        (tmp_path / name).chmod(0o644)
        out[name] = tmp_path / name
    return out


def test_st_reader_names_the_broken_file(mob_copy, tmp_path):
    counts, spots, image = (mob_copy[k] for k in ("MOB1.tsv.gz", "alignment_table_MOB1.tsv", "MOB1.jpg"))
    png = tmp_path / "counts_is_png.tsv"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    with pytest.raises(ReaderError, match=r"counts_is_png.tsv as a tab-separated ST count matrix"):
        nk.io.read_st(png, spots, image)
    cut = tmp_path / "cut.tsv.gz"
    cut.write_bytes(counts.read_bytes()[: counts.stat().st_size // 2])
    with pytest.raises(ReaderError, match=r"cut.tsv.gz.*truncated"):
        nk.io.read_st(cut, spots, image)
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(ReaderError, match=r"empty.tsv.*\(the file is empty\)"):
        nk.io.read_st(empty, spots, image)
    with pytest.raises(ReaderError, match=r"empty.tsv.*spot alignment"):
        nk.io.read_st(counts, empty, image)
    assert gzip.decompress(counts.read_bytes())  # the intact file still reads


@pytest.fixture
def visium_copy(tmp_path):
    src = dataset_path("visium_tiny")
    dst = tmp_path / "visium_tiny"
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def test_visium_reader_names_the_broken_file(visium_copy):
    h5 = visium_copy / "filtered_feature_bc_matrix.h5"
    good_h5 = h5.read_bytes()
    h5.write_text("barcode,count\nAAAC,1\n")
    with pytest.raises(ReaderError, match=r"filtered_feature_bc_matrix.h5 as a 10x feature-barcode matrix"):
        nk.io.read_visium(visium_copy)
    h5.write_bytes(good_h5)

    sf = visium_copy / "spatial" / "scalefactors_json.json"
    good_sf = sf.read_text()
    sf.write_text(good_sf[:-5])
    with pytest.raises(ReaderError, match=r"scalefactors_json.json as Visium scale factors"):
        nk.io.read_visium(visium_copy)
    bad = json.loads(good_sf)
    bad["spot_diameter_fullres"] = 0
    sf.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"scalefactors_json.json: spot_diameter_fullres = 0"):
        nk.io.read_visium(visium_copy)
    sf.write_text(good_sf)

    pos = visium_copy / "spatial" / "tissue_positions_list.csv"
    df = pd.read_csv(pos, header=None)
    pd.concat([df, df.iloc[:3]]).to_csv(pos, header=False, index=False)
    with pytest.raises(ValueError, match=r"tissue_positions_list.csv lists 3 barcodes more than once"):
        nk.io.read_visium(visium_copy)
    df.to_csv(pos, header=False, index=False)
    assert nk.io.read_visium(visium_copy).tables["table"].n_obs > 0  # intact again: reads


# ---------------------------------------------------------------------------------------------------------------
# issue 13 item 6: H&E-only prediction at the training neighbour count, its warning, test-time augmentation


def test_he_only_tiling_matches_the_training_neighbour_count(trained_student):
    _, model, path = trained_student
    from spatialdata import SpatialData

    he = SpatialData(images={"S9_he": make_image(_image(np.random.default_rng(5)), 4.0, "S9")})
    predict_niches(he, path)
    run = he.tables["table"].uns["student_niche"]["runs"]["run0"]["params"]
    assert abs(run["mean_neighbours"] / model.train_mean_neighbors - 1) < 0.3
    he2 = SpatialData(images={"S9_he": he.images["S9_he"]})
    with pytest.warns(UserWarning, match="far below"):
        predict_niches(he2, path, tile_size_um=4 * model.radius_um)


def test_tta_averages_over_the_stored_views(trained_student):
    sdata, model, _ = trained_student
    t = sdata.tables["table"]
    feats = np.asarray(t.obsm["he_features"])
    views = np.stack([feats * 1.05, feats * 0.95], 1).astype(np.float32)
    t.obsm["he_features_aug"] = views.reshape(len(feats), -1)
    t.uns["he_features_aug"] = {"params": {"features_key": "he_features"}}
    predict_niches(sdata, model, key_added="tta", tta=True)
    groups = split_groups(library_labels(t), t.obs["split"].astype(str).to_numpy())  # distill's groups
    expected = model.predict_proba(feats, t.obsm["spatial"], groups=groups, views=views)
    np.testing.assert_allclose(t.obsm["tta_proba"], expected, atol=1e-6)


def test_tta_computes_the_views_distill_would_use():
    sdata = nk.datasets.synthetic_tissue(n_cells=400, n_niches=3, random_state=0, progress=False)
    nk.tl.teacher_niches(sdata, n_niches=3, progress=False)
    nk.pp.histology_features(sdata, backbone="stain", key_added="he")
    nk.pp.augmented_features(sdata, features_key="he", n_views=4)
    model = distill(sdata, features_key="he", split_key=None, architecture="mlp", epochs=2, progress=False)
    t = sdata.tables["table"]
    views = np.asarray(t.obsm["he_aug"]).reshape(t.n_obs, 4, -1)
    del t.obsm["he_aug"], t.uns["he_aug"]
    predict_niches(sdata, model, key_added="tta", tta=True)
    expected = model.predict_proba(t.obsm["he"], t.obsm["spatial"], views=views)
    np.testing.assert_allclose(t.obsm["tta_proba"], expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(t.obsm["he_aug"]).reshape(t.n_obs, 4, -1), views)


def test_st_mob_he_only_prediction_matches_the_training_neighbour_count(tmp_path):
    root = dataset_path("st_mob").parent
    from nichekd._core.spatial import resolve
    from nichekd._core.table import get_table

    train = nk.datasets.st_mob(root, sections=("MOB1", "MOB2"))
    nk.tl.teacher_niches(train, n_niches=4, progress=False)
    nk.pp.histology_features(train, backbone="stain", key_added="he")
    nk.pp.spatial_split(train)
    model = distill(train, features_key="he", architecture="mlp", epochs=2, progress=False)
    path = model.save(tmp_path / "mob")
    mob4 = nk.datasets.st_mob(root, sections=("MOB4",))
    he = nk.io.read_wsi(root / "st_mob" / "MOB4.jpg", mpp=resolve(mob4).pyramid("MOB4").levels[0].mpp)
    predict_niches(he, path)
    run = get_table(he).uns["student_niche"]["runs"]["run0"]["params"]
    assert abs(run["mean_neighbours"] / model.train_mean_neighbors - 1) <= 0.3


# ---------------------------------------------------------------------------------------------------------------
# issue 21: one write policy (nichekd._core.records.claim). A result key never replaces the user's data or another
# function's results without overwrite=True (refused before anything is written); a function re-running on its own
# key replaces it and records what it replaced; ownership survives zarr/h5ad; a student of an earlier teacher run
# is named by evaluate.


@pytest.fixture
def tissue():
    """400 synthetic cells with counts and the user's own obs['cell_type'], no image."""
    return nk.datasets.synthetic_tissue(n_cells=400, n_niches=3, random_state=0, image=False, progress=False)


def _everything(sdata) -> dict:
    """:func:`_snapshot` plus the table's obsp, layers and X, and the object's attrs."""
    t = sdata.tables["table"]
    return {
        "base": _snapshot(sdata),
        "obsp": {k: t.obsp[k].copy() for k in t.obsp},
        "layers": {k: t.layers[k].copy() for k in t.layers},
        "X": None if t.X is None else t.X.copy(),
        "attrs": _canonical(dict(sdata.attrs)),
    }


def _dense(x):
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def _assert_nothing_changed(before: dict, sdata) -> None:
    _assert_unchanged(before["base"], sdata)
    t = sdata.tables["table"]
    assert sorted(t.obsp) == sorted(before["obsp"]) and sorted(t.layers) == sorted(before["layers"])
    for k, v in before["obsp"].items():
        np.testing.assert_array_equal(_dense(t.obsp[k]), _dense(v))
    for k, v in before["layers"].items():
        np.testing.assert_array_equal(_dense(t.layers[k]), _dense(v))
    if before["X"] is not None:
        np.testing.assert_array_equal(_dense(t.X), _dense(before["X"]))
    assert _canonical(dict(sdata.attrs)) == before["attrs"]


def test_claim_names_the_key_its_writer_and_both_fixes():
    from nichekd._core.records import claim

    adata = ad.AnnData(np.zeros((4, 1), dtype=np.float32))
    adata.obs["mine"] = ["a"] * 4
    adata.obsm["emb"] = np.zeros((4, 2))
    adata.obsp["graph"] = np.eye(4)
    adata.uns["notes"] = {"x": 1}
    for slot, key in (("obs", "mine"), ("obsm", "emb"), ("obsp", "graph"), ("uns", "notes")):
        with pytest.raises(
            ValueError, match=rf"{slot}\['{key}'\].*not written by nichekd.*key_added=.*overwrite=True"
        ):
            claim(adata, [(slot, key)], writer="teacher_niches")
    done = claim(adata, [("obs", "niche"), ("uns", "niche")], writer="teacher_niches")
    adata.obs["niche"] = "N0"
    adata.uns["niche"] = {"params": {}}
    done.record(adata)
    with pytest.raises(
        ValueError, match=r"obs\['niche'\], which already holds teacher niches of nk.tl.teacher_niches"
    ):
        claim(adata, [("obs", "niche")], writer="histology_baseline")
    again = claim(adata, [("obs", "niche"), ("uns", "niche")], writer="teacher_niches")  # its own: a re-run
    assert again.provenance() == {
        "replaced": ["obs/niche", "uns/niche"],
        "replaced_from": ["teacher_niches"] * 2,
    }
    forced = claim(adata, [("obs", "mine")], writer="teacher_niches", overwrite=True)
    assert forced.provenance()["replaced_from"] == ["user"]


_USER = r", which holds data not written by nichekd"


def _user_keys(t) -> None:
    """The user's own data under keys the writers below are asked to write."""
    rng = np.random.default_rng(0)
    t.obs["mysplit"] = "mine"
    t.obsm["feat"] = rng.random((t.n_obs, 4))
    t.obsm["mine"] = np.zeros((t.n_obs, 6))
    t.obsm["X_scVI"] = np.zeros((t.n_obs, 3))  # a latent computed with scvi-tools directly, under its key
    t.uns["probe"] = {"my": "notes"}


# writer: (on the H&E slide?, the call, what the refusal names); the user's keys are set by _user_keys
_REFUSALS = {
    "spatial_split": (False, lambda s: nk.pp.spatial_split(s, key_added="mysplit", buffer_um=10.0),
                      r"obs\['mysplit'\]" + _USER),
    "cell_types": (False, lambda s: nk.pp.cell_types(s), r"obs\['cell_type'\]" + _USER),  # the default key
    "histology_features": (
        False, lambda s: nk.pp.histology_features(s, backbone="precomputed", features_key="feat", key_added="spatial"),
        r"obsm\['spatial'\] \(the coordinates\)" + _USER),
    "histology_features_dask": (
        True, lambda s: nk.pp.histology_features_dask(s, backbone="stain", key_added="spatial", progress=False),
        r"obsm\['spatial'\] \(the coordinates\)" + _USER),
    "augmented_features": (True, lambda s: nk.pp.augmented_features(s, features_key="he_features", key_added="mine"),
                           r"obsm\['mine'\]" + _USER),
    "scvi_latent": (False, lambda s: nk.pp.scvi_latent(s, max_epochs=1, progress=False),
                    r"obsm\['X_scVI'\]" + _USER),
    "set_units": (True, lambda s: nk.pp.set_units(s, microns_per_unit=0.5),  # the reader's scale differs
                  r"\['S1'\]\['scalefactors'\]\['microns_per_pixel'\]" + _USER + r" \(yours\)\. Pass overwrite=True"),
    "tissue_mask": (True, lambda s: nk.pp.tissue_mask(s, key_added="S1_cells"),  # the user's cells element
                    r"shapes element 'S1_cells'" + _USER),
    "teacher_niches": (False, lambda s: nk.tl.teacher_niches(s, n_niches=3, key_added="library", progress=False),
                       r"obs\['library'\] \(the section of each observation\)" + _USER),
    "distill": (True, lambda s: distill(s, features_key="he_features", key_added="he_features", progress=False),
                r"uns\['he_features'\], which already holds histology features of nk.pp.histology_features"),
    "histology_baseline": (  # the user's teacher labels
        True, lambda s: nk.tl.histology_baseline(s, method="kmeans", n_niches=2, features_key="he_features",
                                                 key_added="teacher_niche"),
        r"obs\['teacher_niche'\]" + _USER),
    "annotation_probe": (
        True, lambda s: nk.tl.annotation_probe(s, annotation_key="teacher_niche", keys=["teacher_niche"],
                                               key_added="probe"),
        r"uns\['probe'\]" + _USER),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_REFUSALS))
def test_every_writer_refuses_the_users_keys(name, request):
    on_slide, call, match = _REFUSALS[name]
    sdata = request.getfixturevalue("slide" if on_slide else "tissue")
    _user_keys(sdata.tables["table"])
    before = _everything(sdata)
    with pytest.raises(
        ValueError, match=match + (r".*key_added=.*overwrite=True" if name != "set_units" else "")
    ):
        call(sdata)
    _assert_nothing_changed(before, sdata)


@pytest.mark.parametrize("dask", [False, True])
def test_prediction_refuses_the_users_column(trained_student, dask):
    sdata, model, _ = trained_student
    t = sdata.tables["table"]
    t.obs["mine"] = "x"
    before = _everything(sdata)
    predict = nk.tl.predict_niches_dask if dask else predict_niches
    with pytest.raises(
        ValueError, match=r"obs\['mine'\], which holds data not written by nichekd.*overwrite=True"
    ):
        predict(sdata, model, key_added="mine", progress=False) if dask else predict(
            sdata, model, key_added="mine"
        )
    _assert_nothing_changed(before, sdata)


def test_aggregate_bins_refuses_the_users_table():
    from test_hd_bins import _spatialdata_io_hd

    sdata = _spatialdata_io_hd()
    tables = {k: v.copy() for k, v in sdata.tables.items()}
    with pytest.raises(
        ValueError, match=r"table element 'square_008um', which holds data not written by nichekd"
    ):
        nk.pp.aggregate_bins(sdata, bin_size_um=16, table_key="square_008um", key_added="square_008um")
    assert sorted(sdata.tables) == sorted(tables) and sorted(sdata.shapes) == ["hd_square_008um"]
    pd.testing.assert_frame_equal(sdata.tables["square_008um"].obs, tables["square_008um"].obs)
    nk.pp.aggregate_bins(sdata, bin_size_um=16, table_key="square_008um")
    nk.pp.aggregate_bins(sdata, bin_size_um=16, table_key="square_008um")  # its own table: a re-run
    assert sdata.attrs["nichekd"]["writers"]["tables"]["square_016um"] == "aggregate_bins"
    params = sdata.tables["square_016um"].uns["aggregate_bins"]["params"]
    assert "tables/square_016um" in params["replaced"]


def test_a_baseline_cannot_replace_the_teacher(tissue):
    t = tissue.tables["table"]
    nk.tl.teacher_niches(tissue, n_niches=3, progress=False)
    t.obsm["feat"] = np.random.default_rng(0).random((t.n_obs, 8)).astype(np.float32)
    before = _everything(tissue)
    with pytest.raises(
        ValueError,
        match=r"obs\['teacher_niche'\], which already holds teacher niches of nk.tl.teacher_niches",
    ):
        nk.tl.histology_baseline(
            tissue, method="kmeans", n_niches=3, features_key="feat", key_added="teacher_niche"
        )
    _assert_nothing_changed(before, tissue)


@pytest.mark.parametrize(
    "name", ["spatial_split", "teacher_niches", "cell_types", "distill", "histology_baseline"]
)
def test_a_rerun_replaces_its_own_keys_and_records_them(name, request):
    import warnings

    if name in ("distill", "histology_baseline"):
        sdata = request.getfixturevalue("slide")
        key = "student_niche" if name == "distill" else "he_kmeans_niche"

        def run():
            if name == "distill":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    distill(sdata, features_key="he_features", architecture="mlp", epochs=1, progress=False)
            else:
                nk.tl.histology_baseline(sdata, method="kmeans", n_niches=2, features_key="he_features")
    else:
        sdata = request.getfixturevalue("tissue")
        key = {"spatial_split": "mysplit", "teacher_niches": "teacher_niche", "cell_types": "leiden"}[name]

        def run():
            if name == "spatial_split":
                nk.pp.spatial_split(sdata, key_added=key, buffer_um=10.0)
            elif name == "teacher_niches":
                nk.tl.teacher_niches(sdata, n_niches=3, progress=False)
            else:
                nk.pp.cell_types(sdata, key_added=key)

    run()
    t = sdata.tables["table"]
    from nichekd._core.records import written_by

    assert written_by(t, "obs", key) == name and "replaced" not in t.uns[key]["params"]
    run()  # no overwrite needed: the same function on its own key (scanpy's behaviour)
    params = t.uns[key]["params"]
    assert f"obs/{key}" in list(params["replaced"]) and set(params["replaced_from"]) == {name}


def test_overwrite_replaces_the_users_data_but_never_the_region_key(tissue):
    from nichekd._core.records import written_by

    t = tissue.tables["table"]
    nk.tl.teacher_niches(tissue, n_niches=3, key_added="cell_type", overwrite=True, progress=False)
    assert written_by(t, "obs", "cell_type") == "teacher_niches"
    params = t.uns["cell_type"]["params"]
    assert list(params["replaced"]) == ["obs/cell_type"] and list(params["replaced_from"]) == ["user"]
    before = _everything(tissue)
    with pytest.raises(
        ValueError, match=r"obs\['region'\] is the table's region key.*even with overwrite=True"
    ):
        nk.tl.teacher_niches(tissue, n_niches=3, key_added="region", overwrite=True, progress=False)
    with pytest.raises(ValueError, match=r"obs\['instance_id'\] is the table's instance key"):
        nk.pp.spatial_split(tissue, key_added="instance_id", buffer_um=10.0, overwrite=True)
    _assert_nothing_changed(before, tissue)


def test_distill_replaces_its_student_and_predict_refuses_it(trained_student):
    import warnings

    sdata, model, _ = trained_student
    t = sdata.tables["table"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        distill(sdata, features_key="he_features", architecture="mlp", epochs=1, progress=False)
    params = t.uns["student_niche"]["params"]
    assert "obs/student_niche" in list(params["replaced"]) and set(params["replaced_from"]) == {"distill"}
    before = _everything(sdata)
    with pytest.raises(ValueError, match=r"already holds predictions of nk.tl.distill.*overwrite=True"):
        predict_niches(sdata, model)
    _assert_nothing_changed(before, sdata)


def test_ownership_survives_zarr_and_h5ad(tissue, tmp_path):
    import spatialdata as sd

    from nichekd._core.records import written_by

    nk.tl.teacher_niches(tissue, n_niches=3, progress=False)
    nk.pp.spatial_split(tissue, buffer_um=10.0)
    back = sd.read_zarr(nk.io.write(tissue, tmp_path / "t.zarr"))
    t = back.tables["table"]
    t.write_h5ad(tmp_path / "t.h5ad")
    for table in (t, ad.read_h5ad(tmp_path / "t.h5ad")):
        assert written_by(table, "obs", "teacher_niche") == "teacher_niches"
        assert written_by(table, "obsp", "spatial_connectivities") == "teacher_niches"
        assert written_by(table, "obs", "split") == "spatial_split"
        assert written_by(table, "obs", "cell_type") is None  # the user's
    nk.tl.teacher_niches(back, n_niches=3, progress=False)  # its own keys, read back: a re-run
    before = _everything(back)
    with pytest.raises(
        ValueError, match=r"obs\['split'\], which already holds the split of nk.pp.spatial_split"
    ):
        nk.pp.cell_types(back, key_added="split")
    _assert_nothing_changed(before, back)


def test_stores_without_records_fall_back_to_the_params_record(tissue):
    from nichekd._core.records import written_by

    t = tissue.tables["table"]
    nk.tl.teacher_niches(tissue, n_niches=3, key_added="t3", progress=False)
    del t.uns["nichekd"]  # a store written before the ownership records
    assert written_by(t, "obs", "t3") == written_by(t, "obsm", "t3_proba") == "teacher_niches"
    assert written_by(t, "obsp", "spatial_connectivities") == "teacher_niches"  # nichekd's graph: in microns
    assert written_by(t, "obs", "t3_entropy") is None  # not something the teacher writes
    t.uns["mine"] = {"params": {"alpha": 1}}
    t.obs["mine"] = "x"
    assert written_by(t, "obs", "mine") is None  # a params record of no known function: the user's
    nk.tl.teacher_niches(tissue, n_niches=3, key_added="t3", progress=False)  # allowed without overwrite
    with pytest.raises(ValueError, match="not written by nichekd"):
        nk.tl.teacher_niches(tissue, n_niches=3, key_added="mine", progress=False)


def test_teacher_keeps_a_squidpy_graph(tissue):
    import squidpy as sq

    from nichekd._core.records import written_by

    t = tissue.tables["table"]
    sq.gr.spatial_neighbors(t, coord_type="generic", n_neighs=6)
    graph, record = t.obsp["spatial_connectivities"].copy(), _canonical(t.uns["spatial_neighbors"])
    with pytest.warns(UserWarning, match=r"obsp\['spatial_connectivities'\].*squidpy.*kept.*overwrite=True"):
        nk.tl.teacher_niches(tissue, n_niches=3, progress=False)
    assert (t.obsp["spatial_connectivities"] != graph).nnz == 0 and _canonical(
        t.uns["spatial_neighbors"]
    ) == record
    assert t.uns["teacher_niche"]["params"]["graph_exported"] is False and "teacher_niche" in t.obs
    nk.tl.teacher_niches(tissue, n_niches=3, overwrite=True, progress=False)
    assert written_by(t, "obsp", "spatial_connectivities") == "teacher_niches"
    assert t.uns["spatial_neighbors"]["params"]["units"] == "micrometer"
    # squidpy run again after the teacher: its graph (recorded as the teacher's, rebuilt since) is kept too
    sq.gr.spatial_neighbors(t, coord_type="generic", n_neighs=4)
    graph = t.obsp["spatial_connectivities"].copy()
    with pytest.warns(UserWarning, match="nichekd did not write"):
        nk.tl.teacher_niches(tissue, n_niches=3, progress=False)
    assert (t.obsp["spatial_connectivities"] != graph).nnz == 0


def test_evaluate_names_a_student_of_an_earlier_teacher_run(slide):
    import warnings

    t = slide.tables["table"]

    def teacher():
        nk.tl.teacher_niches(slide, n_niches=None, method="labels", labels_key="teacher_niche", key_added="teacher",
                             progress=False)  # fmt: skip

    def student(teacher_key="teacher", key_added="student_niche"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            distill(slide, teacher_key=teacher_key, features_key="he_features", architecture="mlp", epochs=1,
                    key_added=key_added, progress=False)  # fmt: skip

    def stale_warnings(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return [str(w.message) for w in caught if "another run of the teacher" in str(w.message)]

    teacher()
    student()
    evaluate = lambda **kw: nk.tl.evaluate(slide, teacher_key="teacher", **kw)  # noqa: E731
    assert not stale_warnings(evaluate)
    teacher()  # re-run: the student learned from the earlier run
    found = stale_warnings(evaluate)
    assert len(found) == 1 and "re-run after nk.tl.distill" in found[0]
    assert "nk.tl.distill(sdata, teacher_key='teacher', key_added='student_niche'" in found[0]
    assert stale_warnings(lambda: nk.tl.compare_compositions(
        slide, teacher_key="teacher", student_key="student_niche", cell_type_key="teacher_niche", n_permutations=0
    ))  # fmt: skip
    student()  # the fix
    assert not stale_warnings(evaluate)
    # labels without a teacher record, edited by hand after distill
    student(teacher_key="teacher_niche", key_added="s2")
    flip = np.random.default_rng(0).random(t.n_obs) < 0.1
    new = t.obs["teacher_niche"].astype(str).to_numpy()
    new[flip] = np.where(new[flip] == "pink", "purple", "pink")
    t.obs["teacher_niche"] = pd.Categorical(new, categories=["pink", "purple"])
    found = stale_warnings(lambda: nk.tl.evaluate(slide, teacher_key="teacher_niche", predictions=["s2"]))
    assert len(found) == 1 and "labels or probabilities changed" in found[0]
    # a subset of the cells is not another teacher run
    part = t[:300].copy()
    assert not stale_warnings(lambda: nk.tl.evaluate(part, teacher_key="teacher", split_key=None))
