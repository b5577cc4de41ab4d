"""No leak by construction: changing every test-strip input (counts, image pixels, features) leaves the trained
student bit-identical; changing a train-strip input does not (the check can fail)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

import nichekd as nk
from nichekd._elements import resolve
from nichekd._layout import make_image, spatial_coords

K = 3


def _perturb_band(sdata, y_lo: float, y_hi: float, rng: np.random.Generator) -> None:
    """Replace the image pixels whose centres lie in ``y_lo <= y < y_hi`` (microns) by noise, at every level."""
    lib = str(sdata["table"].obs["library"].iloc[0])
    ctx = resolve(sdata)
    name = ctx.library(lib).image
    level = ctx.pyramid(lib).levels[0]
    img = np.asarray(level.data.values).copy()  # (c, y, x)
    rows_um = level.px_to_um(np.stack([np.zeros(img.shape[1]), np.arange(img.shape[1]) + 0.5], 1))[:, 1]
    band = (rows_um >= y_lo) & (rows_um < y_hi)
    img[:, band] = rng.integers(0, 256, size=img[:, band].shape, dtype=np.uint8)
    offset = tuple(level.to_um[:2, 2])
    sdata.images[name] = make_image(img, level.mpp, lib, offset_um=offset)


def _train(side: str | None):
    """The whole pipeline; ``side`` = the split side whose every input is replaced by noise (None: clean)."""
    torch.set_num_threads(1)
    sdata = nk.datasets.synthetic_tissue(1500, n_niches=K, random_state=0, progress=False)
    t = sdata["table"]
    nk.pp.histology_features(sdata, backbone="stain", key_added="he", device="cpu")
    torch.set_num_threads(1)
    nk.pp.spatial_split(sdata, features_key="he")
    if side is not None:
        rng = np.random.default_rng(1)
        rows = np.flatnonzero((t.obs["split"] == side).to_numpy())
        xy = spatial_coords(t)
        # counts of that side
        x = sparse.lil_matrix(t.X)
        x[rows] = rng.poisson(3.0, size=(len(rows), t.n_vars)).astype(np.float32)
        t.X = sparse.csr_matrix(x)
        # image pixels of that side's cells (up to the border: the buffer keeps the other side's patches out)
        half = t.uns["split"]["params"]["buffer_um"]
        _perturb_band(sdata, xy[rows, 1].min() - half, xy[rows, 1].max() + half, rng)
        nk.pp.histology_features(sdata, backbone="stain", key_added="he", device="cpu", overwrite=True)
        torch.set_num_threads(1)
        # and the features themselves (whatever produced them)
        t.obsm["he"][rows] = rng.normal(size=(len(rows), t.obsm["he"].shape[1])).astype(np.float32)
    nk.tl.teacher_niches(t, n_niches=K, split_key="split", progress=False)
    model = nk.tl.distill(sdata, features_key="he", epochs=1, progress=False, device="cpu")
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}, t


@pytest.fixture(scope="module")
def clean():
    return _train(None)


def test_perturbing_every_test_input_leaves_the_student_unchanged(clean):
    weights, table = clean
    perturbed, ptable = _train("test")
    # the perturbation reached the test strip
    test = (table.obs["split"] == "test").to_numpy()
    assert not np.allclose(table.obsm["he"][test], ptable.obsm["he"][test])
    # the training side saw exactly the same inputs and targets (buffer cells may read test pixels: unused)
    train = (table.obs["split"] == "train").to_numpy()
    np.testing.assert_array_equal(table.obsm["he"][train], ptable.obsm["he"][train])
    np.testing.assert_array_equal(
        table.obsm["teacher_niche_logits"][train], ptable.obsm["teacher_niche_logits"][train]
    )
    assert weights.keys() == perturbed.keys()
    for k in weights:
        assert torch.equal(weights[k], perturbed[k]), k


def test_perturbing_train_inputs_changes_the_student(clean):
    weights, _ = clean
    perturbed, _ = _train("train")
    assert any(not torch.equal(weights[k], perturbed[k]) for k in weights)
