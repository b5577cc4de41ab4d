"""The fast paths of the encoders against their references: histogram stain features vs the straightforward
implementation, bf16 vs fp32 EfficientNet-Lite0, micro-batching, precision detection and thread handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dataset_path

import nichekd as nk
from nichekd._core import patches as _image
from nichekd._core.spatial import resolve
from nichekd._core.table import spatial_coords
from nichekd.models import encoders
from nichekd.models.encoders import _base, _efficientnet, _stain

PERCENTILES = [_stain.FEATURE_NAMES.index(f"{c}_p{q}") for c in "he" for q in (10, 50, 90)]
BLOB = _stain.FEATURE_NAMES.index("nuclear_blob_density")
RGB = [_stain.FEATURE_NAMES.index(f"{c}_{s}") for s in ("mean", "std") for c in "rgb"]
OTHER = [j for j in range(len(_stain.FEATURE_NAMES)) if j not in PERCENTILES + RGB + [BLOB]]


def _mob_patches(n: int, size: int) -> np.ndarray:
    """``n`` random ``size``-px patches of the real ST mouse olfactory bulb H&E (skips without the data)."""
    from PIL import Image

    img = np.asarray(Image.open(dataset_path("st_mob") / "MOB1.jpg").convert("RGB"))
    rng = np.random.default_rng(0)
    ys = rng.integers(0, img.shape[0] - size, n)
    xs = rng.integers(0, img.shape[1] - size, n)
    return np.stack([img[y : y + size, x : x + size].transpose(2, 0, 1) for y, x in zip(ys, xs, strict=True)])


def _synthetic_patches(n: int, size: int, mpp: float) -> np.ndarray:
    sdata = nk.datasets.synthetic_tissue(n_cells=max(n, 400), random_state=3)
    table = sdata.tables["table"]
    lib = str(np.asarray(table.obs["library"])[0])
    pyr = resolve(sdata).pyramid(lib)
    centres = np.asarray(spatial_coords(table))[:n]
    return _image.read_patches(pyr, centres, size * mpp, size)


def _assert_stain_close(x: np.ndarray, blob_agreement: float = 0.99) -> None:
    """The tolerance documented in :func:`_stain.stain_features`, against the reference implementation."""
    fast, ref = _stain.stain_features(x), _stain._stain_features_reference(x)
    assert fast.shape == ref.shape == (len(x), len(_stain.FEATURE_NAMES)) and fast.dtype == np.float32
    p_fast, p_ref = fast[:, PERCENTILES].astype(np.float64), ref[:, PERCENTILES].astype(np.float64)
    bound = _stain.HIST_RTOL * (np.abs(p_ref) + _stain.HIST_V0) + 1e-7  # + float32 rounding
    assert np.all(np.abs(p_fast - p_ref) <= bound), np.abs(p_fast - p_ref).max()
    np.testing.assert_allclose(fast[:, OTHER], ref[:, OTHER], rtol=1e-5, atol=1e-6)
    # R, G, B statistics: exact integer sums, to float32 rounding (the reference's float32 sums drift by 5e-5)
    rgb = x.reshape(len(x), 3, -1).astype(np.float64) / 255.0
    np.testing.assert_allclose(fast[:, RGB], np.c_[rgb.mean(2), rgb.std(2)], rtol=0, atol=1e-7)
    np.testing.assert_allclose(ref[:, RGB], np.c_[rgb.mean(2), rgb.std(2)], rtol=0, atol=1e-4)
    # maxima of the smoothed hematoxylin: identical except where float32 rounding splits a flat plateau
    same = fast[:, BLOB] == ref[:, BLOB]
    assert same.mean() >= blob_agreement, same.mean()


def test_fast_stain_features_match_the_reference_on_real_he():
    _assert_stain_close(_mob_patches(512, 64), blob_agreement=1.0)


def test_fast_stain_features_match_the_reference_on_synthetic_and_edge_cases():
    rng = np.random.default_rng(1)
    syn = _synthetic_patches(200, 64, 1.0)
    noise = rng.integers(0, 256, (64, 3, 64, 64), dtype=np.uint8)
    flat = np.zeros((4, 3, 64, 64), np.uint8)
    flat[0], flat[1], flat[2], flat[3] = 0, 255, 128, np.array([50, 30, 110], np.uint8)[:, None, None]
    odd = rng.integers(0, 256, (5, 3, 37, 50), dtype=np.uint8)  # other sizes: other percentile positions
    for x in (syn, noise, odd):
        _assert_stain_close(x)
    _assert_stain_close(flat, blob_agreement=0.75)
    f = _stain.stain_features(flat)
    # a flat patch is one plateau: every pixel is a maximum where it is nuclear (black, grey, blue), none on white
    np.testing.assert_array_equal(f[:, BLOB], [1000.0, 0.0, 1000.0, 1000.0])
    # white background: exact zeros of H and E stay exactly zero
    np.testing.assert_array_equal(f[1, PERCENTILES], 0.0)


def test_fast_stain_features_do_not_depend_on_threads_or_batching():
    x = np.random.default_rng(2).integers(0, 256, (150, 3, 64, 64), dtype=np.uint8)
    one = _stain.stain_features(x, n_threads=1)
    np.testing.assert_array_equal(one, _stain.stain_features(x, n_threads=2))
    np.testing.assert_array_equal(one[97:98], _stain.stain_features(x[97:98]))
    assert _stain.stain_features(x[:0]).shape == (0, len(_stain.FEATURE_NAMES))
    with pytest.raises(ValueError, match="uint8 RGB"):
        _stain.stain_features(x.astype(np.float32))


def test_precision_is_detected_and_never_bf16_without_native_support(monkeypatch):
    _base.cpu_bf16_supported.cache_clear()
    try:
        with monkeypatch.context() as m:
            m.setattr(_base, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
            assert not encoders.cpu_bf16_supported()
            assert encoders.resolve_precision("auto", "cpu") == "fp32"
            with pytest.raises(ValueError, match="no native bf16"):
                encoders.resolve_precision("bf16", "cpu")
    finally:
        _base.cpu_bf16_supported.cache_clear()  # the real CPU's answer for the other tests
    with pytest.raises(ValueError, match="CUDA or MPS"):
        encoders.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        encoders.resolve_precision("half", "cpu")
    expected = "bf16" if encoders.cpu_bf16_supported() else "fp32"
    assert encoders.resolve_precision("auto", "cpu") == expected


@pytest.mark.skipif(not encoders.cpu_bf16_supported(), reason="this CPU has no native bf16 (avx512_bf16/amx)")
def test_bf16_features_agree_with_fp32_on_real_he():
    enc = _efficientnet.build(device="cpu")
    assert enc.precision == "bf16"  # the default on this CPU
    x = _mob_patches(24, 224)
    bf16 = enc(x)
    fp32 = enc.configure(precision="fp32")(x)
    cos = (bf16 * fp32).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(fp32, axis=1)
    # documented in histology_features: cosine similarity above 0.97 per patch (measured min ~0.98)
    assert cos.min() > 0.97, cos.min()
    assert np.median(cos) > 0.99, np.median(cos)


def test_micro_batches_and_threads_keep_fp32_features_and_the_callers_setting():
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 224, 224), dtype=np.uint8)
    enc = _efficientnet.build(device="cpu").configure(precision="fp32")
    whole = encoders.TorchEncoder(enc.module, enc.spec, pool=enc.pool, precision="fp32", micro_batch=64)(x)
    before = torch.get_num_threads()
    one = encoders.TorchEncoder(
        enc.module, enc.spec, pool=enc.pool, precision="fp32", micro_batch=1, n_threads=max(1, before % 2 + 1)
    )(x)
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(one, whole, rtol=1e-4, atol=1e-5)
    auto = enc(x)
    assert 1 <= enc.micro_batch <= 64
    np.testing.assert_allclose(auto, whole, rtol=1e-4, atol=1e-5)
    # worker threads (one intra-op thread each) give the same numbers as one thread, micro-batch by micro-batch
    serial = encoders.TorchEncoder(
        enc.module, enc.spec, pool=enc.pool, precision="fp32", micro_batch=2, n_threads=1
    )
    parallel = encoders.TorchEncoder(
        enc.module, enc.spec, pool=enc.pool, precision="fp32", micro_batch=2, n_threads=2
    )
    np.testing.assert_array_equal(serial(x), parallel(x))
    assert torch.get_num_threads() == before


def test_histology_features_records_precision_and_honours_an_explicit_request():
    sdata = nk.datasets.synthetic_tissue(n_cells=400, random_state=0)
    t = sdata.tables["table"]
    keep = t.obs_names[:3]
    sdata.tables["table"] = t[keep].copy()
    before = torch.get_num_threads()
    nk.pp.histology_features(sdata, device="cpu", precision="fp32", n_threads=1)
    assert torch.get_num_threads() == before
    p = sdata.tables["table"].uns["X_efficientnet_lite0"]["params"]
    assert p["precision"] == "fp32" and p["precision_used"] == "fp32" and p["threads_used"] == 1
    nk.pp.histology_features(sdata, device="cpu", precision="fp32")  # same request: reused
    if encoders.cpu_bf16_supported():
        with pytest.raises(ValueError, match="precision_used"):
            nk.pp.histology_features(sdata, device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        nk.pp.histology_features(sdata, device="cpu", precision="int4", key_added="other")
    assert "other" not in sdata.tables["table"].obsm
    nk.pp.histology_features(sdata, backbone="stain", precision="bf16")  # no network: computed in float32
    assert sdata.tables["table"].uns["X_stain"]["params"]["precision_used"] == "fp32"
