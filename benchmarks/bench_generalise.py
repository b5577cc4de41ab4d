"""Generalisation across sections: leave-one-section-out on st_mob, leave-one-block-out on the kidney crop.

Run: ``.venv/bin/python benchmarks/bench_generalise.py [--only st_mob|kidney] [--cache DIR]``; writes
``benchmarks/results_generalise.md``. Every row is one ``nk.tl.cross_validate`` run (student defaults of
``nk.tl.distill`` unless the row says otherwise); baselines (Leiden, k-means, each also on
``[own, neighbour-mean]`` features, and the teacher's method on image features) cluster the held-out cells
of the same features and are scored against the same teacher. ``margin`` = student ARI minus the best
baseline's ARI in that fold; the goal is a mean margin >= 0.10 and a positive margin in every fold.
EfficientNet-Lite0 features of st_mob take ~4 min on 2 busy cores: ``--cache`` keeps them as ``.npy``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import nichekd as nk
from nichekd.pp._features import _standardize

OUT = Path(__file__).resolve().parent / "results_generalise.md"
K_MOB, K_KIDNEY = 5, 5
PATCH_MOB_UM = 300.0  # 1.5 spot pitches: the spot and its ring of neighbours


def _features(sdata, key: str, backbone: str, patch_um: float, cache: Path | None, norm: str | None = None,
              standardize: str | None = "library", reference=None) -> None:  # fmt: skip
    """``histology_features`` (raw features cached to ``cache`` as .npy), then per-library standardisation."""
    t = sdata.tables["table"]
    f = None if cache is None else cache / f"{key}.npy"
    if f is not None and f.exists():
        raw = np.load(f)
        params = {"backbone": backbone, "patch_size_um": patch_um, "stain_normalization": norm}
    else:
        out = nk.pp.histology_features(sdata, backbone=backbone, patch_size_um=patch_um, key_added=key,
                                       device="cpu", stain_normalization=norm, stain_reference=reference,
                                       copy=True)  # fmt: skip
        raw, params = out.obsm[key], dict(out.uns[key]["params"])
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.save(f, raw)
    torch.set_num_threads(1)  # histology_features takes every core; the shared machine is faster with one
    libs = t.obs["library"].astype(str).to_numpy()
    t.obsm[key] = _standardize(raw, libs) if standardize == "library" else raw
    t.uns[key] = {"params": {**params, "standardize": standardize}}


def _cv(sdata, rows: list, label: str, *, teacher: str, feats: str, base: pd.DataFrame | None = None,
        **kw) -> pd.DataFrame:  # fmt: skip
    """One cross-validation; baselines run only without ``base`` (a run whose baselines this row reuses)."""
    baselines = base is None
    t0 = time.perf_counter()
    df = nk.tl.cross_validate(
        sdata,
        teacher_key=teacher,
        features_key=feats,
        baselines=("leiden", "kmeans", "teacher") if baselines else (),
        neighbourhood_baselines=baselines,
        progress=False,
        **kw,
    )
    df.attrs.update(label=label, seconds=time.perf_counter() - t0)
    rows.append((df, df if base is None else base))  # not in attrs: pandas deep-copies attrs on every op
    per = df.drop(index=["mean", "std"], level="fold")
    print(f"{label}: student {per.xs('student', level='method')['ari'].round(3).to_dict()}", flush=True)
    return df


def _table(runs: list[tuple[pd.DataFrame, pd.DataFrame]]) -> list[str]:
    """One line per run: student mean ± sd ARI, best baseline mean, margin mean and min over folds."""
    lines = ["| setting | student ARI | best baseline ARI (which) | margin mean | margin min | NMI student | s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for df, base in runs:
        per = df.drop(index=["mean", "std"], level="fold")
        student = per.xs("student", level="method")
        bper = base.drop(index=["mean", "std"], level="fold").drop(index="student", level="method")
        best_per_fold = bper.groupby(level="fold")["ari"].max()
        best_method = bper.groupby(level="method")["ari"].mean().idxmax()
        margin = student["ari"] - best_per_fold.loc[student.index]
        lines.append(
            f"| {df.attrs['label']} | {student['ari'].mean():.3f} ± {student['ari'].std(ddof=1):.3f} | "
            f"{best_per_fold.mean():.3f} ({best_method}) | {margin.mean():+.3f} | {margin.min():+.3f} | "
            f"{student['nmi'].mean():.3f} | {df.attrs['seconds']:.0f} |"
        )
    return lines


def _per_fold(df: pd.DataFrame) -> list[str]:
    per = df.drop(index=["mean", "std"], level="fold")
    wide = per["ari"].unstack("method")
    cols = ["student", *[c for c in wide.columns if c != "student"]]
    lines = ["| held out | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for fold, row in wide[cols].iterrows():
        lines.append(f"| {fold} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    lines.append("| mean | " + " | ".join(f"{wide[c].mean():.3f}" for c in cols) + " |")
    return lines


def st_mob(cache: Path | None) -> list[str]:
    sdata = nk.datasets.st_mob()
    for bc in (True, False):
        nk.tl.teacher_niches(
            sdata, n_niches=K_MOB, batch_correct=bc, key_added=f"teacher_bc{int(bc)}", progress=False
        )
    _features(sdata, "eff", "efficientnet_lite0", PATCH_MOB_UM, cache)
    _features(sdata, "eff_raw", "efficientnet_lite0", PATCH_MOB_UM, cache, standardize=None)
    _features(sdata, "stain", "stain", PATCH_MOB_UM, cache)
    _features(sdata, "stain_reinhard", "stain", PATCH_MOB_UM, cache, norm="reinhard")
    _features(sdata, "stain_macenko", "stain", PATCH_MOB_UM, cache, norm="macenko")
    t0 = time.perf_counter()
    nk.pp.augmented_features(sdata, features_key="stain", n_views=4, device="cpu")
    torch.set_num_threads(1)
    aug_s = time.perf_counter() - t0
    cpu = {"device": "cpu"}
    runs: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    best = _cv(sdata, runs, "**default**: batch-aware teacher, EfficientNet-Lite0 (library-standardised), MLP",
               teacher="teacher_bc1", feats="eff", distill_kwargs=cpu)  # fmt: skip
    _cv(sdata, runs, "teacher fitted jointly without batch correction", teacher="teacher_bc0", feats="eff",
        distill_kwargs=cpu)  # fmt: skip
    _cv(sdata, runs, "features not standardised per section (baselines: standardised)", teacher="teacher_bc1",
        feats="eff_raw", base=best, distill_kwargs=cpu)  # fmt: skip
    _cv(sdata, runs, "transformer instead of MLP", teacher="teacher_bc1", feats="eff", base=best,
        architecture="transformer", distill_kwargs=cpu)  # fmt: skip
    for nbrs in (5, 20):
        _cv(sdata, runs, f"student neighbourhood: {nbrs} neighbours (default: the teacher's, ~10)",
            teacher="teacher_bc1", feats="eff", base=best,
            distill_kwargs={**cpu, "radius_um": None, "n_neighbors_target": nbrs})  # fmt: skip
    _cv(sdata, runs, "128 whitened PCs of the 1280-d features (old default)", teacher="teacher_bc1",
        feats="eff", base=best, distill_kwargs={**cpu, "n_components": 128})  # fmt: skip
    stain = _cv(sdata, runs, "stain features (27-d), no stain normalisation, no augmentation",
                teacher="teacher_bc1", feats="stain", distill_kwargs={**cpu, "augmented_key": None})  # fmt: skip
    for feats, label in (("stain_reinhard", "stain features, Reinhard normalisation"),
                         ("stain_macenko", "stain features, Macenko normalisation")):  # fmt: skip
        _cv(sdata, runs, label + " (baselines: unnormalised)", teacher="teacher_bc1", feats=feats, base=stain,
            distill_kwargs=cpu)  # fmt: skip
    _cv(sdata, runs, "stain features + 4 augmented views (HED jitter, flips, rotations, scale)",
        teacher="teacher_bc1", feats="stain", base=stain, distill_kwargs=cpu)  # fmt: skip
    _cv(sdata, runs, "stain features + 4 augmented views + test-time augmentation", teacher="teacher_bc1",
        feats="stain", base=stain, distill_kwargs={**cpu, "tta": True})  # fmt: skip
    lines = ["## st_mob: leave one section out (4 folds: MOB1-MOB4, two animals)", "",
             f"K={K_MOB} teacher on all sections jointly; patches {PATCH_MOB_UM:.0f} um; augmented views of the "
             f"stain features took {aug_s:.0f} s.", "", *_table(runs), "",
             "Per held-out section, default setting (ARI vs the teacher):", "", *_per_fold(best), ""]  # fmt: skip
    return lines


def kidney(cache: Path | None) -> list[str]:
    sdata = nk.datasets.visium_hd_kidney_crop()
    t = sdata.tables["table"]
    if "he_tissue" in t.obs:  # bins off the stained tissue have no morphology to learn from
        sdata.tables["table"] = t = t[t.obs["he_tissue"].astype(bool).to_numpy()].copy()
    for bc in (True,):
        nk.tl.teacher_niches(
            sdata, n_niches=K_KIDNEY, key_added="teacher_bc1", batch_correct=bc, progress=False
        )
    _features(sdata, "stain", "stain", 64.0, None if cache is None else cache / "kidney")
    runs: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    cpu = {"device": "cpu"}
    best = _cv(sdata, runs, "default MLP, stain features (64 um patches)", teacher="teacher_bc1", feats="stain",
               folds="blocks", n_blocks=2, distill_kwargs=cpu)  # fmt: skip
    _cv(sdata, runs, "transformer instead of MLP", teacher="teacher_bc1", feats="stain", base=best,
        folds="blocks", n_blocks=2, architecture="transformer", distill_kwargs=cpu)  # fmt: skip
    return ["## visium_hd_kidney_crop: leave one spatial block out (2 x 2 blocks, 32 um buffer)", "",
            f"{t.n_obs} bins on tissue, K={K_KIDNEY}, stain encoder (EfficientNet at ~15 patches/s is too slow "
            "for 15k bins here).", "", *_table(runs), "", "Per held-out block, default setting:", "",
            *_per_fold(best), ""]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["st_mob", "kidney"], default=None)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines = ["# Generalisation across sections (issue 9)", "", __doc__.split("\n\n")[1], ""]
    if args.only in (None, "st_mob"):
        lines += st_mob(args.cache)
    if args.only in (None, "kidney"):
        lines += kidney(args.cache)
    lines.append(f"Total wall time {time.perf_counter() - t0:.0f} s, `torch.set_num_threads(1)`, CPU.")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
