"""Plots: each function draws on small data, saves, keeps niche colours consistent and rejects bad input."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import Collection
from matplotlib.colors import to_rgba
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

import nichekd as nk
from nichekd.io._build import build_library
from nichekd.pl import _spatial

NICHES = ["N0", "N1", "N2", "N3"]


def _library(name: str, seed: int, *, he_only: bool = False):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2) * 40.0 + 30
    xy = grid + rng.normal(0, 2, grid.shape)
    n = len(xy)
    image = np.full((210, 210, 3), 235, np.uint8)
    image[40:170, 40:170] = (214, 160, 200)
    counts = ad.AnnData(rng.poisson(1, (n, 4)).astype(np.float32))
    counts.obs_names = [f"{name}_{i}" for i in range(n)]
    sdata = build_library(
        counts,
        library=name,
        xy_um=xy,
        diameter_um=30,
        image=image,
        mpp=2.0,
        kind="tile" if he_only else "spot",
    )
    obs = sdata.tables["table"].obs
    truth = np.where(xy[:, 0] < 200, "N0", np.where(xy[:, 1] < 200, "N1", "N3"))
    student = truth.copy()
    student[rng.random(n) < 0.1] = "N2"
    obs["teacher_niche"] = pd.Categorical([np.nan] * n if he_only else truth, categories=NICHES)
    obs["student_niche"] = pd.Categorical(student, categories=NICHES[::-1])  # other order, same names
    obs["student_niche_entropy"] = rng.random(n)
    obs["cell_type"] = pd.Categorical(rng.choice(["T", "B", "Fibro"], n))
    split = np.where(xy[:, 1] > 220, "test", np.where(xy[:, 1] > 170, "buffer", "train"))
    obs["split"] = pd.Categorical([np.nan] * n if he_only else split, categories=["buffer", "test", "train"])
    return sdata


@pytest.fixture()
def sdata():
    """Two sections with spots plus an H&E-only section with predicted tiles, in one object."""
    import spatialdata as sd

    parts = [_library("s1", 0), _library("s2", 1), _library("he", 2, he_only=True)]
    return sd.concatenate(parts, concatenate_tables=True, uns_merge="unique")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _drawn_colours(ax) -> np.ndarray:
    """RGBA (0-1) of every shape patch and every image pixel on the axes (datashader draws an image)."""
    cols = [
        c.get_facecolors() for c in ax.collections if isinstance(c, Collection) and len(c.get_facecolors())
    ]
    for im in ax.images:
        arr = np.ma.getdata(im.get_array())
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr.reshape(-1, arr.shape[-1])
            arr = arr / 255.0 if arr.dtype == np.uint8 else arr
            cols.append(np.c_[arr[:, :3], np.ones(len(arr))] if arr.shape[1] == 3 else arr)
    return np.concatenate(cols) if cols else np.empty((0, 4))


def _has_colour(ax, colour: str) -> bool:
    return bool(np.isclose(_drawn_colours(ax)[:, :3], to_rgba(colour)[:3], atol=0.01).all(1).any())


def _scalebar(ax) -> tuple[str, float]:
    """Label and length (in data units) of the panel's scale bar."""
    bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1, "one scale bar per panel"
    return bars[0].txt_label.get_text(), bars[0].size_bar.get_children()[0].get_width()


# ------------------------------------------------------------------------------------------------ palette


def test_palette_is_fixed_by_name_across_sets_and_orders():
    a = nk.pl.niche_palette(["N3", "N0", "N1"])
    b = nk.pl.niche_palette(["N1", "N3", "N7", "N10"])
    assert a["N3"] == b["N3"] and a["N1"] == b["N1"]
    assert len(set(nk.pl.niche_palette([f"N{i}" for i in range(20)]).values())) == 20
    assert len(set(nk.pl.niche_palette([f"N{i}" for i in range(30)]).values())) == 30
    named = nk.pl.niche_palette(["tumour", "stroma"])
    assert named == nk.pl.niche_palette(["stroma", "tumour"])


def test_set_niche_colors_shares_colours_between_keys(sdata):
    table = sdata.tables["table"]
    mapping = nk.pl.set_niche_colors(table, keys=["teacher_niche", "student_niche"])
    for key in ("teacher_niche", "student_niche"):
        cats = list(table.obs[key].cat.categories)
        assert [mapping[c] for c in cats] == table.uns[f"{key}_colors"]
    teacher = dict(
        zip(table.obs["teacher_niche"].cat.categories, table.uns["teacher_niche_colors"], strict=True)
    )
    student = dict(
        zip(table.obs["student_niche"].cat.categories, table.uns["student_niche_colors"], strict=True)
    )
    assert teacher == student
    custom = nk.pl.set_niche_colors(table, keys="teacher_niche", palette={"N1": "black"})
    assert custom["N1"] == "#000000" and custom["N0"] == mapping["N0"]
    with pytest.raises(ValueError, match="colours"):
        nk.pl.set_niche_colors(table, keys="teacher_niche", palette=["red"])


# ------------------------------------------------------------------------------------------------ niche map


@pytest.mark.parametrize("method", ["matplotlib", "datashader"])
def test_niche_map_draws_same_colours_in_every_panel(sdata, tmp_path, method):
    out = tmp_path / "map.png"
    axes = nk.pl.niche_map(sdata, library="s1", method=method, show=False, save=out)
    assert isinstance(axes, list) and len(axes) == 2
    assert out.stat().st_size > 10_000
    pal = nk.pl.niche_palette(NICHES)
    for ax in axes:
        assert _has_colour(ax, pal["N0"]) and _has_colour(ax, pal["N3"])
        assert ax.images, "the H&E is drawn under the niches"
        assert _scalebar(ax)[0] == "50 µm"
    assert _has_colour(axes[1], pal["N2"]) and not _has_colour(axes[0], pal["N2"])  # only the student has N2
    if method == "datashader":  # rasterised: one image for the H&E, one for the spots, no patches
        assert len(axes[0].images) == 2 and not any(len(c.get_facecolors()) > 50 for c in axes[0].collections)
    legend = axes[0].figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["N0", "N1", "N2", "N3"]
    table = sdata.tables["table"]
    assert table.uns["teacher_niche_colors"] == [pal[c] for c in table.obs["teacher_niche"].cat.categories]
    assert table.uns["student_niche_colors"] == [pal[c] for c in table.obs["student_niche"].cat.categories]


def test_niche_map_crops_to_the_tissue(sdata):
    # the image reaches 420 um; spots of library s1 lie within 30-390 um (+ radius 15): the panel shows them,
    # not the empty slide around them
    xy = sdata.tables["table"].obsm["spatial"][sdata.tables["table"].obs["library"] == "s1"]
    ax = nk.pl.niche_map(sdata, keys="teacher_niche", library="s1", show=False)
    (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
    assert y0 < y1, "y points down, as in the image"
    lo, hi = xy.min(0) - 15, xy.max(0) + 15
    assert x0 <= lo[0] and x1 >= hi[0] and y0 <= lo[1] and y1 >= hi[1]
    margin = 0.1 * (hi - lo).max()
    assert x0 >= lo[0] - margin and x1 <= hi[0] + margin and y0 >= lo[1] - margin and y1 <= hi[1] + margin


def test_niche_map_large_panels_use_datashader(sdata, monkeypatch):
    monkeypatch.setattr(_spatial, "DATASHADER_MIN_OBS", 50)  # the fixture's 100 spots count as large
    ax = nk.pl.niche_map(sdata, keys="teacher_niche", library="s1", show=False)
    assert len(ax.images) == 2 and _has_colour(ax, nk.pl.niche_palette(NICHES)["N0"])


def test_niche_map_all_libraries_split_and_he_only_tiles(sdata):
    axes = nk.pl.niche_map(sdata, show_split=True, show=False)
    assert len(axes) == 6  # 3 libraries x 2 keys
    titles = [a.get_title() for a in axes]
    assert "he: student_niche" in titles and "s2: teacher_niche" in titles
    labels = [t.get_text() for t in axes[0].figure.legends[0].get_texts()]
    assert {"buffer", "test region", "no label"} <= set(labels)
    he_teacher = axes[titles.index("he: teacher_niche")]
    assert any("no teacher_niche" in t.get_text() for t in he_teacher.texts)
    assert _has_colour(axes[titles.index("he: student_niche")], nk.pl.niche_palette(NICHES)["N1"])


@pytest.mark.parametrize("method", ["matplotlib", "datashader"])
def test_niche_map_square_tiles(sdata, method):
    # H&E-only predictions come as square tiles (polygons), not circles
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    circles = sdata.shapes["he_tiles"]
    squares = shapely.box(
        circles.geometry.x - 20, circles.geometry.y - 20, circles.geometry.x + 20, circles.geometry.y + 20
    )
    tiles = gpd.GeoDataFrame(geometry=squares, index=circles.index)
    sdata.shapes["he_tiles"] = ShapesModel.parse(tiles, transformations={"he": Identity()})
    ax = nk.pl.niche_map(sdata, keys="student_niche", library="he", method=method, show=False)
    pal = nk.pl.niche_palette(NICHES)
    assert all(_has_colour(ax, pal[n]) for n in NICHES)
    assert _scalebar(ax)[0] == "50 µm"


def test_niche_map_groups_and_bare_anndata(sdata):
    table = sdata.tables["table"]
    ax = nk.pl.niche_map(table, keys="teacher_niche", library="s2", groups="N1", show=False)
    pal = nk.pl.niche_palette(NICHES)
    assert _has_colour(ax, pal["N1"]) and not _has_colour(ax, pal["N0"])
    assert [t.get_text() for t in ax.figure.legends[0].get_texts()] == ["N1", "other"]
    # a table that records no units: the error names the argument, which then draws in those units
    bare = ad.AnnData(
        obs=table.obs[["teacher_niche"]].iloc[:100].copy(), obsm={"spatial": table.obsm["spatial"][:100] * 4}
    )
    with pytest.raises(ValueError, match="microns_per_unit="):
        nk.pl.niche_map(bare, keys="teacher_niche", show=False)
    ax = nk.pl.niche_map(bare, keys="teacher_niche", microns_per_unit=0.25, show=False)
    assert _has_colour(ax, pal["N0"]) and not ax.images
    assert _scalebar(ax) == ("50 µm", pytest.approx(200.0))  # 50 um = 200 units of 0.25 um


def test_niche_map_leaves_the_elements_untouched(sdata):
    from spatialdata.transformations import get_transformation

    def registrations():
        elements = {**sdata.images, **sdata.shapes}
        return {name: get_transformation(el, get_all=True) for name, el in elements.items()}

    before, spots = registrations(), sdata.shapes["s1_spots"].copy()
    nk.pl.niche_map(sdata, library=["s1", "he"], method="datashader", show=False)
    nk.pl.niche_map(sdata, library="s2", method="matplotlib", show=False)
    assert registrations() == before
    assert sdata.shapes["s1_spots"].geometry.geom_equals(spots.geometry).all()


def test_niche_map_surfaces_spatialdata_plot_errors(sdata, monkeypatch):
    import spatialdata_plot.pl.basic as basic

    def broken(*args, **kwargs):
        raise RuntimeError("simulated spatialdata-plot failure")

    monkeypatch.setattr(basic, "_render_shapes", broken)
    with pytest.raises(RuntimeError, match="simulated spatialdata-plot failure"):  # no other renderer
        nk.pl.niche_map(sdata, keys="teacher_niche", library="s1", show=False)


def test_niche_map_user_axes_and_show(sdata, tmp_path):
    fig, axs = plt.subplots(1, 2)
    out = nk.pl.niche_map(sdata, library="s1", ax=axs, show=False)
    assert out == list(axs)
    assert nk.pl.niche_map(sdata, keys="teacher_niche", library="s1", show=True) is None


def test_niche_map_rejects_bad_input_and_leaves_data_untouched(sdata):
    table = sdata.tables["table"]
    before_obs, before_uns = table.obs.copy(), set(table.uns)
    with pytest.raises(KeyError, match="no_such_key"):
        nk.pl.niche_map(sdata, keys=["teacher_niche", "no_such_key"], show=False)
    with pytest.raises(KeyError, match="library"):
        nk.pl.niche_map(sdata, library="nope", show=False)
    with pytest.raises(ValueError, match="groups"):
        nk.pl.niche_map(sdata, groups=["N9"], show=False)
    with pytest.raises(ValueError, match="numeric"):
        nk.pl.niche_map(sdata, keys="student_niche_entropy", show=False)
    with pytest.raises(KeyError, match="image"):
        nk.pl.niche_map(sdata, image_key="missing_he", show=False)
    with pytest.raises(ValueError, match="extension"):
        nk.pl.niche_map(sdata, save="figure_without_extension", show=False)
    shifted = sdata.shapes["s1_spots"].copy()
    shifted.geometry = shifted.geometry.translate(5_000, 5_000)  # coordinates off the image
    sdata.shapes["s1_spots"] = shifted
    del table.obsm["spatial"]  # positions come from the shapes element
    with pytest.raises(ValueError, match="lie on|lie off"):
        nk.pl.niche_map(sdata, library="s1", show=False)
    pd.testing.assert_frame_equal(table.obs, before_obs)
    assert set(table.uns) == before_uns


@pytest.mark.realdata
def test_niche_map_spatialdata_io_visium_in_pixels():
    """A spatialdata-io Visium object, as read: drawn in full-resolution pixels, scale bar in microns."""
    from conftest import dataset_path
    from spatialdata.transformations import get_transformation

    path = dataset_path("visium_tiny")
    spatialdata_io = pytest.importorskip("spatialdata_io")
    sdata = spatialdata_io.visium(path, dataset_id="tiny")
    table = sdata.tables["table"]
    table.obs["half"] = pd.Categorical(np.where(table.obs["array_col"] < 64, "left", "right"))
    with pytest.warns(UserWarning, match="placeholder"):  # the all-black hires image is skipped
        ax = nk.pl.niche_map(sdata, keys="half", show=False)
    spots = sdata.shapes["tiny"]  # identity to the coordinate system 'tiny': full-resolution pixels
    xy, radius = np.c_[spots.geometry.x, spots.geometry.y], float(spots["radius"].iloc[0])
    (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
    lo, hi = xy.min(0) - radius, xy.max(0) + radius
    assert x0 <= lo[0] and x1 >= hi[0] and y0 <= lo[1] and y1 >= hi[1]  # every spot is in view
    margin = 0.1 * (hi - lo).max()
    assert x0 >= lo[0] - margin and x1 <= hi[0] + margin and y0 >= lo[1] - margin and y1 <= hi[1] + margin
    assert len(ax.images) == 1 and np.ma.getdata(ax.images[0].get_array()).std() > 0.01  # the lowres H&E
    pal = nk.pl.niche_palette(["left", "right"])
    assert _has_colour(ax, pal["left"]) and _has_colour(ax, pal["right"])
    label, length = _scalebar(ax)
    value, unit = label.split()
    assert unit in ("µm", "mm")
    # Space Ranger's spot_diameter_fullres (the drawn circle) spans 65 um (10x's definition)
    microns_per_pixel = 65.0 / (2 * radius)
    assert length * microns_per_pixel == pytest.approx(float(value) * (1000 if unit == "mm" else 1), rel=0.02)
    # another coordinate system, in lowres pixels (the shapes reach it through a scale): same view, scaled
    scale = get_transformation(spots, to_coordinate_system="tiny_downscaled_lowres").scale[0]
    low = nk.pl.niche_map(sdata, keys="half", coordinate_system="tiny_downscaled_lowres", show=False)
    np.testing.assert_allclose(
        np.r_[low.get_xlim(), low.get_ylim()], np.r_[ax.get_xlim(), ax.get_ylim()] * scale
    )
    label_low, length_low = _scalebar(low)
    assert label_low == label and length_low == pytest.approx(length * scale)
    assert _has_colour(low, pal["left"]) and _has_colour(low, pal["right"])


# ------------------------------------------------------------------------------------------------ uncertainty


def test_uncertainty_map(sdata, tmp_path):
    out = tmp_path / "entropy.pdf"
    axes = nk.pl.uncertainty(sdata, show_split=True, show=False, save=out, method="matplotlib")
    assert len(axes) == 3 and out.exists()
    assert len(axes[0].figure.axes) == 4  # three panels and a colorbar
    assert len(np.unique(_drawn_colours(axes[0]).round(3), axis=0)) > 20  # a continuous scale, not categories
    with pytest.raises(ValueError, match="numeric"):
        nk.pl.uncertainty(sdata, key="teacher_niche", show=False)
    with pytest.raises(ValueError, match="colormap"):
        nk.pl.uncertainty(sdata, cmap="not_a_cmap", show=False)


# ------------------------------------------------------------------------------------------------ summaries


def test_composition_bar_heatmap_and_dataframe(sdata, tmp_path):
    ax = nk.pl.composition(sdata, show=False, save=tmp_path / "c.png")
    assert (tmp_path / "c.png").exists()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["N0", "N1", "N3"]
    widths = np.array([p.get_width() for p in ax.patches]).reshape(3, 3)  # cell types x niches
    np.testing.assert_allclose(widths.sum(0), 1.0)
    ax = nk.pl.composition(sdata, kind="heatmap", show=False)
    assert ax.collections  # the heatmap mesh
    df = pd.DataFrame({"T": [5, 0], "B": [5, 10]}, index=["N0", "N1"])
    ax = nk.pl.composition(df, show=False)
    np.testing.assert_allclose(sorted(p.get_width() for p in ax.patches), [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="kind"):
        nk.pl.composition(sdata, kind="pie", show=False)
    with pytest.raises(KeyError, match="celltype"):
        nk.pl.composition(sdata, cell_type_key="celltype", show=False)


def test_compare_compositions_annotates_jsd(sdata):
    table = sdata.tables["table"]
    ax = nk.pl.compare_compositions(sdata, split="test", show=False)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 2 and all(t.startswith("JSD ") for t in texts)  # N1 has no test cells
    assert "mean JSD" in ax.get_title()
    table.obs["copy_niche"] = table.obs["teacher_niche"]
    ax = nk.pl.compare_compositions(sdata, student_key="copy_niche", show=False)
    assert all(t.get_text() == "JSD 0.000" for t in ax.texts)
    with pytest.raises(ValueError, match="'validation'"):
        nk.pl.compare_compositions(sdata, split="validation", show=False)


def test_agreement_matches_and_reports(sdata):
    table = sdata.tables["table"]
    mapping = {"N0": "N3", "N1": "N0", "N3": "N1"}  # a relabelled copy agrees perfectly after matching
    table.obs["relabelled"] = pd.Categorical(table.obs["teacher_niche"].map(mapping))
    ax = nk.pl.agreement(sdata, student_key="relabelled", show=False)
    assert "accuracy 1.00" in ax.get_title() and "ARI 1.00" in ax.get_title()
    mesh = ax.collections[0].get_array().reshape(3, 3)
    np.testing.assert_allclose(np.diag(mesh), 1.0)
    ax = nk.pl.agreement(sdata, split="test", normalize=None, show=False)
    assert ax.collections[0].get_array().sum() == ((table.obs["split"] == "test").sum())
    with pytest.raises(ValueError, match="normalize"):
        nk.pl.agreement(sdata, normalize="all", show=False)


def test_training_curves(sdata, tmp_path):
    history = {"train_loss": [1.0, 0.6, 0.4, 0.3], "val_loss": [1.1, 0.7, 0.65, 0.7]}
    ax = nk.pl.training(history, show=False, save=tmp_path / "t.svg")
    assert len(ax.lines) == 3  # two curves and the best-epoch marker
    assert ax.lines[2].get_xdata()[0] == 3
    sdata.tables["table"].uns["student_niche"] = {"history": history}
    assert nk.pl.training(sdata, show=False).get_xlabel() == "epoch"
    with pytest.raises(KeyError, match="history"):
        nk.pl.training(sdata, key="other_student", show=False)


def test_k_sweep(tmp_path):
    df = pd.DataFrame(
        {
            "k": [5, 3, 4],
            "stability_ari_mean": [0.7, 0.6, 0.9],
            "stability_ari_sd": [0.1] * 3,
            "bic": [3, 2, 1],
        }
    )
    axes = nk.pl.k_sweep(df, show=False, save=tmp_path / "k.png")
    assert len(axes) == 2 and (tmp_path / "k.png").exists()
    assert axes[0].get_legend().get_texts()[0].get_text() == "k = 4"
    assert len(nk.pl.k_sweep(df.drop(columns="bic"), chosen_k=5, show=False)) == 1
    with pytest.raises(KeyError, match="stability_ari_mean"):
        nk.pl.k_sweep(df.drop(columns="stability_ari_mean"), show=False)
    with pytest.raises(ValueError, match="chosen_k"):
        nk.pl.k_sweep(df, chosen_k=9, show=False)
