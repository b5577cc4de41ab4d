"""The paper's protocol as the default (issue 20): the quality benchmark before and after, in one table.

Run each checkout's own ``bench_quality._pipeline`` (its order of calls and its defaults) on the same data and
seeds, tagging the rows::

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/bench_protocol.py --checkout /tmp/before --tag before
    .venv/bin/python benchmarks/bench_protocol.py --tag after

Sets: those of ``bench_quality.py``: synthetic cells (5,000) and Visium-like spots, K=5 and K=10, and ``st_mob``
(strips; whole held-out sections MOB2 + MOB4), K=5. Rows go to ``results/protocol.json``; the report to ``results_protocol.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

SETS = {
    "synthetic cell K=5": ("synthetic", "cell", 5, 5_000, {"method": "strips"}),
    "synthetic cell K=10": ("synthetic", "cell", 10, 5_000, {"method": "strips"}),
    "synthetic spot K=5": ("synthetic", "spot", 5, 60_000, {"method": "strips"}),
    "synthetic spot K=10": ("synthetic", "spot", 10, 60_000, {"method": "strips"}),
    "st_mob strips K=5": ("st_mob", "strips", 5, None, {"method": "strips"}),
    "st_mob held-out sections K=5": (
        "st_mob",
        "held-out sections",
        5,
        None,
        {"method": "libraries", "test_libraries": ["MOB2", "MOB4"]},
    ),
}
LABELS = {
    "student_tf": "student (transformer)",
    "student_mlp": "student (MLP)",
    "he_leiden_niche": "Leiden on features",
    "he_kmeans_niche": "k-means on features",
    "he_teacher_niche": "teacher's method on features",
    "he_leiden_nbr": "Leiden + neighbourhood",
    "he_kmeans_nbr": "k-means + neighbourhood",
}


def _import_checkout(checkout: Path):
    """``nichekd`` and ``bench_quality`` from ``checkout`` (its code, its pipeline order)."""
    sys.path.insert(0, str(checkout / "benchmarks"))
    sys.path.insert(0, str(checkout))
    import bench_quality

    import nichekd

    assert Path(nichekd.__file__).resolve().is_relative_to(checkout.resolve()), nichekd.__file__
    return nichekd, bench_quality


def _commit(checkout: Path) -> str:
    import subprocess

    out = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


def run(checkout: Path, tag: str, seeds: list[int], only: list[str] | None) -> dict:
    nk, bq = _import_checkout(checkout)
    rows = []
    for name, (dataset, mode, k, n_cells, split) in SETS.items():
        if only and name not in only:
            continue
        for seed in seeds:
            t0 = time.perf_counter()
            row = {"set": name, "seed": seed, "tag": tag, "commit": _commit(checkout)}
            try:
                if dataset == "synthetic":
                    sdata = nk.datasets.synthetic_tissue(
                        n_cells, n_niches=k, mode=mode, random_state=seed, progress=False
                    )
                    # scored against the teacher only (older checkouts' truth branch calls an older evaluate)
                    del sdata.tables["table"].obs["true_niche"]
                    row.update(bq._pipeline(sdata, k, seed, split, None))
                else:
                    sdata = nk.datasets.st_mob()
                    row.update(bq._pipeline(sdata, k, seed, split, "library"))
                # the neighbourhood-aware morphology baselines, each checkout's own defaults
                for method in ("leiden", "kmeans"):
                    nk.tl.histology_baseline(sdata, method=method, n_niches=k, features_key="he_features",
                                             neighbourhood=True, random_state=seed, key_added=f"he_{method}_nbr")  # fmt: skip
                extra = nk.tl.evaluate(
                    sdata, teacher_key="teacher_niche", predictions=["he_leiden_nbr", "he_kmeans_nbr"]
                )
                row["vs_teacher"].update(extra[["ari", "nmi"]].to_dict(orient="index"))
                teacher = sdata.tables["table"].uns["teacher_niche"]["params"]
                row["teacher_split_key"] = teacher.get("split_key")
                row["n_train"] = int((sdata.tables["table"].obs["split"] == "train").sum())
            except Exception as err:  # recorded, not hidden
                row["error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            row["seconds"] = time.perf_counter() - t0
            print(f"{tag} {name} seed={seed}: {row.get('vs_teacher', row.get('error'))}", flush=True)
            rows.append(row)
    old = _common.load_results("protocol") or {"rows": [], "machines": {}}
    kept = [r for r in old["rows"] if not (r["tag"] == tag and r["set"] in {x["set"] for x in rows})]
    machines = dict(old.get("machines", {}))
    machines[tag] = _common.machine()
    data = {"machines": machines, "rows": kept + rows}
    _common.save_results("protocol", data)
    return data


def report(data: dict) -> list[str]:
    import pandas as pd

    rows = pd.DataFrame(data["rows"])
    tags = [t for t in ("before", "after") if t in set(rows["tag"])]
    lines = ["# The paper's protocol by default: quality before and after (issue 20)", ""]
    for tag in tags:
        info = data["machines"][tag]
        commits = sorted(set(rows.loc[rows["tag"] == tag, "commit"]))
        lines += [f"**{tag}** (commit {', '.join(commits)}):", *_common.header_lines(info), ""]
    lines += [
        "ARI against the teacher on the test cells, mean ± sd over seeds "
        f"{sorted(set(rows['seed']))}; each checkout runs its own `bench_quality._pipeline` (stain features, "
        "`standardize='library'` on st_mob, `distill` defaults). **before**: teacher fitted on every cell, then "
        "the split (buffer widened to the teacher's radius), baselines fitted on every cell with neighbourhoods "
        "across the split. **after**: split, then the teacher fitted outside the test side with neighbourhoods "
        "within each side, baselines fitted on the training cells and labelled within each side. The teacher "
        "itself differs between the columns, so the scores answer each protocol's own question.",
        "",
        "| set | | n test | n train | " + " | ".join(LABELS.values()) + " | student − best baseline |",
        "|---|---|---|---|" + "---|" * (len(LABELS) + 1),
    ]
    for name in SETS:
        for tag in tags:
            g = rows[(rows["set"] == name) & (rows["tag"] == tag)]
            ok = [r for r in g.to_dict("records") if isinstance(r.get("vs_teacher"), dict)]
            if not ok:
                if len(g):
                    lines.append(f"| {name} | {tag} | failed: {g['error'].dropna().iloc[0]} |")
                continue
            cells = [_common.mean_sd([r["vs_teacher"][k]["ari"] for r in ok]) for k in LABELS]
            margins = [
                r["vs_teacher"]["student_tf"]["ari"]
                - max(r["vs_teacher"][k]["ari"] for k in LABELS if k.startswith("he_"))
                for r in ok
            ]
            n_test = int(pd.Series([r["n_test"] for r in ok]).median())
            n_train = int(pd.Series([r.get("n_train", 0) for r in ok]).median())
            lines.append(
                f"| {name} | {tag} | {n_test} | {n_train} | "
                + " | ".join(cells)
                + f" | {_common.mean_sd(margins)} |"
            )
    total = {t: rows.loc[rows["tag"] == t, "seconds"].sum() for t in tags}
    lines += [
        "",
        "Wall time: " + ", ".join(f"{t} {_common.fmt_seconds(s)}" for t, s in total.items()) + ".",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkout", type=Path, default=HERE.parent)
    parser.add_argument("--tag", choices=["before", "after"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(SETS), default=None)
    args = parser.parse_args()
    data = run(args.checkout, args.tag, args.seeds, args.only)
    text = "\n".join(report(data))
    (HERE / "results_protocol.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
