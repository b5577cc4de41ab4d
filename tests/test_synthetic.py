"""nk.datasets.synthetic_tissue: layout, ground truth, determinism, spots, image, zarr, scale."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.spatial import cKDTree

from nichekd._core.spatial import resolve
from nichekd._core.table import spatial_coords
from nichekd.datasets import synthetic_tissue

N = 3000


@pytest.fixture(scope="module")
def cells():
    return synthetic_tissue(N, n_niches=4, n_genes=60, random_state=7, progress=False)


@pytest.fixture(scope="module")
def spots():
    return synthetic_tissue(
        N, n_niches=4, n_genes=60, mode="spot", image=False, random_state=7, progress=False
    )


def _image(sdata, level: int = 0) -> np.ndarray:
    """``(y, x, 3)`` uint8 array of one pyramid level (small images have a single level)."""
    element = sdata.images["synthetic_he"]
    arr = element[f"scale{level}"]["image"] if hasattr(element, "children") else element
    return arr.values.transpose(1, 2, 0)


def _record(sdata) -> tuple:
    """(image, shapes, kind, microns per unit, diameter in um, image microns per pixel) of the one library."""
    ctx = resolve(sdata)
    lib = ctx.library("synthetic")
    kind = ctx.table.uns["spatial"]["synthetic"]["metadata"]["kind"]
    mpp = ctx.pyramid("synthetic").levels[0].mpp if lib.image is not None else None
    return lib.image, lib.region, kind, lib.microns_per_unit, lib.diameter_um, mpp


def test_layout_cell_mode(cells):
    from spatialdata.transformations import Identity, Scale, get_transformation

    assert set(cells.images) == {"synthetic_he"}
    assert set(cells.shapes) == {"synthetic_cells"}
    table = cells.tables["table"]
    assert table.n_obs == N and table.n_vars == 60
    assert _record(cells) == ("synthetic_he", "synthetic_cells", "cell", 1.0, 10.0, 0.5)
    for key in ("true_niche", "cell_type", "region", "library"):
        assert isinstance(table.obs[key].dtype, pd.CategoricalDtype), key
    assert list(table.obs["true_niche"].cat.categories) == [f"niche_{k}" for k in range(4)]
    assert table.obs["cell_type"].nunique() >= 5
    image_tf = get_transformation(cells.images["synthetic_he"], to_coordinate_system="synthetic")
    assert isinstance(image_tf, Scale) and np.allclose(image_tf.scale, [0.5, 0.5])
    assert isinstance(get_transformation(cells.shapes["synthetic_cells"], "synthetic"), Identity)
    # coordinates are microns on the image: inside it, and the section is wider than tall (catches x/y swaps)
    xy = spatial_coords(table)
    height, width = _image(cells).shape[:2]
    assert xy.min() > 0 and xy[:, 0].max() < width * 0.5 and xy[:, 1].max() < height * 0.5
    assert width > height
    shapes = cells.shapes["synthetic_cells"]
    assert np.allclose(np.c_[shapes.geometry.x, shapes.geometry.y], xy)
    assert np.allclose(shapes["radius"], 5.0)
    # realistic density: about one cell per 100-200 um^2 of tissue
    dist, _ = cKDTree(xy).query(xy, k=2)
    assert 7.0 < np.median(dist[:, 1]) < 15.0


def test_uns_records_plain_parameters(cells):
    rec = cells.tables["table"].uns["synthetic"]
    assert rec["random_state"] == 7 and rec["n_cells"] == N and rec["mode"] == "cell" and rec["n_niches"] == 4
    assert rec["image_mpp"] == 0.5 and rec["image_downscaled"] is False

    def plain(v):
        if isinstance(v, dict):
            return all(plain(x) for x in v.values())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return isinstance(v, bool | int | float | str)

    assert plain(rec)
    comp = np.asarray(rec["niche_composition"])
    assert comp.shape == (4, len(rec["cell_types"])) and np.allclose(comp.sum(1), 1)


def test_counts_are_sparse_nonnegative_integers(cells):
    x = cells.tables["table"].X
    assert sparse.issparse(x) and x.format == "csr"
    assert x.data.min() >= 0 and np.array_equal(x.data, np.round(x.data))
    totals = np.asarray(x.sum(1)).ravel()
    assert 50 < totals.mean() < 400 and totals.min() > 0


def test_deterministic_and_seed_dependent(cells):
    again = synthetic_tissue(N, n_niches=4, n_genes=60, random_state=7, progress=False)
    a, b = cells.tables["table"], again.tables["table"]
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert a.obs["true_niche"].equals(b.obs["true_niche"]) and a.obs["cell_type"].equals(b.obs["cell_type"])
    assert np.array_equal(_image(cells), _image(again))
    other = synthetic_tissue(N, n_niches=4, n_genes=60, random_state=8, image=False, progress=False).tables[
        "table"
    ]
    assert not np.array_equal(other.obsm["spatial"][:100], a.obsm["spatial"][:100])
    # the image stream is separate: skipping the image leaves the cells and counts unchanged
    no_image = synthetic_tissue(N, n_niches=4, n_genes=60, random_state=7, image=False, progress=False)
    assert (no_image.tables["table"].X != a.X).nnz == 0
    assert not no_image.images


def test_niches_are_spatially_coherent(cells):
    table = cells.tables["table"]
    niche = table.obs["true_niche"].cat.codes.to_numpy()
    _, idx = cKDTree(spatial_coords(table)).query(spatial_coords(table), k=11)
    neighbours = niche[idx[:, 1:]]
    majority = np.array([np.bincount(row, minlength=4).argmax() for row in neighbours])
    assert (majority == niche).mean() > 0.8
    # every niche is present with a useful share
    assert np.bincount(niche, minlength=4).min() > 0.05 * N


def test_niches_differ_in_composition_and_expression(cells):
    table = cells.tables["table"]
    comp = pd.crosstab(table.obs["true_niche"], table.obs["cell_type"], normalize="index").to_numpy()
    tv = 0.5 * np.abs(comp[:, None, :] - comp[None, :, :]).sum(-1)
    assert tv[~np.eye(len(comp), dtype=bool)].min() > 0.2
    # niches share types: every niche's two most common types appear with >= 5% in another niche too
    top2 = np.argsort(-comp, axis=1)[:, :2]
    for k, types in enumerate(top2):
        assert any((np.delete(comp, k, axis=0)[:, t] > 0.05).any() for t in types)
    # each niche program is up in its niche
    x = table.X.toarray()
    lib = x.sum(1, keepdims=True)
    prog = table.var["niche_program"]
    for k, name in enumerate(table.obs["true_niche"].cat.categories):
        genes = (prog == name).to_numpy()
        score = x[:, genes].sum(1) / lib.ravel()
        inside = table.obs["true_niche"].cat.codes.to_numpy() == k
        assert score[inside].mean() > 1.5 * score[~inside].mean(), name


def test_spots_aggregate_the_cells_beneath(spots):
    cell_table = synthetic_tissue(
        N, n_niches=4, n_genes=60, image=False, random_state=7, progress=False
    ).tables["table"]
    table = spots.tables["table"]
    assert _record(spots) == (None, "synthetic_spots", "spot", 1.0, 55.0, None)
    centres = spatial_coords(table)
    # 100 um hexagonal pitch
    d, _ = cKDTree(centres).query(centres, k=2)
    assert np.allclose(d[:, 1], 100.0)
    cell_xy = spatial_coords(cell_table)
    dist = np.linalg.norm(cell_xy[None, :, :] - centres[:, None, :], axis=-1)
    inside = dist <= 27.5
    assert np.array_equal(inside.sum(1), table.obs["n_cells"].to_numpy())
    expected = sparse.csr_matrix(inside.astype(np.float32)) @ cell_table.X
    assert abs(expected - table.X).max() == 0
    frac = table.obsm["cell_type_fractions"]
    assert isinstance(frac, pd.DataFrame) and list(frac.index) == list(table.obs_names)
    assert list(frac.columns) == list(cell_table.obs["cell_type"].cat.categories)
    assert np.allclose(frac.sum(1), 1.0)
    onehot = pd.get_dummies(cell_table.obs["cell_type"]).to_numpy(float)
    assert np.allclose(frac.to_numpy(), (inside @ onehot) / inside.sum(1, keepdims=True))
    assert np.array_equal(table.obs["cell_type"].cat.codes.to_numpy(), frac.to_numpy().argmax(1))
    assert np.allclose(table.obsm["niche_fractions"].sum(1), 1.0)
    assert table.obs["n_cells"].min() >= 1 and 8 < table.obs["n_cells"].mean() < 30


def test_nuclei_darker_than_stroma(cells):
    table = cells.tables["table"]
    img = _image(cells).astype(float).sum(-1)
    xy = spatial_coords(table)
    at_cells = img[(xy[:, 1] / 0.5).astype(int), (xy[:, 0] / 0.5).astype(int)]
    # stroma: tissue pixels (not glass) at least 9 um away from every cell centre
    rng = np.random.default_rng(0)
    probe = rng.uniform([0, 0], [img.shape[1] * 0.5, img.shape[0] * 0.5], size=(20_000, 2))
    d, _ = cKDTree(xy).query(probe)
    probe = probe[(d > 9.0) & (d < 15.0)]
    stroma = img[(probe[:, 1] / 0.5).astype(int), (probe[:, 0] / 0.5).astype(int)]
    assert len(stroma) > 100
    assert np.median(at_cells) < np.median(stroma) - 100
    # H&E colours: nuclei purple (blue > green), stroma pink (red > green)
    rgb = _image(cells).astype(float)
    nuc = rgb[(xy[:, 1] / 0.5).astype(int), (xy[:, 0] / 0.5).astype(int)].mean(0)
    assert nuc[2] > nuc[1]
    pink = rgb[(probe[:, 1] / 0.5).astype(int), (probe[:, 0] / 0.5).astype(int)].mean(0)
    assert pink[0] > pink[1] + 30


def test_image_size_is_capped():
    sdata = synthetic_tissue(2000, n_genes=20, max_image_pixels=300_000, random_state=1, progress=False)
    rec = sdata.tables["table"].uns["synthetic"]
    img = _image(sdata)
    assert img.shape[0] * img.shape[1] <= 300_000
    assert rec["image_downscaled"] is True and rec["image_mpp"] > 0.5
    assert resolve(sdata).pyramid("synthetic").levels[0].mpp == pytest.approx(rec["image_mpp"])
    width_um, height_um = rec["tissue_size_um"]
    assert img.shape[1] * rec["image_mpp"] >= width_um and img.shape[0] * rec["image_mpp"] >= height_um


def test_zarr_round_trip(spots, tmp_path):
    from spatialdata import read_zarr
    from spatialdata.transformations import get_transformation

    sdata = synthetic_tissue(
        1000, n_genes=20, mode="spot", max_image_pixels=400_000, random_state=2, progress=False
    )
    sdata.write(tmp_path / "syn.zarr")
    back = read_zarr(tmp_path / "syn.zarr")
    a, b = sdata.tables["table"], back.tables["table"]
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    for key in ("cell_type_fractions", "niche_fractions"):
        pd.testing.assert_frame_equal(a.obsm[key], b.obsm[key])
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert (a.X != b.X).nnz == 0
    assert a.uns["synthetic"].keys() == b.uns["synthetic"].keys()
    for k, v in a.uns["synthetic"].items():
        assert np.array_equal(np.asarray(v), np.asarray(b.uns["synthetic"][k])), k
    assert _record(sdata) == _record(back)
    np.testing.assert_array_equal(resolve(sdata).xy_um, resolve(back).xy_um)
    levels = list(sdata.images["synthetic_he"].children)
    assert levels == list(back.images["synthetic_he"].children) and len(levels) >= 2
    for level in range(len(levels)):
        assert np.array_equal(_image(sdata, level), _image(back, level))
    assert sdata.shapes["synthetic_spots"].geom_equals(back.shapes["synthetic_spots"]).all()
    for name in ("synthetic_he", "synthetic_spots"):
        before, after = (get_transformation(s[name], "synthetic") for s in (sdata, back))
        assert np.allclose(
            before.to_affine_matrix(("x", "y"), ("x", "y")), after.to_affine_matrix(("x", "y"), ("x", "y"))
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "visium"}, ValueError, "mode"),
        ({"n_cells": 10}, ValueError, "n_cells"),
        ({"n_cells": 2000.0}, TypeError, "n_cells"),
        ({"mode": "spot", "n_cells": 200}, ValueError, "n_cells"),
        ({"n_niches": 1}, ValueError, "n_niches"),
        ({"mpp": -0.5}, ValueError, "mpp"),
        ({"mpp": float("nan")}, ValueError, "mpp"),
        ({"library_id": "a b"}, ValueError, "library_id"),
        ({"random_state": True}, TypeError, "random_state"),
        ({"max_image_pixels": 100}, ValueError, "max_image_pixels"),
        ({"stain_variation": -0.1}, ValueError, "stain_variation"),
        ({"stain_variation": float("nan")}, ValueError, "stain_variation"),
        ({"artifacts": 10.0}, ValueError, "artifacts"),
        ({"artifacts": True}, ValueError, "artifacts"),
    ],
)
def test_bad_parameters_raise(kwargs, error, match):
    args = {"n_cells": 2000, **kwargs}
    with pytest.raises(error, match=match):
        synthetic_tissue(args.pop("n_cells"), **args)


@pytest.mark.slow
def test_200k_cells_in_bounded_memory():
    tracemalloc.start()
    sdata = synthetic_tissue(200_000, image=False, random_state=0, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table = sdata.tables["table"]
    assert table.n_obs == 200_000 and sparse.issparse(table.X)
    assert peak < 3e9, f"peak traced memory {peak / 1e9:.2f} GB"
    assert table.obs["true_niche"].nunique() == 5


def test_neighbourhood_identifies_niche_better_than_own_morphology(cells):
    """The headline property: one cell's look is ambiguous, its neighbourhood's mix is not."""
    from sklearn.linear_model import LogisticRegression

    from nichekd._core.neighbors import estimate_radius, neighbour_mean, radius_neighbours

    table = cells.tables["table"]
    xy = spatial_coords(table)
    od = -np.log(np.clip(_image(cells).astype(np.float32) / 255, 1e-3, 1))
    oy, ox = np.mgrid[-6:7, -6:7]
    disc = oy**2 + ox**2 <= 36
    pc = (xy / 0.5).astype(int)
    rows = np.clip(pc[:, 1, None] + oy[disc], 0, od.shape[0] - 1)
    cols = np.clip(pc[:, 0, None] + ox[disc], 0, od.shape[1] - 1)
    patch = od[rows, cols]  # (n, pixels, 3)
    own = np.concatenate([patch.mean(1), patch.std(1), (patch[..., 0] > 0.6).mean(1, keepdims=True)], 1)
    own = (own - own.mean(0)) / own.std(0)
    nbrs = radius_neighbours(xy, estimate_radius(xy, 15))
    both = np.concatenate([own, neighbour_mean(own, nbrs)], 1)
    truth = table.obs["true_niche"].cat.codes.to_numpy()
    train = xy[:, 0] < np.median(xy[:, 0])  # spatial split: no neighbourhood leaks into the test half

    def accuracy(x):
        clf = LogisticRegression(max_iter=1000).fit(x[train], truth[train])
        return (clf.predict(x[~train]) == truth[~train]).mean()

    acc_own, acc_both = accuracy(own), accuracy(both)
    print(f"niche accuracy from own patch {acc_own:.2f}, with neighbourhood mean {acc_both:.2f}")
    assert acc_own < 0.6, "one cell's appearance should not identify its niche"
    assert acc_both > acc_own + 0.1


def test_strip_rendering_has_no_seams(cells, monkeypatch):
    """Rendering in strips of another height gives the same image: cells straddling strips are whole."""
    from nichekd.datasets import _he_render

    monkeypatch.setattr(_he_render, "STRIP_ROWS", 97)
    other = _image(synthetic_tissue(N, n_niches=4, n_genes=60, random_state=7, progress=False)).astype(int)
    diff = np.abs(other - _image(cells).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.fixture(scope="module")
def clean_and_nuisance():
    args = {"n_niches": 4, "n_genes": 30, "random_state": 3, "progress": False}
    clean = synthetic_tissue(2000, stain_variation=0.0, artifacts=0.0, **args)
    noisy = synthetic_tissue(2000, stain_variation=0.4, artifacts=1.5, **args)
    return clean, noisy


def test_nuisance_leaves_cells_and_counts_alone(clean_and_nuisance):
    clean, noisy = (s.tables["table"] for s in clean_and_nuisance)
    pd.testing.assert_frame_equal(clean.obs, noisy.obs)
    assert np.array_equal(clean.obsm["spatial"], noisy.obsm["spatial"]) and (clean.X != noisy.X).nnz == 0
    rec = noisy.uns["synthetic"]
    assert (rec["stain_variation"], rec["artifacts"]) == (0.4, 1.5)
    assert clean.uns["synthetic"]["stain_variation"] == 0.0


def _block_od(img: np.ndarray, block_px: int = 100) -> np.ndarray:
    """Mean optical density of tissue pixels in square blocks (blocks mostly tissue only)."""
    od = -np.log(np.clip(img.astype(np.float32) / 255, 1e-3, 1)).sum(-1)
    h, w = (s // block_px * block_px for s in od.shape[:2])
    blocks = od[:h, :w].reshape(h // block_px, block_px, w // block_px, block_px).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(blocks.shape[0] * blocks.shape[1], -1)
    tissue = (blocks > 0.3).mean(1) > 0.95
    return blocks[tissue].mean(1)


def test_nuisance_adds_stain_variation_red_cells_and_tears(clean_and_nuisance):
    clean, noisy = (_image(s).astype(float) for s in clean_and_nuisance)
    # staining/thickness: 50 um blocks of tissue vary much more in darkness than with the niches alone
    assert _block_od(noisy).std() > 1.5 * _block_od(clean).std()
    # red blood cells: saturated red pixels (haemorrhage) appear only with artifacts
    red = lambda im: ((im[..., 0] > 150) & (im[..., 1] < 60) & (im[..., 2] < 140)).mean()  # noqa: E731
    assert red(noisy) > 1e-3 and red(noisy) > 5 * red(clean)
    # still H&E: pink tissue overall (red > green), nothing saturated to black
    assert noisy[..., 0].mean() > noisy[..., 1].mean() + 30 and noisy.sum(-1).min() > 0


def test_nuisance_is_deterministic(clean_and_nuisance):
    _, noisy = clean_and_nuisance
    again = synthetic_tissue(2000, n_niches=4, n_genes=30, random_state=3, progress=False, stain_variation=0.4,
                             artifacts=1.5)  # fmt: skip
    assert np.array_equal(_image(again), _image(noisy))
