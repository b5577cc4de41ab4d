"""The whole nichekd pipeline on the embedded synthetic tissue, as a script (``make demo``).

synthetic tissue -> teacher niches -> H&E features -> spatial split -> distilled student (transformer) ->
histology-only baselines -> evaluation on the held-out strip; writes the SpatialData zarr store, the saved
student and the figures as PNGs, and prints the metrics table.

Run ``python -m nichekd.demo --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

FIGURES = ("niche_map", "uncertainty", "composition", "agreement", "training")


def run_demo(
    out: str | Path = "demo_output",
    *,
    n_cells: int = 5000,
    n_niches: int = 5,
    seed: int = 0,
    backbone: str = "stain",
    architecture: str = "transformer",
    epochs: int = 15,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the quickstart pipeline end to end and write its outputs to ``out``.

    Parameters
    ----------
    out
        Output folder; created if missing. Gets ``synthetic.zarr``, ``student_model/``, ``metrics.csv`` and
        one PNG per figure (``niche_map``, ``uncertainty``, ``composition``, ``agreement``, ``training``).
    n_cells
        Cells of the synthetic tissue.
    n_niches
        Niches of the teacher (and of the baselines).
    seed
        Seed of the tissue, the teacher, the split, the student and the baselines.
    backbone
        Histology encoder (see ``nk.pp.list_backbones()``); ``"stain"`` is the fast handcrafted one.
    architecture
        Student architecture, ``"transformer"`` or ``"mlp"``.
    epochs
        Maximum training epochs of the student.
    progress
        Show progress bars.

    Returns
    -------
    The metrics table: one row per prediction (student and the two baselines) on the test strip.

    Examples
    --------
    >>> from nichekd.demo import run_demo
    >>> table = run_demo("demo_output", n_cells=2000, epochs=5)  # doctest: +SKIP
    """
    # the backend must be set before pyplot is first imported: the script never opens windows
    import matplotlib

    matplotlib.use("Agg")
    # zarr announces a future default on every array it writes; nothing for a demo user to act on
    warnings.filterwarnings("ignore", message="zarr v3 autosharding")
    import matplotlib.pyplot as plt

    import nichekd as nk

    if n_cells < 500:
        raise ValueError(f"n_cells={n_cells} is too small for a teacher, a split and a student; use >= 500.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "synthetic.zarr"
    model_dir = out / "student_model"
    features_key = "he_features"

    start = time.perf_counter()

    def step(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    step(f"synthetic tissue: {n_cells} cells, {n_niches} niches, seed {seed}")
    sdata = nk.datasets.synthetic_tissue(
        n_cells=n_cells, n_niches=n_niches, random_state=seed, progress=progress
    )
    step(f"H&E features ({backbone})")
    nk.pp.histology_features(sdata, backbone=backbone, key_added=features_key)
    step("spatial split: 4 horizontal strips, the 2nd from the top is the test strip")
    nk.pp.spatial_split(sdata, random_state=seed)
    step("teacher niches from expression, fitted outside the test strip")
    nk.tl.teacher_niches(sdata, n_niches=n_niches, random_state=seed, progress=progress)
    step(f"distilling the student ({architecture}, <= {epochs} epochs)")
    student = nk.tl.distill(
        sdata,
        model=nk.models.NicheStudent(architecture=architecture, epochs=epochs),
        features_key=features_key,
        random_state=seed,
        progress=progress,
    )
    step("baselines on the H&E features: Leiden, and the teacher's method")
    nk.tl.histology_baseline(
        sdata, method="leiden", n_niches=n_niches, features_key=features_key, random_state=seed
    )
    nk.tl.histology_baseline(
        sdata, method="teacher", n_niches=n_niches, features_key=features_key, random_state=seed
    )
    predictions = ["student_niche", "he_leiden_niche", "he_teacher_niche"]
    metrics = nk.tl.evaluate(sdata, predictions=predictions, cell_type_key="cell_type")
    metrics.to_csv(out / "metrics.csv")

    step("figures")
    figs = {
        "niche_map": lambda p: nk.pl.niche_map(
            sdata, keys=["teacher_niche", "student_niche"], show_split=True, save=p, show=False
        ),
        "uncertainty": lambda p: nk.pl.uncertainty(sdata, show_split=True, save=p, show=False),
        "composition": lambda p: nk.pl.compare_compositions(sdata, split="test", save=p, show=False),
        "agreement": lambda p: nk.pl.agreement(sdata, split="test", save=p, show=False),
        "training": lambda p: nk.pl.training(sdata, save=p, show=False),
    }
    for name, draw in figs.items():
        draw(out / f"{name}.png")
        plt.close("all")

    step(f"writing {store.name} and {model_dir.name}/")
    student.save(model_dir)
    nk.io.write(sdata, store, overwrite=True)  # atomic: a failed write keeps the previous store
    step("done")
    return metrics


def format_metrics(metrics: pd.DataFrame) -> str:
    """The headline columns of the metrics table as aligned text."""
    cols = [c for c in ("ari", "nmi", "accuracy", "macro_f1", "composition_jsd", "n_cells") if c in metrics]
    return metrics[cols].to_string(float_format=lambda v: f"{v:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: ``python -m nichekd.demo --out demo_output``."""
    parser = argparse.ArgumentParser(prog="python -m nichekd.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--n-cells", type=int, default=5000, help="cells of the synthetic tissue")
    parser.add_argument("--n-niches", type=int, default=5, help="niches of the teacher")
    parser.add_argument("--seed", type=int, default=0, help="seed of every step")
    parser.add_argument("--backbone", default="stain", help="H&E encoder: stain (fast) or efficientnet_lite0")
    parser.add_argument("--architecture", default="transformer", choices=["transformer", "mlp"])
    parser.add_argument("--epochs", type=int, default=15, help="maximum student epochs")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        metrics = run_demo(
            args.out,
            n_cells=args.n_cells,
            n_niches=args.n_niches,
            seed=args.seed,
            backbone=args.backbone,
            architecture=args.architecture,
            epochs=args.epochs,
            progress=not args.no_progress,
        )
    except (ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\nNiches on the held-out test strip (truth: the teacher):")
    print(format_metrics(metrics))
    print(f"\nOutputs in {os.path.abspath(args.out)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
