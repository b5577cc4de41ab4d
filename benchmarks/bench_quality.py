"""Student vs the histology baselines (ARI, NMI against the teacher on held-out cells, mean ± sd over seeds).

Run: ``.venv/bin/python benchmarks/bench_quality.py [--seeds 0 1 2] [--only synthetic|st_mob]``.

Every run: stain-encoder features; a leak-free split; teacher ``aggregate`` (K niches) on expression, fitted
outside the test side; students (MLP and transformer, default settings) distilled on the train cells;
baselines on the same features, fitted on the same training cells (Leiden and k-means on the PCA of the
features, and the teacher's own method on image features); all scored
against the teacher on the test cells with :func:`nichekd.tl.evaluate`. On synthetic data the teacher and the
student are also scored against the ground-truth niches. The seed sets the simulated tissue and every method.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

PREDICTIONS = {
    "student_mlp": "student (MLP)",
    "student_tf": "student (transformer)",
    "he_leiden_niche": "Leiden on features",
    "he_kmeans_niche": "k-means on features",
    "he_teacher_niche": "teacher's method on features",
}
# synthetic settings: cell mode ~5k cells; spot mode 60k cells give ~1,000 Visium-like spots
SYNTHETIC = [("cell", 5, 5_000), ("cell", 10, 5_000), ("spot", 5, 60_000), ("spot", 10, 60_000)]
ST_MOB_SPLITS = {"strips": {"method": "strips"}, "held-out sections": {"method": "libraries",
                                                                       "test_libraries": ["MOB2", "MOB4"]}}  # fmt: skip
ST_MOB_K = 5


def _pipeline(sdata, k: int, seed: int, split: dict, standardize: str | None) -> dict:
    """Teacher, features, split, students, baselines and scores on one dataset."""
    import torch

    import nichekd as nk

    table = sdata.tables["table"]
    if "he_features" not in table.obsm:
        nk.pp.histology_features(
            sdata, backbone="stain", key_added="he_features", device="cpu", standardize=standardize
        )
    torch.set_num_threads(1)  # the shared 2-core machine: one thread is faster than two contending ones
    # the paper's protocol (the README's order): the split first, then a teacher fitted outside the test side
    nk.pp.spatial_split(sdata, **split, features_key="he_features")
    if standardize is not None:  # the library z-score from the training cells only, now that the split exists
        nk.pp.histology_features(sdata, backbone="stain", key_added="he_features", device="cpu",
                                 standardize=standardize, overwrite=True)  # fmt: skip
        torch.set_num_threads(1)
    nk.tl.teacher_niches(sdata, n_niches=k, method="aggregate", random_state=seed, progress=False)
    for arch, key in (("mlp", "student_mlp"), ("transformer", "student_tf")):
        nk.tl.distill(sdata, features_key="he_features", architecture=arch, key_added=key, random_state=seed,
                      device="cpu", progress=False)  # fmt: skip
    for method in ("leiden", "kmeans", "teacher"):
        nk.tl.histology_baseline(
            sdata, method=method, n_niches=k, features_key="he_features", random_state=seed
        )
    scores = nk.tl.evaluate(sdata, teacher_key="teacher_niche", predictions=list(PREDICTIONS))
    out = {"vs_teacher": scores[["ari", "nmi"]].to_dict(orient="index"),
           "n_test": int(scores["n_cells"].iloc[0])}  # fmt: skip
    if "true_niche" in table.obs:
        truth = nk.tl.evaluate(
            sdata,
            truth="true_niche",
            predictions=["teacher_niche", "student_mlp", "student_tf"],
            split_key=None,
        )
        out["vs_truth_all_cells"] = truth[["ari", "nmi"]].to_dict(orient="index")
    return out


def run(seeds=(0, 1, 2), only: str | None = None) -> dict:
    import nichekd as nk

    rows = []
    if only in (None, "synthetic"):
        for mode, k, n_cells in SYNTHETIC:
            for seed in seeds:
                t0 = time.perf_counter()
                row = {"dataset": "synthetic", "mode": mode, "k": k, "n_cells": n_cells, "seed": seed}
                try:
                    sdata = nk.datasets.synthetic_tissue(
                        n_cells, n_niches=k, mode=mode, random_state=seed, progress=False
                    )
                    row["n_obs"] = sdata.tables["table"].n_obs
                    row.update(_pipeline(sdata, k, seed, {"method": "strips"}, None))
                except Exception as err:
                    row["error"] = f"{type(err).__name__}: {err}"
                    traceback.print_exc()
                row["seconds"] = time.perf_counter() - t0
                print(f"quality {row['dataset']} {mode} K={k} seed={seed}: {row.get('vs_teacher', row.get('error'))}",
                      flush=True)  # fmt: skip
                rows.append(row)
    if only in (None, "st_mob"):
        try:
            nk.datasets.resolve_data_dir(dataset="st_mob")
            available = True
        except FileNotFoundError as err:
            print(f"st_mob skipped: {err}")
            available = False
        for name, split in ST_MOB_SPLITS.items() if available else ():
            for seed in seeds:
                t0 = time.perf_counter()
                row = {"dataset": "st_mob", "mode": name, "k": ST_MOB_K, "seed": seed}
                try:
                    sdata = nk.datasets.st_mob()
                    row["n_obs"] = sdata.tables["table"].n_obs
                    row.update(_pipeline(sdata, ST_MOB_K, seed, split, "library"))
                except Exception as err:
                    row["error"] = f"{type(err).__name__}: {err}"
                    traceback.print_exc()
                row["seconds"] = time.perf_counter() - t0
                print(
                    f"quality st_mob {name} seed={seed}: {row.get('vs_teacher', row.get('error'))}",
                    flush=True,
                )
                rows.append(row)
    old = _common.load_results("quality") or {"rows": []}
    ran = {(r["dataset"], r["mode"], r["k"]) for r in rows}
    kept = [r for r in old["rows"] if (r["dataset"], r["mode"], r["k"]) not in ran]
    data = {"machine": _common.machine(), "rows": kept + rows}
    _common.save_results("quality", data)
    return data


def report(data: dict | None) -> list[str]:
    """The RESULTS.md section."""
    if not data or not data.get("rows"):
        return ["_not run yet: `python benchmarks/run_all.py --only quality`_", ""]
    import pandas as pd

    rows = pd.DataFrame(data["rows"])
    lines = [
        "ARI / NMI against the teacher's niches on the **test** cells, mean ± sd over seeds "
        f"({sorted(set(rows['seed']))}). Features: stain encoder (27 handcrafted features; `standardize='library'` "
        "on st_mob). Students: `nk.tl.distill` defaults. Split: 2nd of 4 strips per section "
        "(buffer half a patch), or whole held-out sections (st_mob MOB2 + MOB4, one per animal).",
        "",
    ]
    groups = rows.groupby(["dataset", "mode", "k"], sort=False)
    header = "| method | " + " | ".join(
        f"{d} {m} K={k} (n={int(g['n_obs'].iloc[0]) if 'n_obs' in g and g['n_obs'].notna().any() else '?'})"
        for (d, m, k), g in groups
    )
    lines += [header + " |", "|---|" + "---|" * groups.ngroups]
    for metric in ("ari", "nmi"):
        for key, label in PREDICTIONS.items():
            cells = []
            for _, g in groups:
                vals = [
                    r["vs_teacher"][key][metric]
                    for r in g.to_dict("records")
                    if isinstance(r.get("vs_teacher"), dict)
                ]
                cells.append(_common.mean_sd(vals) if vals else "failed")
            lines.append(f"| {label}: {metric.upper()} | " + " | ".join(cells) + " |")
    lines += ["", "Agreement with the simulator's ground-truth niches (synthetic only, all cells):", ""]
    syn = rows[rows["dataset"] == "synthetic"]
    if len(syn) and "vs_truth_all_cells" in syn:
        sgroups = syn.groupby(["mode", "k"], sort=False)
        lines += [
            "| | " + " | ".join(f"{m} K={k}" for (m, k), _ in sgroups) + " |",
            "|---|" + "---|" * sgroups.ngroups,
        ]
        for key, label in (("teacher_niche", "teacher"), ("student_mlp", "student (MLP)"),
                           ("student_tf", "student (transformer)")):  # fmt: skip
            for metric in ("ari", "nmi"):
                cells = []
                for _, g in sgroups:
                    vals = [r["vs_truth_all_cells"][key][metric] for r in g.to_dict("records")
                            if isinstance(r.get("vs_truth_all_cells"), dict)]  # fmt: skip
                    cells.append(_common.mean_sd(vals) if vals else "failed")
                lines.append(f"| {label} vs truth: {metric.upper()} | " + " | ".join(cells) + " |")
    errors = [r for r in data["rows"] if r.get("error")]
    lines.append("")
    for r in errors:
        lines.append(f"- **failed**: {r['dataset']} {r['mode']} K={r['k']} seed {r['seed']}: {r['error']}")
    total = sum(r.get("seconds", 0) for r in data["rows"])
    lines += [f"Wall time of all quality runs: {_common.fmt_seconds(total)}.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=["synthetic", "st_mob"], default=None)
    args = parser.parse_args()
    data = run(args.seeds, args.only)
    print("\n".join(report(data)))


if __name__ == "__main__":
    main()
