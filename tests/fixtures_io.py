"""Builders of small on-disk fixtures in the real Visium HD / Xenium / Visium formats, and image probes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from scipy import sparse

N_GENES = 12


def tissue_image(h: int, w: int, centre_xy: tuple[float, float], radius: float, seed: int = 0) -> np.ndarray:
    """White slide with a purple disc of tissue (textured so it is not blank)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 240, dtype=np.float32) + rng.normal(0, 3, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - centre_xy[0]) ** 2 + (yy - centre_xy[1]) ** 2 < radius**2
    img[disc] = np.array([150, 80, 160]) + rng.normal(0, 10, (int(disc.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_10x_h5(path: Path, x: sparse.csr_matrix, barcodes, genes, feature_types=None) -> None:
    """A Cell Ranger v3 ``*_feature_bc_matrix.h5`` (barcodes x features stored as features x barcodes)."""
    x = sparse.csr_matrix(x)
    feature_types = feature_types or ["Gene Expression"] * len(genes)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=x.data.astype(np.int32))
        m.create_dataset("indices", data=x.indices.astype(np.int64))
        m.create_dataset("indptr", data=x.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([x.shape[1], x.shape[0]], dtype=np.int32))
        feat = m.create_group("features")
        feat.create_dataset("id", data=np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S"))
        feat.create_dataset("name", data=np.array(genes, dtype="S"))
        feat.create_dataset("feature_type", data=np.array(feature_types, dtype="S"))
        feat.create_dataset("genome", data=np.array(["GRCh38"] * len(genes), dtype="S"))
        feat.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


def _counts(n: int, n_genes: int, seed: int) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    return sparse.csr_matrix(rng.poisson(2.0, (n, n_genes)).astype(np.int32))


def make_visium_hd(
    root: Path, *, grid: int = 20, mpp: float = 0.5, hires_scalef: float = 0.5, seed: int = 0
) -> dict:
    """A Space Ranger 3 Visium HD ``outs`` folder (8 um bins only) in the layout ``spatialdata_io.visium_hd`` reads.

    ``outs/feature_slice.h5`` (its ``metadata_json`` attribute, file format 1.0), ``outs/spatial/`` (hires and
    lowres H&E, global scale factors) and ``outs/binned_outputs/square_008um/`` (filtered and raw
    ``*_feature_bc_matrix.h5``, ``spatial/tissue_positions.parquet`` and the bin scale factors with
    ``microns_per_pixel`` and ``bin_size_um``). Bins lie on an 8 um grid, ``grid`` x ``grid`` of them.
    """
    outs = root / "outs"
    folder = outs / "binned_outputs" / "square_008um"
    (folder / "spatial").mkdir(parents=True)
    (outs / "spatial").mkdir()
    bin_px = 8.0 / mpp
    rows, cols = np.mgrid[0:grid, 0:grid]
    rows, cols = rows.ravel(), cols.ravel()
    barcodes = [f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    pxl_row = (rows + 0.5) * bin_px + 10
    pxl_col = (cols + 0.5) * bin_px + 10
    full = int(grid * bin_px + 20)
    h = w = int(round(full * hires_scalef))
    centre, radius = (w / 2, h / 2), w / 3
    in_tissue = (
        (pxl_col * hires_scalef - centre[0]) ** 2 + (pxl_row * hires_scalef - centre[1]) ** 2
    ) < radius**2
    # Space Ranger's column order, which spatialdata-io checks
    pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": in_tissue.astype(np.int32),
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": pxl_row,
            "pxl_col_in_fullres": pxl_col,
        }
    ).to_parquet(folder / "spatial" / "tissue_positions.parquet")
    for where, bin_um in ((outs / "spatial", 2.0), (folder / "spatial", 8.0)):
        sf = {
            "spot_diameter_fullres": bin_um / mpp,
            "bin_size_um": bin_um,
            "microns_per_pixel": mpp,
            "regist_target_img_scalef": hires_scalef,
            "tissue_lowres_scalef": hires_scalef / 4,
            "fiducial_diameter_fullres": bin_px * 10,
            "tissue_hires_scalef": hires_scalef,
        }
        (where / "scalefactors_json.json").write_text(json.dumps(sf))
    img = tissue_image(h, w, centre, radius, seed)
    Image.fromarray(img).save(outs / "spatial" / "tissue_hires_image.png")
    Image.fromarray(img[::4, ::4]).save(outs / "spatial" / "tissue_lowres_image.png")
    eye = np.eye(3).ravel().tolist()
    metadata = {
        "hd_layout_json": json.dumps({"file_format": "1.0", "transform": eye}),
        "transform_matrices": {
            k: eye
            for k in (
                "cytassist_colrow_to_spot_colrow",
                "spot_colrow_to_cytassist_colrow",
                "microscope_colrow_to_spot_colrow",
                "spot_colrow_to_microscope_colrow",
            )
        },
    }
    with h5py.File(outs / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)
    genes = [f"GENE{i}" for i in range(N_GENES)]
    x = _counts(len(barcodes), N_GENES, seed)
    keep = np.flatnonzero(in_tissue)
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", x[keep], [barcodes[i] for i in keep], genes)
    write_10x_h5(folder / "raw_feature_bc_matrix.h5", x, barcodes, genes)
    return {
        "outs": outs,
        "n_in_tissue": len(keep),
        "n_bins": len(barcodes),
        "mpp_full": mpp,
        "hires_scalef": hires_scalef,
    }


def _write_cells_zarr(path: Path, prefix, suffix, xy_um: np.ndarray, area: np.ndarray) -> None:
    """A Xenium 2.0 ``cells.zarr.zip`` (zarr v2 in a zip): ``cell_id`` (prefix, suffix) and ``cell_summary``."""
    import zarr

    columns = ["cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x", "nucleus_centroid_y"]
    columns += ["nucleus_area", "z_level", "nucleus_count"]
    n = len(prefix)
    summary = np.c_[xy_um, area, xy_um, area / 4, np.zeros(n), np.ones(n)]
    store = zarr.storage.ZipStore(path, mode="w")
    group = zarr.open_group(store, mode="w", zarr_format=2)
    group.create_array("cell_id", data=np.c_[prefix, suffix].astype(np.uint32))
    group.create_array("cell_summary", data=summary.astype(np.float64), attributes={"column_names": columns})
    store.close()


def xenium_alignment(scale: float = 2.0, angle_deg: float = 10.0, shift=(120.0, 40.0)) -> np.ndarray:
    """An H&E-pixel -> Xenium-pixel affine with rotation, as Xenium Explorer exports it."""
    a = np.deg2rad(angle_deg)
    return np.array(
        [
            [scale * np.cos(a), -scale * np.sin(a), shift[0]],
            [scale * np.sin(a), scale * np.cos(a), shift[1]],
            [0.0, 0.0, 1.0],
        ]
    )


def make_xenium(root: Path, *, n_cells: int = 150, he_size: int = 300, seed: int = 0) -> dict:
    """A Xenium Onboard Analysis 2.0 output folder plus an aligned H&E OME-TIFF and its alignment CSV.

    The folder holds what ``spatialdata_io.xenium`` reads for cells: ``experiment.xenium``,
    ``cell_feature_matrix.h5``, ``cells.parquet`` and ``cells.zarr.zip`` (cell ids and summary).
    """
    import tifffile
    from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

    rng = np.random.default_rng(seed)
    out = root / "xenium_outs"
    out.mkdir(parents=True)
    pixel_size = 0.2125
    (out / "experiment.xenium").write_text(
        json.dumps(
            {
                "pixel_size": pixel_size,
                "region_name": "fixture_region",
                "analysis_sw_version": "xenium-2.0.0.10",
            }
        )
    )
    centre, radius = (he_size / 2, he_size / 2), he_size / 3
    he = tissue_image(he_size, he_size, centre, radius, seed)
    # cells: most on the tissue disc, some on bare glass, all in H&E pixels first
    n_on = int(n_cells * 0.8)
    r = radius * np.sqrt(rng.uniform(0, 0.8, n_on))
    t = rng.uniform(0, 2 * np.pi, n_on)
    on = np.c_[centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)]
    off = rng.uniform(5, 40, (n_cells - n_on, 2))
    he_px = np.r_[on, off]
    on_tissue = np.r_[np.ones(n_on, bool), np.zeros(n_cells - n_on, bool)]
    matrix = xenium_alignment()
    xen_px = (matrix @ np.c_[he_px, np.ones(n_cells)].T).T[:, :2]
    xy_um = xen_px * pixel_size
    # Xenium 2 cell ids: a uint32 prefix and a dataset suffix, spelled in shifted hex ("aaaaaaab-1")
    prefix, suffix = np.arange(1, n_cells + 1, dtype=np.uint32), np.ones(n_cells, dtype=np.uint32)
    cell_ids = list(cell_id_str_from_prefix_suffix_uint32(prefix, suffix))
    pd.DataFrame(
        {
            "cell_id": cell_ids,
            "x_centroid": xy_um[:, 0],
            "y_centroid": xy_um[:, 1],
            "transcript_counts": rng.integers(10, 100, n_cells),
            "cell_area": np.full(n_cells, np.pi * 6.0**2),
            "nucleus_area": np.full(n_cells, np.pi * 3.0**2),
        }
    ).to_parquet(out / "cells.parquet")
    genes = [f"GENE{i}" for i in range(N_GENES)] + ["NegControlProbe_1", "BLANK_0001"]
    types = ["Gene Expression"] * N_GENES + ["Negative Control Probe", "Unassigned Codeword"]
    write_10x_h5(out / "cell_feature_matrix.h5", _counts(n_cells, len(genes), seed), cell_ids, genes, types)
    _write_cells_zarr(out / "cells.zarr.zip", prefix, suffix, xy_um, np.full(n_cells, np.pi * 6.0**2))
    he_path = root / "fixture_he_image.ome.tif"
    tifffile.imwrite(he_path, he, photometric="rgb")
    align_path = root / "fixture_he_imagealignment.csv"
    pd.DataFrame(matrix).to_csv(align_path, header=False, index=False)
    return {
        "outs": out,
        "he_image": he_path,
        "alignment": align_path,
        "he_px": he_px,
        "on_tissue": on_tissue,
        "mpp_he": pixel_size * 2.0,
        "xy_um_xenium": xy_um,
        "n_genes": N_GENES,
    }


def image_at(sdata, library: str, xy_um: np.ndarray, table_key: str = "table") -> np.ndarray:
    """RGB values of a library's image (the one nichekd chooses) at micron positions, via its registration.

    ``xy_um`` is in the micron frame of :func:`nichekd._core.spatial.resolve` (``ctx.xy_um``).
    """
    from nichekd._core.spatial import resolve

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*placeholders", category=UserWarning)
        level = resolve(sdata, table_key=table_key).pyramid(library).levels[0]
    px = level.um_to_px(np.asarray(xy_um, dtype=float))
    img = np.asarray(level.data.values)[:3]  # (c, y, x), alpha dropped
    cols = np.clip(np.floor(px[:, 0]).astype(int), 0, img.shape[2] - 1)
    rows = np.clip(np.floor(px[:, 1]).astype(int), 0, img.shape[1] - 1)
    return img[:, rows, cols].T.astype(float)


def darkness(rgb: np.ndarray) -> np.ndarray:
    """255 minus mean intensity: high on stained tissue, low on bare glass."""
    return 255.0 - rgb.mean(1)
