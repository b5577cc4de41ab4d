"""The annotation probe (the paper's external check) on DLPFC cortical layers and on synthetic true niches.

Run: ``python benchmarks/bench_annotation_probe.py``; writes ``benchmarks/results_annotation_probe.md``.

- ``dlpfc_donor1`` (lowres H&E and manual layers L1-L6/WM only, no counts): a ``labels`` teacher (the layers)
  on sections 151507/151508, the student (MLP on stain features, per-section z-scores) trained there and
  predicting 151509/151510; histology baselines (Leiden, k-means, on [own, neighbour-mean] features, and the
  teacher's method on image features) on the same features. The probe (RBF SVM, balanced classes) learns the
  layer from each assignment on one held-out section and is scored on the other (macro-F1), both ways.
- Synthetic tissue (6,000 cells, K=5, true niches known): the expression teacher, the student, and
  Leiden/k-means on H&E, probed for the true niche across 2x2 spatial blocks of the test strip.

Every assignment enters the probe one-hot (the default), and only held-out cells are probed.

Chance: macro-F1 of guessing labels at the training fold's frequencies (mean of 20 draws).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pandas as pd
import torch

import nichekd as nk

OUT = Path(__file__).resolve().parent / "results_annotation_probe.md"


def _md(df: pd.DataFrame) -> list[str]:
    folds = [c for c in df.columns if c not in ("macro_f1", "sd", "input")]
    lines = [
        "| assignment | input | macro-F1 (mean) | " + " | ".join(folds) + " |",
        "|---|---|---|" + "---|" * len(folds),
    ]
    for k, row in df.iterrows():
        lines.append(
            f"| {k} | {row['input']} | {row['macro_f1']:.3f} | "
            + " | ".join(f"{row[f]:.3f}" for f in folds)
            + " |"
        )
    return lines


def _baselines(sdata, k: int) -> list[str]:
    keys = []
    for method, nb in (("leiden", False), ("leiden", True), ("kmeans", True), ("teacher", False)):
        key = f"he_{method}{'_nb' if nb else ''}_niche"
        nk.tl.histology_baseline(
            sdata, method=method, n_niches=k, features_key="he", neighbourhood=nb, key_added=key
        )
        keys.append(key)
    return keys


def dlpfc() -> list[str]:
    t0 = time.perf_counter()
    sdata = nk.datasets.dlpfc()
    t = sdata["table"]
    nk.tl.teacher_niches(sdata, n_niches=None, method="labels", labels_key="layer", progress=False)
    # the split first: the per-section z-score of the training sections then ignores the held-out ones
    nk.pp.spatial_split(sdata, method="libraries", test_libraries=["151509", "151510"])
    nk.pp.histology_features(
        sdata, backbone="stain", patch_size_um=150.0, key_added="he", device="cpu", standardize="library"
    )
    torch.set_num_threads(1)
    nk.tl.distill(sdata, features_key="he", architecture="mlp", progress=False, device="cpu")
    keys = ["student_niche", *_baselines(sdata, 7)]
    df = nk.tl.annotation_probe(sdata, annotation_key="layer", keys=keys, groups="libraries")
    return [
        "## dlpfc_donor1: labels teacher on 151507/151508, probe on 151509/151510",
        "",
        f"{t.n_obs} annotated spots; stain features of 150 um patches on the lowres H&E; K=7 for the baselines; "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        *_md(df),
        "",
    ]


def synthetic() -> list[str]:
    t0 = time.perf_counter()
    sdata = nk.datasets.synthetic_tissue(6000, n_niches=5, random_state=0, progress=False)
    nk.pp.histology_features(sdata, backbone="stain", key_added="he", device="cpu")
    torch.set_num_threads(1)
    nk.pp.spatial_split(sdata, features_key="he")
    nk.tl.teacher_niches(sdata, n_niches=5, progress=False)
    nk.tl.distill(sdata, features_key="he", architecture="mlp", progress=False, device="cpu")
    keys = ["teacher_niche", "student_niche", *_baselines(sdata, 5)]
    df = nk.tl.annotation_probe(sdata, annotation_key="true_niche", keys=keys, groups="blocks", n_blocks=2)
    return [
        "## Synthetic tissue: probe of the true niche on the test strip, 2x2 spatial blocks of it",
        "",
        f"6,000 cells, K=5, seed 0, stain features; teacher, student and baselines fitted outside the test strip; "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        *_md(df),
        "",
    ]


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines = ["# Annotation probe (issue 13, item 3)", "", __doc__.split("\n\n", 1)[1].strip(), ""]
    lines += dlpfc()
    lines += synthetic()
    lines.append(
        f"Total wall time {time.perf_counter() - t0:.0f} s on a shared 2-core CPU, one torch thread."
    )
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
