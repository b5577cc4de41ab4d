"""The issue-24 recipe on st_mob, written against only what every commit since be89d19 offers.

Run: ``python benchmarks/bisect_probe.py --src DIR --seed 0`` where DIR is a checkout (a ``git worktree``) of the
commit to score; prints one JSON line. Recipe (the user's cross-section recipe of issue 24): one
``nk.io.read_st`` object per section, joined (``nk.io.concatenate`` where it exists, else
``spatialdata.concatenate``), a joint teacher (``n_niches=5, batch_correct=True``), EfficientNet-Lite0 features
with ``standardize="library"``, ``distill`` defaults, Leiden / k-means / the teacher's method on the same
features. Held-out cases: leave one section of each animal out (MOB2 + MOB4 test) and leave one animal out
(MOB3 + MOB4 test), and the paper's strips (2nd of 4 strips of every section). ARI against the teacher on
test cells, per test section.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import warnings
from pathlib import Path

FOLDS = {"one_section_per_animal": ["MOB2", "MOB4"], "other_animal": ["MOB3", "MOB4"], "strips": None}
SECTIONS = ["MOB1", "MOB2", "MOB3", "MOB4"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", default="efficientnet_lite0")
    ap.add_argument("--folds", nargs="+", default=list(FOLDS))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.src).resolve()))
    warnings.filterwarnings("ignore")
    import numpy as np
    import spatialdata
    import torch
    from sklearn.metrics import adjusted_rand_score

    import nichekd as nk

    assert Path(nk.__file__).resolve().is_relative_to(Path(args.src).resolve()), nk.__file__
    torch.manual_seed(args.seed)
    data = Path(os.environ.get("NICHEKD_DATA_DIR", "../shared/data")) / "st_mob"

    def kw(fn, **candidates):  # only the keywords this commit's function takes
        params = inspect.signature(fn).parameters
        return {k: v for k, v in candidates.items() if k in params}

    t0 = time.perf_counter()
    parts = [
        nk.io.read_st(data / f"MOB{i}.tsv.gz", data / f"alignment_table_MOB{i}.tsv", data / f"MOB{i}.jpg",
                      library_id=f"MOB{i}")
        for i in range(1, 5)
    ]  # fmt: skip
    if hasattr(nk.io, "concatenate"):
        sdata = nk.io.concatenate(parts)
    else:
        sdata = spatialdata.concatenate(parts, concatenate_tables=True, uns_merge="unique")
    table = sdata.tables["table"]
    nk.tl.teacher_niches(sdata, n_niches=5, batch_correct=True, random_state=args.seed,
                         **kw(nk.tl.teacher_niches, progress=False))  # fmt: skip
    fkey = "he"
    nk.pp.histology_features(sdata, backbone=args.features, standardize="library", key_added=fkey,
                             **kw(nk.pp.histology_features, device="cpu", progress=False))  # fmt: skip
    out = {"src": args.src, "seed": args.seed, "n_obs": int(table.n_obs), "folds": {}}
    # a record of what the features are, for finding where they changed
    out["feat_mean_abs"] = float(np.abs(np.asarray(table.obsm[fkey])).mean())
    out["teacher_sizes"] = np.bincount(table.obs["teacher_niche"].cat.codes.to_numpy()).tolist()
    for fold in args.folds:
        test = FOLDS[fold] or SECTIONS
        split = (
            {"method": "strips"} if FOLDS[fold] is None else {"method": "libraries", "test_libraries": test}
        )
        nk.pp.spatial_split(sdata, **split, **kw(nk.pp.spatial_split, features_key=fkey))
        nk.tl.distill(sdata, features_key=fkey, random_state=args.seed, key_added="student",
                      **kw(nk.tl.distill, device="cpu", progress=False))  # fmt: skip
        preds = {"student": "student"}
        for method in ("leiden", "kmeans", "teacher"):
            key = f"b_{method}"
            extra = kw(nk.tl.histology_baseline, random_state=args.seed, key_added=key)
            nk.tl.histology_baseline(sdata, method=method, n_niches=5, features_key=fkey, **extra)
            preds[method] = key if "key_added" in extra else f"{method}_niche"
        obs = table.obs
        res = {}
        is_test = (obs["split"] == "test").to_numpy()
        lib = obs["library"].astype(str).to_numpy()
        for name, col in preds.items():
            res[name] = {
                s: round(float(adjusted_rand_score(obs["teacher_niche"][is_test & (lib == s)],
                                                   obs[col][is_test & (lib == s)])), 4)
                for s in test
            }  # fmt: skip
        res["n_train"] = int((obs["split"] == "train").sum())
        res["n_test"] = int(is_test.sum())
        out["folds"][fold] = res
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
