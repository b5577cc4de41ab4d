"""read_st, read_hest, read_anndata_image and the public-dataset loaders on the real samples."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import dataset_path
from fixtures_io import darkness, image_at
from PIL import Image

import nichekd as nk
from nichekd._core.spatial import resolve


def _mob(i: int = 1):
    d = dataset_path("st_mob")
    return d / f"MOB{i}.tsv.gz", d / f"alignment_table_MOB{i}.tsv", d / f"MOB{i}.jpg"


def test_read_st_mob1_counts_scale_and_tissue():
    counts, spots, image = _mob(1)
    sdata = nk.io.read_st(counts, spots, image)
    table = sdata.tables["table"]
    assert table.shape == (379, 1000)
    ctx = resolve(sdata)
    lib = ctx.library("MOB1")
    mpp = ctx.pyramid("MOB1").levels[0].mpp
    assert mpp == pytest.approx(6.3, abs=0.15)  # 200 um / ~31.7 px
    assert (lib.image, lib.microns_per_unit, lib.diameter_um, lib.technology) == ("MOB1_he", 1.0, 100.0, "st")
    np.testing.assert_allclose(ctx.xy_um, table.obsm["spatial"])
    align = pd.read_csv(spots, sep="\t")
    off = align[align["selected"] == 0][["pixel_x", "pixel_y"]].to_numpy() * mpp
    on_dark = darkness(image_at(sdata, "MOB1", table.obsm["spatial"])).mean()
    assert on_dark > darkness(image_at(sdata, "MOB1", off)).mean() + 20
    raw = pd.read_csv(counts, sep="\t", index_col=0)
    np.testing.assert_array_equal(table.X.toarray(), raw.loc[table.obs_names].to_numpy())


def test_read_st_bad_inputs(tmp_path):
    counts, spots, image = _mob(1)
    raw = pd.read_csv(counts, sep="\t", index_col=0)
    renamed = raw.copy()
    renamed.index = "s" + renamed.index
    renamed.to_csv(tmp_path / "renamed.tsv", sep="\t")
    with pytest.raises(ValueError, match="no position"):
        nk.io.read_st(tmp_path / "renamed.tsv", spots, image)
    (raw * 0.5).to_csv(tmp_path / "norm.tsv", sep="\t")
    with pytest.raises(ValueError, match="non-integer"):
        nk.io.read_st(tmp_path / "norm.tsv", spots, image)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match="blank"):
        nk.io.read_st(counts, spots, tmp_path / "black.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(
        tmp_path / "s.png"
    )
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_st(counts, spots, tmp_path / "s.png")
    with pytest.raises(FileNotFoundError, match="MOB9.jpg"):
        nk.io.read_st(counts, spots, image.with_name("MOB9.jpg"))
    with pytest.raises(ValueError, match="mpp"):
        nk.io.read_st(counts, spots, image, mpp=0)


def test_st_mob_dataset():
    root = dataset_path("st_mob").parent
    sdata = nk.datasets.st_mob(data_dir=root, sections=("MOB1", "MOB3"))
    table = sdata.tables["table"]
    assert table.n_obs == 379 + 438
    ctx = resolve(sdata)
    assert sorted(ctx.libraries) == ["MOB1", "MOB3"]
    assert [ctx.library(s).image for s in ("MOB1", "MOB3")] == ["MOB1_he", "MOB3_he"]
    assert dict(table.obs.groupby("library", observed=True)["animal"].first()) == {"MOB1": "1", "MOB3": "2"}
    assert set(sdata.images) == {"MOB1_he", "MOB3_he"}
    with pytest.raises(ValueError, match="Unknown sections"):
        nk.datasets.st_mob(data_dir=root, sections=("MOB7",))
    with pytest.raises(FileNotFoundError, match="NICHEKD_DATA_DIR"):
        nk.datasets.st_mob(data_dir=root / "missing")


def test_read_hest_row_column_convention():
    d = dataset_path("xenium_hest_tiny")
    with pytest.warns(UserWarning, match="no pixel size"):
        sdata = nk.io.read_hest(d / "NCBI858.h5ad", d / "NCBI858.jpg")
    table = sdata.tables["table"]
    assert table.shape == (200, 338)
    ctx = resolve(sdata)
    lib = ctx.library("NCBI858")
    assert table.uns["spatial"]["NCBI858"]["metadata"]["kind"] == "cell" and lib.diameter_um == 10.0
    assert ctx.pyramid("NCBI858").levels[0].mpp == pytest.approx(0.5) and lib.image == "NCBI858_he"
    raw = ad.read_h5ad(d / "NCBI858.h5ad")
    np.testing.assert_allclose(table.obsm["spatial"][:, 1], raw.obs["x_pixel"] * 0.5)  # x_pixel is the row
    img = np.asarray(Image.open(d / "NCBI858.jpg").convert("L"), dtype=float)
    background = 255 - np.median(img)
    dark = darkness(image_at(sdata, "NCBI858", table.obsm["spatial"]))
    assert (dark > background + 20).mean() > 0.8
    # the other axis convention puts cells off the 1431 x 1249 image: refused, not silently misplaced
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_hest(d / "NCBI858.h5ad", d / "NCBI858.jpg", mpp=0.5, xy_order="xy")


def test_read_anndata_image_bad_inputs(tmp_path):
    d = dataset_path("xenium_hest_tiny")
    adata = ad.read_h5ad(d / "NCBI858.h5ad")
    adata.obsm["spatial"] = adata.obs[["y_pixel", "x_pixel"]].to_numpy()
    with pytest.raises(KeyError, match="obsm\\['nope'\\]"):
        nk.io.read_anndata_image(adata, d / "NCBI858.jpg", mpp=0.5, diameter_um=10, spatial_key="nope")
    norm = adata.copy()
    norm.X = np.log1p(norm.X.astype(float))
    with pytest.raises(ValueError, match="non-integer"):
        nk.io.read_anndata_image(norm, d / "NCBI858.jpg", mpp=0.5, diameter_um=10)
    neg = adata.copy()
    neg.X = neg.X.astype(float) - 1
    with pytest.raises(ValueError, match="negative"):
        nk.io.read_anndata_image(neg, d / "NCBI858.jpg", mpp=0.5, diameter_um=10)
    far = adata.copy()
    far.obsm["spatial"] = far.obsm["spatial"] + 5000
    with pytest.raises(ValueError, match="outside the image"):
        nk.io.read_anndata_image(far, d / "NCBI858.jpg", mpp=0.5, diameter_um=10)
    before = adata.copy()
    sdata = nk.io.read_anndata_image(adata, d / "NCBI858.jpg", mpp=0.5, diameter_um=10, library_id="x")
    assert sdata.tables["table"].n_obs == 200
    assert list(adata.obs.columns) == list(before.obs.columns) and adata.uns.keys() == before.uns.keys()


def test_visium_hd_kidney_crop_dataset():
    root = dataset_path("visium_hd_kidney_crop").parent
    sdata = nk.datasets.visium_hd_kidney_crop(data_dir=root)
    table = sdata.tables["table"]
    assert table.shape == (15611, 2012)
    ctx = resolve(sdata)
    assert ctx.pyramid("kidney").levels[0].mpp == pytest.approx(2.0, abs=0.01)
    assert ctx.library("kidney").diameter_um == 8.0
    dark = darkness(image_at(sdata, "kidney", table.obsm["spatial"]))
    tissue = table.obs["he_tissue"].to_numpy().astype(bool)
    assert dark[tissue].mean() > dark[~tissue].mean() + 20
