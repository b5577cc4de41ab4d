"""Teacher methods compared: how soft, how calibrated, how right, and what the student learns from each.

Run: ``python benchmarks/bench_teachers.py [--seeds 0 1 2] [--only synthetic|st_mob|kidney]``; writes
``benchmarks/results_teachers.md``. Teachers: the Gaussian mixture on neighbourhood-averaged PCA
(``aggregate``, raw log posteriors), the same with ``calibrate="neighbours"`` (one temperature fitted so that a
cell's probabilities predict its neighbours' niches), and the NOLAN-like ``transformer``. On synthetic tissue
(true niches known) each teacher is scored against the truth on all cells (ARI, Hungarian-matched accuracy,
expected calibration error of its max probability, max-probability histogram) and the student (MLP on stain
features, spatial strips, default ``distill``) against the truth on the test strip. On ``st_mob`` (4 sections,
batch-aware teacher) and the kidney crop, where no truth exists, the student's ARI against its own teacher on
the held-out strip is reported. Small runs on a shared 2-core CPU, one torch thread.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

import nichekd as nk

OUT = Path(__file__).resolve().parent / "results_teachers.md"
TEACHERS = {
    "aggregate (raw posteriors)": {"method": "aggregate"},
    "aggregate, calibrate='neighbours'": {"method": "aggregate", "calibrate": "neighbours"},
    "transformer": {"method": "transformer"},
}
BINS = np.linspace(0, 1, 11)


def matched_correct(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Whether each prediction equals the truth after Hungarian matching of the label sets."""
    k = max(pred.max(), truth.max()) + 1
    overlap = np.zeros((k, k))
    np.add.at(overlap, (pred, truth), 1)
    r, c = linear_sum_assignment(-overlap)
    mapping = np.full(k, -1)
    mapping[r] = c
    return mapping[pred] == truth


def ece(proba: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error of the max probability (10 equal-width bins)."""
    conf = proba.max(1)
    bins = np.minimum((conf * 10).astype(int), 9)
    return float(sum(abs(conf[bins == b].mean() - correct[bins == b].mean()) * (bins == b).mean()
                     for b in range(10) if (bins == b).any()))  # fmt: skip


def student_vs(table, truth: str) -> float:
    test = (table.obs["split"] == "test").to_numpy()
    return adjusted_rand_score(table.obs[truth][test], table.obs["student_niche"][test])


def synthetic(seeds: list[int], n_cells: int, k: int) -> list[str]:
    rows, hist = [], {}
    for seed in seeds:
        sdata = nk.datasets.synthetic_tissue(n_cells, n_niches=k, random_state=seed, progress=False)
        nk.pp.histology_features(sdata, backbone="stain", key_added="he", device="cpu")
        torch.set_num_threads(1)
        nk.pp.spatial_split(sdata, features_key="he")
        t = sdata["table"]
        truth = t.obs["true_niche"].cat.codes.to_numpy()
        for name, kw in TEACHERS.items():
            t0 = time.perf_counter()
            nk.tl.teacher_niches(t, n_niches=k, random_state=seed, progress=False, device="cpu", **kw)
            secs = time.perf_counter() - t0
            p = t.obsm["teacher_niche_proba"]
            correct = matched_correct(p.argmax(1), truth)
            nk.tl.distill(sdata, features_key="he", architecture="mlp", progress=False, device="cpu",
                          random_state=seed)  # fmt: skip
            test = (t.obs["split"] == "test").to_numpy()
            rows.append({
                "teacher": name, "seed": seed, "T": t.uns["teacher_niche"]["params"].get("temperature", 1.0),
                "ari": adjusted_rand_score(truth, p.argmax(1)), "acc": correct.mean(),
                "maxp": p.max(1).mean(), "gt099": (p.max(1) > 0.99).mean(), "ece": ece(p, correct),
                "student_truth": adjusted_rand_score(truth[test], t.obs["student_niche"][test]),
                "student_teacher": student_vs(t, "teacher_niche"), "s": secs,
            })  # fmt: skip
            hist.setdefault(name, []).append(np.histogram(p.max(1), BINS)[0] / len(p))
            print(
                {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in rows[-1].items()}, flush=True
            )
    lines = [f"## Synthetic tissue ({n_cells} cells, K={k}, seeds {seeds}, stain features, MLP student)", "",
             "Teacher scored against the true niches on all cells; student on the test strip (2nd of 4). "
             "Mean over seeds (± sd for ARIs).", "",
             "| teacher | T | teacher ARI vs truth | matched accuracy | mean max p | share max p > 0.99 | ECE "
             "vs truth | student ARI vs truth (test) | student ARI vs teacher (test) | teacher s |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in TEACHERS:
        r = [x for x in rows if x["teacher"] == name]

        def m(key, sd=False, r=r):
            v = np.array([x[key] for x in r], dtype=float)
            return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if sd and len(v) > 1 else f"{v.mean():.3f}"

        lines.append(f"| {name} | {m('T')} | {m('ari', True)} | {m('acc')} | {m('maxp')} | {m('gt099')} | "
                     f"{m('ece')} | {m('student_truth', True)} | {m('student_teacher', True)} | {m('s')} |")  # fmt: skip
    lines += ["", "Max-probability histogram (share of cells per bin of the teacher's max probability, mean over "
              "seeds; with K niches the max is at least 1/K):", "",
              "| teacher | " + " | ".join(f"{a:.1f}-{b:.1f}" for a, b in zip(BINS[:-1], BINS[1:], strict=True))
              + " |", "|---|" + "---|" * 10]  # fmt: skip
    for name, h in hist.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in np.mean(h, 0)) + " |")
    return [*lines, ""]


def real(name: str, sdata, k: int, patch_um: float, batch_correct: bool) -> list[str]:
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=patch_um, key_added="he", device="cpu",
                             standardize="library")  # fmt: skip
    torch.set_num_threads(1)
    nk.pp.spatial_split(sdata, features_key="he")
    # the per-section z-score again, from the training cells only now that the split exists
    nk.pp.histology_features(sdata, backbone="stain", patch_size_um=patch_um, key_added="he", device="cpu",
                             standardize="library", overwrite=True)  # fmt: skip
    torch.set_num_threads(1)
    t = sdata["table"]
    lines = [f"## {name} (K={k}, stain features {patch_um:.0f} um, strips, MLP student)", "",
             "| teacher | T | mean max p | student ARI vs its teacher (test strip) | student accuracy |",
             "|---|---|---|---|---|"]  # fmt: skip
    for tname, kw in TEACHERS.items():
        nk.tl.teacher_niches(t, n_niches=k, batch_correct=batch_correct, progress=False, device="cpu", **kw)
        nk.tl.distill(sdata, features_key="he", architecture="mlp", progress=False, device="cpu")
        test = (t.obs["split"] == "test").to_numpy()
        acc = (t.obs["student_niche"][test].astype(str) == t.obs["teacher_niche"][test].astype(str)).mean()
        p = t.obsm["teacher_niche_proba"]
        temp = t.uns["teacher_niche"]["params"].get("temperature", 1.0)
        lines.append(f"| {tname} | {temp:.2f} | {p.max(1).mean():.3f} | {student_vs(t, 'teacher_niche'):.3f} | "
                     f"{acc:.3f} |")  # fmt: skip
        print(lines[-1], flush=True)
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-cells", type=int, default=6000)
    parser.add_argument("--only", choices=["synthetic", "st_mob", "kidney"], default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines = ["# Teacher methods (issue 13, item 1)", "", __doc__.split("\n\n")[1].replace("\n", " "), ""]
    if args.only in (None, "synthetic"):
        lines += synthetic(args.seeds, args.n_cells, 5)
    if args.only in (None, "st_mob"):
        lines += real("st_mob, 4 sections, batch-aware teacher", nk.datasets.st_mob(), 5, 300.0, True)
    if args.only in (None, "kidney"):
        sdata = nk.datasets.visium_hd_kidney_crop()
        t = sdata.tables["table"]
        sdata.tables["table"] = t[t.obs["he_tissue"].astype(bool).to_numpy()].copy()
        lines += real("visium_hd_kidney_crop, bins on tissue", sdata, 5, 64.0, False)
    lines.append(
        f"Total wall time {time.perf_counter() - t0:.0f} s on a shared 2-core CPU, one torch thread."
    )
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
