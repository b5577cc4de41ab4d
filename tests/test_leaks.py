"""No leak by construction, on the README's pipeline as written (features, split, teacher, student, baselines,
all with their defaults; only the encoder is the fast stain one):

- changing every test-strip input (counts, image pixels, features) leaves the trained student bit-identical,
  and every training target and training-cell label (student and baselines) unchanged;
- changing only the buffer cells' features leaves every test label unchanged (student and baselines);
- changing a train-strip input does change the student (the check can fail).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse

import nichekd as nk
from nichekd._core.spatial import resolve
from nichekd._core.table import spatial_coords
from nichekd.io._build import make_image

K = 3
BASELINES = ("leiden", "kmeans", "teacher")
# the pipeline below, call by call, as the README's quickstart writes it
PIPELINE = (
    "pp.histology_features",
    "pp.spatial_split",
    "tl.teacher_niches",
    "tl.distill",
    "tl.histology_baseline",
    "tl.evaluate",
)


def test_the_pipeline_is_the_readmes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    calls = re.findall(r"nk\.((?:pp|tl)\.\w+)\(", block)
    assert tuple(dict.fromkeys(calls)) == PIPELINE


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


def _run(side: str | None, *, features_only: bool = False):
    """The README's pipeline; ``side``: the split part whose inputs are replaced by noise (None: clean).

    ``features_only``: only that part's features are replaced (after they are computed), not its counts or
    pixels.
    """
    torch.set_num_threads(1)
    sdata = nk.datasets.synthetic_tissue(1500, n_niches=K, random_state=0, progress=False)
    t = sdata["table"]
    nk.pp.histology_features(sdata, backbone="stain", device="cpu")
    torch.set_num_threads(1)
    nk.pp.spatial_split(sdata)
    if side is not None:
        rng = np.random.default_rng(1)
        rows = np.flatnonzero((t.obs["split"] == side).to_numpy())
        if not features_only:
            xy = spatial_coords(t)
            x = sparse.lil_matrix(t.X)  # counts of that part
            x[rows] = rng.poisson(3.0, size=(len(rows), t.n_vars)).astype(np.float32)
            t.X = sparse.csr_matrix(x)
            # image pixels of that part's cells (up to the border: the buffer keeps the other part's patches out)
            half = t.uns["split"]["params"]["buffer_um"]
            _perturb_band(sdata, xy[rows, 1].min() - half, xy[rows, 1].max() + half, rng)
            nk.pp.histology_features(sdata, backbone="stain", device="cpu", overwrite=True)
            torch.set_num_threads(1)
        # and the features themselves (whatever produced them)
        t.obsm["X_stain"][rows] = rng.normal(size=(len(rows), t.obsm["X_stain"].shape[1])).astype(np.float32)
    nk.tl.teacher_niches(sdata, n_niches=K, progress=False)
    model = nk.tl.distill(sdata, epochs=1, progress=False, device="cpu")
    for method in BASELINES:
        nk.tl.histology_baseline(sdata, method=method, n_niches=K)
    nk.tl.histology_baseline(sdata, method="kmeans", n_niches=K, neighbourhood=True, key_added="he_kmeans_nb")
    weights = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    return weights, t


LABELS = ("student_niche", *(f"he_{m}_niche" for m in BASELINES), "he_kmeans_nb")


def _labels(t, key: str, part: str) -> np.ndarray:
    return t.obs[key].astype(str).to_numpy()[(t.obs["split"] == part).to_numpy()]


@pytest.fixture(scope="module")
def clean():
    return _run(None)


@pytest.fixture(scope="module")
def buffer_noise():
    return _run("buffer", features_only=True)


def test_perturbing_every_test_input_leaves_training_unchanged(clean):
    weights, table = clean
    perturbed, ptable = _run("test")
    assert table.uns["teacher_niche"]["params"]["fitted_on"] == "outside test"
    # the perturbation reached the test strip
    test = (table.obs["split"] == "test").to_numpy()
    assert not np.allclose(table.obsm["X_stain"][test], ptable.obsm["X_stain"][test])
    # the training side saw exactly the same inputs and targets (buffer cells may read test pixels: unused)
    train = (table.obs["split"] == "train").to_numpy()
    np.testing.assert_array_equal(table.obsm["X_stain"][train], ptable.obsm["X_stain"][train])
    np.testing.assert_array_equal(
        table.obsm["teacher_niche_logits"][train], ptable.obsm["teacher_niche_logits"][train]
    )
    assert weights.keys() == perturbed.keys()
    for k in weights:
        assert torch.equal(weights[k], perturbed[k]), k
    for key in LABELS:  # no training-cell label of the student or a baseline moves
        np.testing.assert_array_equal(
            _labels(table, key, "train"), _labels(ptable, key, "train"), err_msg=key
        )


def test_perturbing_buffer_features_leaves_every_test_label_unchanged(clean, buffer_noise):
    _, table = clean
    _, ptable = buffer_noise
    buffer = (table.obs["split"] == "buffer").to_numpy()
    assert buffer.sum() > 20 and not np.allclose(
        table.obsm["X_stain"][buffer], ptable.obsm["X_stain"][buffer]
    )
    for key in LABELS:
        np.testing.assert_array_equal(_labels(table, key, "test"), _labels(ptable, key, "test"), err_msg=key)


def test_the_transductive_baseline_does_see_the_buffer(clean, buffer_noise):
    """The check above can fail: a baseline fitted on every cell moves when buffer features do."""
    _, table = clean
    _, ptable = buffer_noise
    moved = []
    for t in (table, ptable):
        nk.tl.histology_baseline(
            t, method="kmeans", n_niches=K, neighbourhood=True, split_key=None, key_added="he_transductive"
        )
        moved.append(t.obs["he_transductive"].astype(str).to_numpy())
    test = (table.obs["split"] == "test").to_numpy()
    assert table.uns["he_transductive"]["params"]["fitted_on"] == "all"
    assert not np.array_equal(moved[0][test], moved[1][test])


def test_perturbing_train_inputs_changes_the_student(clean):
    weights, _ = clean
    perturbed, _ = _run("train")
    assert any(not torch.equal(weights[k], perturbed[k]) for k in weights)
