"""H&E-only prediction from a saved student: mean neighbour count per tile vs training (issue 13 item 6).

For st_mob (train on MOB1-MOB3 spots, predict the MOB4 image alone) and the Visium HD kidney crop (train on
the 8 um bins, predict the H&E crop alone), a student is distilled on ``stain`` features, saved, loaded and
run by ``predict_niches`` on an H&E-only SpatialData (``read_wsi``) with the default tile spacing and with the
old default (one tile per patch). Prints a Markdown table; run from the repository root:

    NICHEKD_DATA_DIR=../shared/data python -m benchmarks.bench_he_only
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _case(name, train_sdata, image_path, mpp, out_dir, epochs=5):
    import nichekd as nk
    from nichekd._core.table import get_table

    nk.tl.teacher_niches(train_sdata, n_niches=4, random_state=0, progress=False)
    nk.pp.histology_features(train_sdata, backbone="stain", key_added="he")
    nk.pp.spatial_split(train_sdata, random_state=0)
    model = nk.tl.distill(train_sdata, features_key="he", architecture="mlp", epochs=epochs, progress=False)
    path = model.save(Path(out_dir) / name)
    model = nk.models.NicheStudent.load(path)
    rows = []
    for label, tile in (
        ("default (matched)", None),
        ("patch size (old default)", model.encoder["patch_size_um"]),
    ):
        he = nk.io.read_wsi(image_path, mpp=mpp, library_id=name)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nk.tl.predict_niches(he, path, tile_size_um=tile, device="cpu")
        run = get_table(he).uns["student_niche"]["runs"]["run0"]["params"]
        warned = any("far below" in str(w.message) for w in caught)
        rows.append(
            (name, label, float(run["tile_size_um"]), get_table(he).n_obs, float(run["mean_neighbours"]),
             float(model.train_mean_neighbors), warned, time.perf_counter() - t0)
        )  # fmt: skip
    return rows


def main() -> int:
    import torch

    import nichekd as nk
    from nichekd._core.spatial import resolve

    torch.set_num_threads(1)
    root = Path(os.environ.get("NICHEKD_DATA_DIR", "../shared/data"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mob = nk.datasets.st_mob(root, sections=("MOB1", "MOB2", "MOB3"))
        mob4_mpp = resolve(nk.io.read_st(
            root / "st_mob/MOB4.tsv.gz", root / "st_mob/alignment_table_MOB4.tsv", root / "st_mob/MOB4.jpg"
        )).pyramid("MOB4").levels[0].mpp  # fmt: skip
        rows += _case("st_mob", mob, root / "st_mob/MOB4.jpg", mob4_mpp, tmp)
        kidney = nk.datasets.visium_hd_kidney_crop(root)
        rows += _case("kidney", kidney, root / "visium_hd_kidney_crop/he_crop.png", 2.0, tmp)
    print("| data | tile spacing | spacing (um) | tiles | mean neighbours | training | ratio | warned | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, label, spacing, n, count, train, warned, secs in rows:
        print(
            f"| {name} | {label} | {spacing:.1f} | {n} | {count:.2f} | {train:.2f} | {count / train:.2f} | "
            f"{'yes' if warned else 'no'} | {secs:.0f} |"
        )
    ok = all(abs(r[4] / r[5] - 1) <= 0.3 for r in rows if r[1].startswith("default"))
    print(f"\ndefault within 30% of training on every slide: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
