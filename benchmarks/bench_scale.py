"""Time and peak memory of every pipeline stage at 10k, 100k and 1M synthetic cells.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--sizes 10000 100000 1000000]``. Each size runs in its own
process (so peaks are per run); results are merged into ``benchmarks/results/scale.json`` by size, so sizes
can be run separately (the 1M run takes long: start it on its own in the background).

Stages: ``generate`` (the simulator, not part of the pipeline), ``teacher`` (``aggregate``, K=5),
``features`` (stain encoder on every cell's patch), ``features_cached`` (the same call again: reused),
``split``, ``distill_mlp``, ``distill_transformer`` (a fixed number of epochs, so the time is per-sample work
times epochs at every size), ``predict`` (the transformer student on the cached features), ``baseline_kmeans``
and ``baseline_leiden`` (on the same features), ``evaluate`` (student and baselines against the teacher),
``write_zarr`` (``sdata.write`` of the whole object). The report gives growth exponents of time and memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
PIPELINE = ("teacher", "features", "split", "distill_mlp", "distill_transformer", "predict", "baseline_kmeans",
            "baseline_leiden", "evaluate", "write_zarr")  # fmt: skip
# the image is rendered at the stain encoder's own resolution at every size (1 um/px; 1M cells is ~150 Mpx)
IMAGE_MPP, MAX_IMAGE_PIXELS = 1.0, 200_000_000


def worker(n_cells: int, epochs: int, seed: int, threads: int, store: Path) -> None:
    """Run the pipeline once at ``n_cells`` and emit per-stage numbers (after every stage, so a run that is
    stopped keeps what it measured)."""
    import shutil

    import numpy as np
    import torch

    import nichekd as nk

    out: dict = {"n_cells": n_cells, "epochs": epochs, "seed": seed, "threads": threads, "error": None}

    def pin_threads() -> None:
        # histology_features sets torch to all cores; the benchmark fixes the count for every stage
        torch.set_num_threads(threads)
        out["stages"] = stage.records
        _common.emit(out)

    stage = _common.Stages(before=pin_threads)
    try:
        with stage("generate"):
            sdata = nk.datasets.synthetic_tissue(
                n_cells, random_state=seed, mpp=IMAGE_MPP, max_image_pixels=MAX_IMAGE_PIXELS, progress=False
            )
        table = sdata.tables["table"]
        out["image_px"] = [int(s) for s in sdata.images["synthetic_he"]["scale0"]["image"].shape[1:]]
        with stage("teacher"):
            nk.tl.teacher_niches(sdata, n_niches=5, method="aggregate", random_state=seed, progress=False)
        with stage("features"):
            nk.pp.histology_features(sdata, backbone="stain", key_added="he_features", device="cpu")
        with stage("features_cached"):
            nk.pp.histology_features(sdata, backbone="stain", key_added="he_features", device="cpu")
        with stage("split"):
            nk.pp.spatial_split(sdata)
        common = {
            "features_key": "he_features",
            "epochs": epochs,
            "patience": epochs,
            "device": "cpu",
            "random_state": seed,
            "progress": False,
        }
        with stage("distill_mlp"):
            nk.tl.distill(sdata, architecture="mlp", key_added="student_mlp", **common)
        with stage("distill_transformer"):
            model = nk.tl.distill(sdata, architecture="transformer", key_added="student_tf", **common)
        with stage("predict"):
            nk.tl.predict_niches(sdata, model=model, key_added="predicted", device="cpu")
        for method in ("kmeans", "leiden"):
            with stage(f"baseline_{method}"):
                nk.tl.histology_baseline(sdata, method=method, n_niches=5, features_key="he_features",
                                         random_state=seed)  # fmt: skip
        with stage("evaluate"):
            scores = nk.tl.evaluate(sdata, predictions=["student_tf", "he_kmeans_niche", "he_leiden_niche"])
        out["test_ari"] = {k: float(v) for k, v in scores["ari"].items()}
        with stage("write_zarr"):
            shutil.rmtree(store, ignore_errors=True)
            sdata.write(store)
        test = (table.obs["split"] == "test").to_numpy()
        truth = table.obs["teacher_niche"].astype(str).to_numpy()
        out["test_accuracy"] = {
            k: float(np.mean(table.obs[k].astype(str).to_numpy()[test] == truth[test]))
            for k in ("student_mlp", "student_tf", "predicted")
        }
    except Exception as err:  # record how far it got; the parent still reports the stages that ran
        out["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    shutil.rmtree(store, ignore_errors=True)
    out["stages"] = stage.records
    _common.emit(out)


def run(sizes, epochs: int = 1, seed: int = 0, threads: int = 1, timeout_s: float | None = None) -> dict:
    """Run each size in its own process and merge into ``results/scale.json``."""
    data = _common.load_results("scale") or {"runs": {}}
    for n in sizes:
        log = _common.WORK_DIR / f"scale_{n}.log"
        print(f"scale: {n} cells (log {log})", flush=True)
        res = _common.run_worker(
            [str(Path(__file__).resolve()), "--worker", "--n", str(n), "--epochs", str(epochs), "--seed",
             str(seed), "--threads", str(threads), "--store", str(_common.WORK_DIR / f"scale_{n}.zarr")],
            log,
            timeout_s=timeout_s,
        )  # fmt: skip
        res["machine"] = _common.machine()
        data["runs"][str(n)] = res
        _common.save_results("scale", data)  # after every size, so a long run keeps what it measured
    return data


def with_running(data: dict | None) -> dict | None:
    """``data`` plus any size whose worker is still running (or was stopped): its stages so far, from the log."""
    import json

    data = {"runs": dict((data or {}).get("runs", {}))}
    for log in sorted(_common.WORK_DIR.glob("scale_*.log")):
        n = log.stem.split("_")[-1]
        if not n.isdigit() or n in data["runs"]:
            continue
        last = [
            ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(_common.RESULT_MARK)
        ]
        if not last:
            continue
        res = json.loads(last[-1][len(_common.RESULT_MARK) :])
        if not res.get("stages"):
            continue
        done = max(rec["seconds"] for rec in res["stages"].values())
        res["error"] = (
            res.get("error") or "partial: the run was still going (or was stopped) when this was written"
        )
        res["process"] = {"wall_s": float("nan"), "peak_rss_mb": max(r["peak_mb"] for r in res["stages"].values()),
                          "cpu_s": float("nan"), "returncode": None, "log": str(log.relative_to(_common.REPO))}  # fmt: skip
        res["machine"] = {"load_average_1min": "n/a", "date": f"log {log.name}, longest stage {done:.0f} s"}
        data["runs"][n] = res
    return data if data["runs"] else None


def pipeline_seconds(run: dict) -> float:
    return sum(run.get("stages", {}).get(s, {}).get("seconds", float("nan")) for s in PIPELINE)


def report(data: dict | None) -> list[str]:
    """The RESULTS.md section."""
    if not data or not data.get("runs"):
        return ["_not run yet: `python benchmarks/run_all.py --only scale`_", ""]
    runs = sorted(data["runs"].values(), key=lambda r: r.get("n_cells", 0))
    stages = ["generate", *PIPELINE[:2], "features_cached", *PIPELINE[2:]]
    lines = [
        "Synthetic cells (`synthetic_tissue`, cell mode, H&E at 1 um/px), teacher `aggregate` K=5, stain "
        f"encoder, students trained for a fixed {runs[0].get('epochs')} epochs (no early stop) so that time is "
        "comparable across sizes. One process per size; time is wall clock, memory is the resident-set peak "
        "(per stage: high-water mark reset before the stage; per run: `ru_maxrss` of the process).",
        "",
        "| stage | "
        + " | ".join(f"{r['n_cells']:,} cells: time / peak" for r in runs)
        + " | growth exponent |",
        "|---|" + "---|" * (len(runs) + 1),
    ]
    for s in stages:
        cells, ns, ts = [], [], []
        for r in runs:
            rec = r.get("stages", {}).get(s)
            if rec is None:
                cells.append("not reached" if r.get("error") or r["process"]["returncode"] != 0 else "n/a")
                continue
            cells.append(f"{_common.fmt_seconds(rec['seconds'])} / {rec['peak_mb'] / 1024:.2f} GB")
            ns.append(r["n_cells"])
            ts.append(rec["seconds"])
        slope = _common.loglog_slope(ns, ts) if s != "features_cached" else float("nan")
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {slope:.2f} |".replace("nan", "n/a"))
    totals = [pipeline_seconds(r) for r in runs]
    lines.append(
        "| **pipeline (teacher to zarr write)** | "
        + " | ".join(f"**{_common.fmt_seconds(t)}**" for t in totals)
        + f" | {_common.loglog_slope([r['n_cells'] for r in runs], totals):.2f} |".replace("nan", "n/a")
    )
    lines.append(
        "| whole process (incl. generate) | "
        + " | ".join(
            f"{_common.fmt_seconds(r['process']['wall_s'])} / {r['process']['peak_rss_mb'] / 1024:.2f} GB"
            if r["process"]["returncode"] is not None
            else f"running / >= {r['process']['peak_rss_mb'] / 1024:.2f} GB"
            for r in runs
        )
        + f" | memory {_common.loglog_slope([r['n_cells'] for r in runs], [r['process']['peak_rss_mb'] for r in runs]):.2f} |".replace(
            "nan", "n/a"
        )
    )
    lines.append("")
    for r in runs:
        extra = []
        if r.get("image_px"):
            extra.append(f"image {r['image_px'][1]} x {r['image_px'][0]} px")
        if "features" in r.get("stages", {}):
            extra.append(f"features {r['n_cells'] / r['stages']['features']['seconds']:.0f} patches/s")
        if r.get("test_ari"):
            extra.append(
                "test ARI vs teacher: " + ", ".join(f"{k} {v:.3f}" for k, v in r["test_ari"].items())
            )
        if r.get("test_accuracy"):
            extra.append(
                "test accuracy vs teacher: "
                + ", ".join(f"{k} {v:.3f}" for k, v in r["test_accuracy"].items())
            )
        if r.get("error"):
            extra.append(f"**stopped: {r['error']}**")
        if r["process"]["returncode"] not in (0, None):
            extra.append(f"**process exit code {r['process']['returncode']}** (log `{r['process']['log']}`)")
        lines.append(
            f"- {r['n_cells']:,} cells: " + "; ".join(extra) + f"; load average at the end "
            f"{r['machine']['load_average_1min']} ({r['machine']['date']})"
        )
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--epochs", type=int, default=1, help="student epochs (fixed, no early stop)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per size")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        worker(args.n, args.epochs, args.seed, args.threads, args.store)
        return
    data = run(args.sizes, epochs=args.epochs, seed=args.seed, threads=args.threads, timeout_s=args.timeout)
    print("\n".join(report(data)))


if __name__ == "__main__":
    main()
