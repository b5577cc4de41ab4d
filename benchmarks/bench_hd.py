"""A full-size Visium HD section end to end: the kidney crop tiled to ~660k 8 um bins.

Run: ``.venv/bin/python benchmarks/bench_hd.py [--tiles 42] [--grid-um 32]`` (needs
``$NICHEKD_DATA_DIR/visium_hd_kidney_crop``). The run happens in its own process (peaks are per run) and writes
``benchmarks/results/hd.json``; ``--agreement`` instead measures how close grid features (``grid_um``) are to
per-bin features on the untiled crop, and the student's ARI with each (written to the same file).

**The stand-in.** A full HD capture area is 6.5 x 6.5 mm, ~660k 8 um bins under tissue. The public 1 mm^2
kidney crop (15,611 bins, 2,012 genes, H&E at 2 um/px) is tiled 6 x 7 = 42 times (655,662 bins): each tile's
bins are shifted by a whole number of array rows/columns (126) through the crop's own array-to-micron map, and
its H&E is pasted at the same offset (rounded to the pixel, < 1 um), so bins, array indices and image agree as
on one large section.

**Steps** (each timed, with its peak resident memory): ``build`` (the stand-in, instead of reading Space Ranger
output), ``aggregate_16um`` (``nk.pp.aggregate_bins`` to 16 um, the alternative to 8 um bins, timed only),
``teacher`` (``aggregate``, K=5), ``features`` (stain encoder; one patch per grid node of ``grid_um`` with
per-bin bilinear read-out), ``split``, ``distill`` (transformer, fixed epochs), ``baseline_kmeans``,
``baseline_leiden`` (on the same features), ``evaluate``, ``predict_he_only`` (a copy holding only the H&E and
the bins, no expression: features recomputed from the model's settings, then the student), ``write_zarr``
(``sdata.write`` of the whole object with every result).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

GRID = (6, 7)  # tile rows x columns: 42 tiles of 1 mm^2
SHIFT_BINS = (
    126  # array rows/columns between tiles (the crop spans 126 rows, 125 columns; its image 125.2 bins)
)
PIPELINE = ("teacher", "features", "split", "distill", "baseline_kmeans", "baseline_leiden", "evaluate",
            "predict_he_only", "write_zarr")  # fmt: skip


def tiled_kidney(n_tiles: int = 42, data_dir: str | None = None):
    """The kidney crop tiled ``n_tiles`` times (row-major over a 6 x 7 grid) into one section ``"kidney"``.

    Returns a SpatialData in nichekd's layout (bins as 8 um circles in microns, H&E at the crop's 2 um/px,
    counts sparse, ``obs['array_row']``/``['array_col']`` continued across tiles).
    """
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from nichekd.datasets._public import resolve_data_dir
    from nichekd.io._build import build_library

    if not 1 <= n_tiles <= GRID[0] * GRID[1]:
        raise ValueError(f"n_tiles must be in 1..{GRID[0] * GRID[1]}, got {n_tiles}.")
    root = resolve_data_dir(data_dir, "visium_hd_kidney_crop")
    crop = ad.read_h5ad(root / "bins_8um_crop.h5ad")
    from PIL import Image

    img = np.asarray(Image.open(root / "he_crop.png").convert("RGB"))
    mpp = float(crop.uns["um_per_hires_px"])
    xy_px = np.asarray(crop.obsm["spatial"], dtype=float)
    # the crop's exact map from array (col, row) to pixels (x, y), fitted on its bins
    arr = crop.obs[["array_col", "array_row"]].to_numpy(dtype=float)
    coef = np.linalg.lstsq(np.c_[arr, np.ones(len(arr))], xy_px, rcond=None)[0]
    lin = coef[:2]  # rows: d(x, y) per array column, per array row
    # array col runs against x: tile columns step the array column down, so go right in x
    col_sign = -np.sign(lin[0, 0])
    n_cols = GRID[1]
    tiles = [(i // n_cols, i % n_cols) for i in range(n_tiles)]
    offsets_arr = np.array([(col_sign * SHIFT_BINS * tj, SHIFT_BINS * ti) for ti, tj in tiles], float)
    offsets_px = offsets_arr @ lin
    # paste the crop's image at each tile's (rounded) pixel offset
    base = np.floor(offsets_px.min(0)).astype(int)
    pos = np.rint(offsets_px - base).astype(int)
    h, w = img.shape[:2]
    canvas = np.full((pos[:, 1].max() + h, pos[:, 0].max() + w, 3), 255, dtype=np.uint8)
    for x0, y0 in pos:
        canvas[y0 : y0 + h, x0 : x0 + w] = img
    n = crop.n_obs
    xy = np.concatenate([xy_px + (pos[k] + 0.0) for k in range(n_tiles)]) * mpp
    obs = crop.obs[["array_row", "array_col", "he_tissue", "total_counts_allgenes"]]
    obs = obs.iloc[np.tile(np.arange(n), n_tiles)].reset_index(drop=True)
    shift = np.repeat(offsets_arr, n, axis=0).astype(int)
    obs["array_col"] = obs["array_col"].to_numpy() + shift[:, 0] - int(shift[:, 0].min())
    obs["array_row"] = obs["array_row"].to_numpy() + shift[:, 1]
    obs.index = [
        f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(obs["array_row"], obs["array_col"], strict=True)
    ]
    x = sp.vstack([sp.csr_matrix(crop.X)] * n_tiles, format="csr")
    table = ad.AnnData(X=x, obs=obs, var=crop.var.copy())
    return build_library(
        table, library="kidney", xy_um=xy, diameter_um=8.0, kind="spot", technology="visium_hd",
        image=canvas, mpp=mpp,
    )  # fmt: skip


def worker(
    n_tiles: int,
    grid_um: float | None,
    epochs: int,
    seed: int,
    store: Path,
    architecture: str = "transformer",
    defaults: bool = False,
) -> None:
    """Run the pipeline once and emit per-stage numbers (after every stage, so a stopped run keeps them).

    ``defaults``: every public function with its default arguments (K=5, which has no default; the EfficientNet-Lite0
    features with ``grid_um="auto"``, the default student with early stopping), as a user who follows the
    docs runs it; ``grid_um``, ``epochs`` and ``architecture`` are then ignored."""
    import numpy as np
    import spatialdata as sd
    import torch

    import nichekd as nk
    from nichekd._core.patches import level_arrays

    out: dict = {"n_tiles": n_tiles, "grid_um": grid_um, "epochs": epochs, "seed": seed, "error": None,
                 "threads": torch.get_num_threads(), "architecture": architecture, "defaults": defaults}  # fmt: skip
    if defaults:
        out.update(grid_um="auto", epochs="default (early stopping)", architecture="defaults")

    def record() -> None:
        out["stages"] = stage.records
        _common.emit(out)

    stage = _common.Stages(before=record)
    try:
        with stage("build"):
            sdata = tiled_kidney(n_tiles)
        table = sdata.tables["table"]
        out["n_bins"], out["n_genes"] = int(table.n_obs), int(table.n_vars)
        out["image_px"] = [int(s) for s in level_arrays(sdata.images["kidney_he"])[0].shape[1:]]
        with stage("aggregate_16um"):
            nk.pp.aggregate_bins(sdata, bin_size_um=16)
        out["n_bins_16um"] = int(sdata.tables["square_016um"].n_obs)
        del sdata.tables["square_016um"], sdata.shapes["kidney_square_016um"]
        with stage("teacher"):
            if defaults:
                nk.tl.teacher_niches(sdata, n_niches=5, random_state=seed, progress=False)  # K has no default
            else:
                nk.tl.teacher_niches(sdata, n_niches=5, method="aggregate", random_state=seed, progress=False)
        k = int(table.obs["teacher_niche"].nunique())
        with stage("features"):
            if defaults:
                nk.pp.histology_features(sdata, key_added="he_features")
            else:
                nk.pp.histology_features(sdata, backbone="stain", key_added="he_features", device="cpu",
                                         grid_um=grid_um)  # fmt: skip
        params = table.uns["he_features"]["params"]
        out["feature_patches"] = int(params.get("grid_nodes") or table.n_obs)
        out["backbone"], out["grid_choice"] = params.get("backbone"), params.get("grid_choice")
        with stage("split"):
            nk.pp.spatial_split(sdata)
        with stage("distill"):
            if defaults:
                model = nk.tl.distill(sdata, features_key="he_features", random_state=seed, progress=False)
            else:
                model = nk.tl.distill(sdata, features_key="he_features", architecture=architecture,
                                      epochs=epochs, patience=epochs, device="cpu", random_state=seed,
                                      progress=False)  # fmt: skip
        out["epochs_trained"] = len(model.history["train_loss"])
        with stage("baseline_kmeans"):
            nk.tl.histology_baseline(sdata, method="kmeans", n_niches=k, features_key="he_features",
                                     random_state=seed)  # fmt: skip
        with stage("baseline_leiden"):
            nk.tl.histology_baseline(sdata, method="leiden", n_niches=k, features_key="he_features",
                                     random_state=seed)  # fmt: skip
        with stage("evaluate"):
            scores = nk.tl.evaluate(
                sdata, predictions=["student_niche", "he_kmeans_niche", "he_leiden_niche"]
            )
        out["scores"] = {
            k: {m: float(scores.loc[k, m]) for m in ("ari", "nmi", "accuracy")} for k in scores.index
        }
        with stage("predict_he_only"):
            he = _he_only(sdata)
            nk.tl.predict_niches(he, model, key_added="predicted", **({} if defaults else {"device": "cpu"}))
        pred = he.tables["table"].obs["predicted"].astype(str).to_numpy()
        out["he_only_equal_to_student"] = float(
            np.mean(pred == table.obs["student_niche"].astype(str).to_numpy())
        )
        del he
        with stage("write_zarr"):
            shutil.rmtree(store, ignore_errors=True)
            sdata.write(store)
        out["zarr_gb"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e9
        with stage("read_zarr"):
            back = sd.read_zarr(store)
            assert back.tables["table"].n_obs == table.n_obs
    except Exception as err:  # record how far it got; the parent still reports the stages that ran
        out["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    shutil.rmtree(store, ignore_errors=True)
    out["stages"] = stage.records
    _common.emit(out)


def _he_only(sdata):
    """The H&E and the bins of ``sdata`` with an expression-free table (what an H&E-only slide gives)."""
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    table = sdata.tables["table"]
    obs = table.obs[["region", "instance_id", "library"]].copy()
    bare = ad.AnnData(obs=obs, uns={"spatial": dict(table.uns.get("spatial", {}))})
    attrs = table.uns["spatialdata_attrs"]
    bare = TableModel.parse(bare, region=attrs["region"], region_key=attrs["region_key"],
                            instance_key=attrs["instance_key"])  # fmt: skip
    return SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": bare})


def agreement(grid_ums=(16.0, 32.0, 48.0), epochs: int = 10, seed: int = 0, backbone: str = "stain") -> dict:
    """Grid features against per-bin features on the kidney crop: correlation per feature and student ARI.

    ``grid_ums`` may hold ``"auto"`` (the default of ``histology_features``: recorded with the spacing it chose).
    """
    import time

    import numpy as np

    import nichekd as nk

    sdata = nk.datasets.visium_hd_kidney_crop()
    table = sdata.tables["table"]
    nk.tl.teacher_niches(sdata, n_niches=5, method="aggregate", random_state=seed, progress=False)
    out: dict = {"n_bins": int(table.n_obs), "epochs": epochs, "seed": seed, "backbone": backbone, "runs": {}}
    ref = None
    for g in (None, *grid_ums):
        key = "he_bins" if g is None else ("he_auto" if g == "auto" else f"he_grid{int(g)}")
        t0 = time.perf_counter()
        nk.pp.histology_features(sdata, backbone=backbone, key_added=key, device="cpu", grid_um=g)
        sec = time.perf_counter() - t0
        x = np.asarray(table.obsm[key], dtype=float)
        params = table.uns[key]["params"]
        rec = {"seconds": sec, "patches": int(params.get("grid_nodes") or table.n_obs),
               "grid_um": params.get("grid_um"), "patch_size_um": params.get("patch_size_um")}  # fmt: skip
        if ref is None:
            nk.pp.spatial_split(sdata)  # the same split for every feature set (buffer: half the patch)
            ref = x
        else:
            keep = ref.std(0) > 1e-8
            a = (ref[:, keep] - ref[:, keep].mean(0)) / ref[:, keep].std(0)
            b = (x[:, keep] - x[:, keep].mean(0)) / np.where(x[:, keep].std(0) > 1e-8, x[:, keep].std(0), 1)
            r = (a * b).mean(0)
            rec.update(pearson_median=float(np.median(r)), pearson_min=float(r.min()))
        nk.tl.distill(sdata, features_key=key, key_added=f"student_{key}", epochs=epochs, device="cpu",
                      random_state=seed, progress=False)  # fmt: skip
        score = nk.tl.evaluate(sdata, predictions=[f"student_{key}"])
        rec["student_ari"] = float(score["ari"].iloc[0])
        out["runs"][key] = rec
        print(key, rec, flush=True)
    out["machine"] = _common.machine()
    return out


def grid_seeds(backbone: str = "efficientnet_lite0", seeds=(0, 1, 2)) -> dict:
    """One patch per bin against the grid ``grid_um="auto"`` takes on large sections (a quarter of the patch
    side), on the untiled crop: the default student (early stopping) per seed, k-means and Leiden once."""
    import numpy as np

    import nichekd as nk
    from nichekd.models.encoders import resolve_spec
    from nichekd.pp._grid import AUTO_GRID_FRACTION

    spec = resolve_spec(backbone)
    grid = spec.input_size * spec.mpp * AUTO_GRID_FRACTION
    sdata = nk.datasets.visium_hd_kidney_crop()
    table = sdata.tables["table"]
    nk.tl.teacher_niches(sdata, n_niches=5, method="aggregate", random_state=0, progress=False)
    runs = {"he_bins": None, "he_grid": grid}
    for key, g in runs.items():
        nk.pp.histology_features(sdata, backbone=backbone, key_added=key, grid_um=g)
    nk.pp.spatial_split(sdata)
    out: dict = {"n_bins": int(table.n_obs), "backbone": backbone, "grid_um": grid, "seeds": list(seeds),
                 "student": {}, "kmeans": {}, "leiden": {}}  # fmt: skip
    for key in runs:
        for seed in seeds:
            nk.tl.distill(
                sdata, features_key=key, key_added=f"s_{key}_{seed}", random_state=seed, progress=False
            )
            score = nk.tl.evaluate(sdata, predictions=[f"s_{key}_{seed}"])
            out["student"].setdefault(key, []).append(float(score["ari"].iloc[0]))
        for method in ("kmeans", "leiden"):
            nk.tl.histology_baseline(sdata, method=method, n_niches=5, features_key=key,
                                     key_added=f"b_{method}_{key}", random_state=0)  # fmt: skip
            score = nk.tl.evaluate(sdata, predictions=[f"b_{method}_{key}"])
            out[method][key] = float(score["ari"].iloc[0])
        print(key, out["student"][key], flush=True)
    out["machine"] = _common.machine()
    out["mean"] = {k: float(np.mean(v)) for k, v in out["student"].items()}
    out["sd"] = {k: float(np.std(v, ddof=1)) for k, v in out["student"].items()}
    return out


def run(
    n_tiles: int,
    grid_um: float | None,
    epochs: int,
    seed: int,
    timeout_s: float | None,
    architecture: str = "transformer",
    defaults: bool = False,
) -> dict:
    data = _common.load_results("hd") or {}
    name = f"{n_tiles}_defaults" if defaults else f"{n_tiles}_{architecture}"
    log = _common.WORK_DIR / f"hd_{name}.log"
    store = _common.WORK_DIR / f"hd_{name}.zarr"
    print(f"hd: {n_tiles} tiles (log {log})", flush=True)
    args = [str(Path(__file__).resolve()), "--worker", "--tiles", str(n_tiles), "--epochs", str(epochs),
            "--seed", str(seed), "--store", str(store), "--architecture", architecture] + ([] if grid_um is None else ["--grid-um", str(grid_um)]) + (["--defaults"] if defaults else [])  # fmt: skip
    res = _common.run_worker(args, log, timeout_s=timeout_s)
    res["machine"] = _common.machine()
    data.setdefault("runs", {})[name] = res
    _common.save_results("hd", data)
    return data


def _cpu(rec: dict) -> str:
    return f" ({_common.fmt_seconds(rec['cpu_s'])})" if "cpu_s" in rec else ""


def report(data: dict | None) -> list[str]:
    """The RESULTS.md section."""
    if not data or not (data.get("runs") or data.get("agreement")):
        return ["_not run yet: `python benchmarks/bench_hd.py`_", ""]
    lines: list[str] = []
    runs = sorted(data.get("runs", {}).values(), key=lambda r: r.get("n_bins", 0))
    if runs:
        lines += [
            "The kidney crop (Visium HD, 8 um bins, 2,012 genes) tiled into one section (see "
            "`benchmarks/bench_hd.py`); teacher `aggregate` K=5, stain encoder on a grid with per-bin bilinear "
            "read-out, student (column header) for a fixed number of epochs, k-means and Leiden on the same "
            "features, H&E-only prediction on an expression-free copy, zarr write; a column headed *defaults* "
            "calls every function with its default arguments instead (K=5, which has no default; EfficientNet-Lite0 "
            "features with `grid_um='auto'`, the default student with early stopping). Time is wall clock (in "
            "brackets: CPU seconds of the process, all threads; on the shared machine the wall time is mostly "
            "waiting for a core), memory the resident-set peak (per step: high-water mark reset before the step; "
            "whole run: `ru_maxrss`).",
            "",
            "| step | "
            + " | ".join(
                f"{r.get('n_bins', 0):,} bins, {r.get('architecture', 'transformer')}: wall (CPU) / peak"
                for r in runs
            )
            + " |",
            "|---|" + "---|" * len(runs),
        ]
        names = ["build", "aggregate_16um", *PIPELINE, "read_zarr"]
        for s in names:
            cells = []
            for r in runs:
                rec = r.get("stages", {}).get(s)
                cells.append(
                    "not reached"
                    if rec is None
                    else f"{_common.fmt_seconds(rec['seconds'])}{_cpu(rec)} / {rec['peak_mb'] / 1024:.2f} GB"
                )
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        totals = [
            sum(r.get("stages", {}).get(s, {}).get("seconds", float("nan")) for s in PIPELINE) for r in runs
        ]
        lines.append(
            "| **pipeline (teacher to zarr)** | "
            + " | ".join(f"**{_common.fmt_seconds(t)}**" for t in totals)
            + " |"
        )
        lines.append(
            "| whole process | "
            + " | ".join(
                f"{_common.fmt_seconds(r['process']['wall_s'])} (CPU {_common.fmt_seconds(r['process']['cpu_s'])}) "
                f"/ {r['process']['peak_rss_mb'] / 1024:.2f} GB"
                for r in runs
            )
            + " |"
        )
        for arch in dict.fromkeys(r.get("architecture", "transformer") for r in runs):
            same = [
                (r, t)
                for r, t in zip(runs, totals, strict=True)
                if r.get("architecture", "transformer") == arch and r["process"]["returncode"] == 0
            ]
            if len(same) < 2:
                continue
            ns = [r.get("n_bins", 0) for r, _ in same]
            peaks = [r["process"]["peak_rss_mb"] for r, _ in same]
            cpus = [r["process"]["cpu_s"] for r, _ in same]
            lines.append(
                f"\nGrowth exponents ({arch} student, {ns[0]:,} to {ns[-1]:,} bins): pipeline wall time "
                f"{_common.loglog_slope(ns, [t for _, t in same]):.2f}, whole-process CPU time "
                f"{_common.loglog_slope(ns, cpus):.2f}, whole-process peak memory {_common.loglog_slope(ns, peaks):.2f}."
            )
        lines.append("")
        for r in runs:
            extra = [f"{r.get('n_tiles')} tiles", f"grid {r.get('grid_um')} um",
                     f"{r.get('architecture', 'transformer')} student, {r.get('epochs')} epochs"]  # fmt: skip
            if r.get("defaults"):
                extra += [f"backbone {r.get('backbone')}", f"grid: {r.get('grid_choice')}",
                          f"{r.get('epochs_trained')} epochs trained"]  # fmt: skip
            if r.get("image_px"):
                extra.append(f"image {r['image_px'][1]} x {r['image_px'][0]} px")
            if r.get("feature_patches"):
                extra.append(f"{r['feature_patches']:,} patches encoded")
            if r.get("n_bins_16um"):
                extra.append(f"{r['n_bins_16um']:,} bins at 16 um")
            if r.get("scores"):
                extra.append(
                    "test ARI vs teacher: " + ", ".join(f"{k} {v['ari']:.3f}" for k, v in r["scores"].items())
                )
            if r.get("zarr_gb"):
                extra.append(f"zarr {r['zarr_gb']:.2f} GB")
            if r.get("error"):
                extra.append(f"**stopped: {r['error']}**")
            if r["process"]["returncode"] not in (0, None):
                extra.append(
                    f"**process exit code {r['process']['returncode']}** (log `{r['process']['log']}`)"
                )
            m = r.get("machine", {})
            lines.append(
                f"- {r.get('n_bins', 0):,} bins: " + "; ".join(extra)
                + f"; load average at the end {m.get('load_average_1min')} ({m.get('date')})"
            )  # fmt: skip
        lines.append("")
    for agreement_key in sorted(k for k in data if k.startswith("agreement")):
        agr = data[agreement_key]
        lines += [
            f"**Grid features vs one patch per bin** on the untiled crop ({agr['n_bins']:,} bins, "
            f"{agr.get('backbone', 'stain')} encoder; "
            f"student: transformer, {agr['epochs']} epochs, ARI against the teacher on the test strip):",
            "",
            "| features | patches encoded | time | Pearson r with per-bin features (median / min over features) "
            "| student ARI |",
            "|---|---|---|---|---|",
        ]
        for key, rec in agr["runs"].items():
            r = (
                f"{rec['pearson_median']:.3f} / {rec['pearson_min']:.3f}"
                if "pearson_median" in rec
                else "(reference)"
            )
            name = (
                "one patch per bin"
                if key == "he_bins"
                else f"grid {rec.get('grid_um'):g} um (the spacing of `grid_um='auto'`)"
                if key == "he_auto"
                else f"grid {key.removeprefix('he_grid')} um"
            )
            lines.append(
                f"| {name} | {rec['patches']:,} | {_common.fmt_seconds(rec['seconds'])} | {r} | {rec['student_ari']:.3f} |"
            )
        m = agr["machine"]
        lines += ["", f"Measured {m['date']} (load average {m['load_average_1min']}).", ""]
    gs = data.get("grid_seeds")
    if gs:
        m = gs["machine"]
        lines += [
            f"**One patch per bin vs the {gs['grid_um']:g} um grid `grid_um='auto'` takes on large sections**, "
            f"untiled crop ({gs['n_bins']:,} bins, {gs['backbone']}, default student, seeds "
            f"{', '.join(map(str, gs['seeds']))}; ARI against the teacher on the test strip; commit "
            f"{m.get('commit')}, {m['date']}, load average {m['load_average_1min']}):",
            "",
            "| features | student ARI per seed | mean +- sd | k-means | Leiden |",
            "|---|---|---|---|---|",
        ]
        for key, name in (("he_bins", "one patch per bin"), ("he_grid", f"grid {gs['grid_um']:g} um")):
            per = ", ".join(f"{a:.3f}" for a in gs["student"][key])
            lines.append(
                f"| {name} | {per} | {gs['mean'][key]:.3f} +- {gs['sd'][key]:.3f} | "
                f"{gs['kmeans'][key]:.3f} | {gs['leiden'][key]:.3f} |"
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiles", type=int, default=42)
    parser.add_argument(
        "--grid-um", type=float, default=32.0, help="feature grid spacing (0: one patch per bin)"
    )
    parser.add_argument(
        "--epochs", type=int, default=1, help="student epochs (pipeline: fixed, no early stop)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--architecture", default="transformer", choices=("transformer", "mlp"), help="student"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds")
    parser.add_argument("--agreement", action="store_true", help="grid vs per-bin features on the crop")
    parser.add_argument("--grid-seeds", action="store_true",
                        help="per-bin vs the auto grid spacing, default student, 3 seeds (EfficientNet-Lite0)")  # fmt: skip
    parser.add_argument("--agreement-grids", default="16,32,48", help="comma-separated; 'auto' allowed")
    parser.add_argument("--backbone", default="stain", help="encoder of --agreement")
    parser.add_argument("--defaults", action="store_true",
                        help="every function with its default arguments (grid, epochs, architecture ignored)")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    grid = args.grid_um if args.grid_um and args.grid_um > 0 else None
    if args.worker:
        worker(args.tiles, grid, args.epochs, args.seed, args.store, args.architecture, args.defaults)
        return
    if args.grid_seeds:
        result = grid_seeds(args.backbone if args.backbone != "stain" else "efficientnet_lite0")
        data = _common.load_results("hd") or {}
        data["grid_seeds"] = result
        _common.save_results("hd", data)
    elif args.agreement:
        grids = [g if g == "auto" else float(g) for g in args.agreement_grids.split(",")]
        result = agreement(grids, epochs=args.epochs, seed=args.seed, backbone=args.backbone)
        data = _common.load_results("hd") or {}  # read after the run: other runs may have written meanwhile
        data["agreement" if args.backbone == "stain" else f"agreement_{args.backbone}"] = result
        _common.save_results("hd", data)
    else:
        data = run(args.tiles, grid, args.epochs, args.seed, args.timeout, args.architecture, args.defaults)
    print("\n".join(report(data)))


if __name__ == "__main__":
    os.environ.setdefault("NICHEKD_DATA_DIR", str(_common.REPO.parent / "shared" / "data"))
    main()
