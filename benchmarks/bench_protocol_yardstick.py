"""Issue 20: both students against one yardstick. Each protocol's student is scored against each protocol's
teacher on the st_mob test spots the two protocols share (strips; whole held-out sections MOB2 + MOB4).

Run: ``python benchmarks/bench_protocol_yardstick.py /tmp/before`` (a worktree of the commit before the
change); prints the table stored in ``results_protocol_yardstick.md``. Each run is a subprocess of one checkout's own
``bench_quality._pipeline``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(checkout: str, out: str, split_name: str, seed: int) -> None:
    warnings.filterwarnings("ignore")
    sys.path[:0] = [checkout, checkout + "/benchmarks"]
    import bench_quality as bq
    import numpy as np

    import nichekd as nk

    assert nk.__file__.startswith(checkout), nk.__file__
    sdata = nk.datasets.st_mob()
    bq._pipeline(sdata, bq.ST_MOB_K, seed, bq.ST_MOB_SPLITS[split_name], "library")
    t = sdata.tables["table"]
    cols = {"split": "split", "teacher": "teacher_niche", "student": "student_tf"}
    np.savez(out, obs_names=t.obs_names.to_numpy().astype("U"),
             **{k: t.obs[c].to_numpy().astype("U") for k, c in cols.items()})  # fmt: skip


def main(before: str) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score as ari

    rows, tmp = [], Path(tempfile.mkdtemp())
    for split in ("strips", "held-out sections"):
        for seed in (0, 1, 2):
            res = {}
            for tag, checkout in (("before", before), ("after", str(HERE.parent))):
                out = tmp / f"{tag}_{split[:5]}_{seed}.npz"
                args = [sys.executable, __file__, "--worker", checkout, str(out), split, str(seed)]
                subprocess.run(args, check=True, capture_output=True)
                res[tag] = np.load(out)
            b, a = res["before"], res["after"]
            assert (b["obs_names"] == a["obs_names"]).all()
            test = (b["split"] == "test") & (a["split"] == "test")
            rows.append({"split": split, "seed": seed, "n": int(test.sum()),
                         "before student vs after teacher": ari(a["teacher"][test], b["student"][test]),
                         "after student vs after teacher": ari(a["teacher"][test], a["student"][test]),
                         "before student vs before teacher": ari(b["teacher"][test], b["student"][test]),
                         "after student vs before teacher": ari(b["teacher"][test], a["student"][test])})  # fmt: skip
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows).drop(columns="seed").groupby("split")
    print(df.agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main(sys.argv[1])
