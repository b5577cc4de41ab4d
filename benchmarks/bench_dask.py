"""Features and prediction on a ``dask.distributed`` LocalCluster of 2 workers, checked against one process.

Run: ``.venv/bin/python benchmarks/bench_dask.py [--n-cells 20000] [--partition-size 5000]``.

A synthetic section is written to a zarr store and read back lazily, so the workers read the H&E image chunk
by chunk from disk (as with a real slide) instead of receiving it in memory. Then:

1. ``nk.pp.histology_features`` (one process) vs ``nk.pp.histology_features_dask`` on the cluster;
2. ``nk.tl.predict_niches`` (one process) vs ``nk.tl.predict_niches_dask`` on the cluster, features recomputed
   on the cluster from the model's encoder settings.

Results must be equal: the maximum absolute difference of the features and probabilities and the share of
equal labels are recorded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def run(n_cells: int = 20_000, partition_size: int = 5_000, workers: int = 2, seed: int = 0) -> dict:
    import numpy as np
    import spatialdata as sd
    import torch
    from distributed import Client, LocalCluster

    import nichekd as nk
    from nichekd.pp._features_dask import histology_features_dask
    from nichekd.tl._predict_dask import predict_niches_dask

    out: dict = {"n_cells": n_cells, "partition_size": partition_size, "workers": workers, "seed": seed}
    store = _common.WORK_DIR / f"dask_{n_cells}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    store.parent.mkdir(parents=True, exist_ok=True)
    nk.datasets.synthetic_tissue(n_cells, random_state=seed, progress=False).write(store)
    sdata = sd.read_zarr(store)  # the image is now a lazy dask array over the zarr chunks
    table = sdata.tables["table"]
    out["image_chunks"] = [int(c) for c in sdata.images["synthetic_he"]["scale0"]["image"].data.chunksize]

    # single process
    t0 = time.perf_counter()
    nk.pp.histology_features(sdata, backbone="stain", key_added="he_features", device="cpu")
    out["features_single_s"] = time.perf_counter() - t0
    single_feats = np.asarray(table.obsm["he_features"]).copy()
    nk.tl.teacher_niches(sdata, n_niches=5, random_state=seed, progress=False)
    torch.set_num_threads(1)
    model = nk.tl.distill(sdata, features_key="he_features", architecture="transformer", split_key=None,
                          epochs=3, random_state=seed, device="cpu", progress=False)  # fmt: skip
    t0 = time.perf_counter()
    nk.tl.predict_niches(sdata, model=model, key_added="single", device="cpu")
    out["predict_single_cached_s"] = time.perf_counter() - t0

    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        with Client(cluster) as client:
            out["cluster"] = (
                f"LocalCluster: {len(client.scheduler_info()['workers'])} worker processes x 1 thread"
            )
            t0 = time.perf_counter()
            dask_table = histology_features_dask(
                sdata, backbone="stain", key_added="he_features", device="cpu", partition_size=partition_size,
                copy=True, progress=False,
            )  # fmt: skip
            out["features_dask_s"] = time.perf_counter() - t0
            out["features_partitions"] = int(dask_table.uns["he_features"]["params"]["partitions"])
            out["features_max_abs_diff"] = float(np.abs(dask_table.obsm["he_features"] - single_feats).max())
            # prediction with the features recomputed on the cluster from the model's encoder settings
            del table.obsm["he_features"]
            t0 = time.perf_counter()
            predict_niches_dask(sdata, model, key_added="distributed", partition_size=partition_size,
                                progress=False)  # fmt: skip
            out["predict_dask_s"] = time.perf_counter() - t0
            out["predict_partitions"] = int(table.uns["distributed"]["params"]["partitions"])
    out["predict_features_max_abs_diff"] = float(np.abs(table.obsm["he_features"] - single_feats).max())
    out["proba_max_abs_diff"] = float(
        np.abs(table.obsm["distributed_proba"] - table.obsm["single_proba"]).max()
    )
    out["labels_equal"] = float(
        (table.obs["distributed"].astype(str) == table.obs["single"].astype(str)).mean()
    )
    out["machine"] = _common.machine()
    _common.save_results("dask", out)
    shutil.rmtree(store, ignore_errors=True)
    return out


def report(data: dict | None) -> list[str]:
    """The RESULTS.md section."""
    if not data:
        return ["_not run yet: `python benchmarks/run_all.py --only dask`_", ""]
    d = data
    return [
        f"{d['n_cells']:,} synthetic cells written to zarr and read back lazily (image chunks "
        f"{d['image_chunks']}); {d['cluster']}; partitions of about {d['partition_size']:,} cells (whole image "
        "tiles for features; the model's radius as halo for prediction). Stain encoder, transformer student.",
        "",
        "| step | one process | LocalCluster | partitions | max abs difference | labels equal |",
        "|---|---|---|---|---|---|",
        f"| histology features | {_common.fmt_seconds(d['features_single_s'])} | "
        f"{_common.fmt_seconds(d['features_dask_s'])} | {d['features_partitions']} | "
        f"{d['features_max_abs_diff']:.3g} | |",
        f"| predict (features recomputed + student) | {_common.fmt_seconds(d['features_single_s'])} + "
        f"{_common.fmt_seconds(d['predict_single_cached_s'])} | {_common.fmt_seconds(d['predict_dask_s'])} | "
        f"{d['predict_partitions']} | features {d['predict_features_max_abs_diff']:.3g}, "
        f"probabilities {d['proba_max_abs_diff']:.3g} | {100 * d['labels_equal']:.2f}% |",
        "",
        f"Measured {d['machine']['date']} (load average {d['machine']['load_average_1min']}): on the shared "
        "2-core machine two workers compete with everything else, so the timings show that the work is spread, "
        "not a speed-up.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--partition-size", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    data = run(args.n_cells, args.partition_size, args.workers)
    print("\n".join(report(data)))


if __name__ == "__main__":
    main()
