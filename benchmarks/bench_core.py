"""The layered core and the data-safety work (issues 21 and 22): the quality benchmark before and after.

Runs the same pipeline as ``bench_protocol.py`` (each set, seeds 0-2, ``bench_quality._pipeline`` plus the
neighbourhood baselines) on this checkout and compares every ARI with the rows ``bench_protocol.py --tag after``
stored for the code before these changes (``results/protocol.json``)::

    .venv/bin/python benchmarks/bench_core.py

Rows go to ``results/core.json``; the report to ``results_core.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402
import bench_protocol  # noqa: E402


def _keyed(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["set"], r["seed"]): r for r in rows if isinstance(r.get("vs_teacher"), dict)}


def report(before: dict, after: dict) -> list[str]:
    b = _keyed([r for r in before["rows"] if r["tag"] == "after"])
    a = _keyed(after["rows"])
    lines = ["# Quality before and after the layered core and the data-safety work (issues 21, 22)", ""]
    commits_b = sorted({r["commit"] for r in b.values()})
    commits_a = sorted({r["commit"] for r in a.values()})
    lines += [
        f"**before** (commit {', '.join(commits_b)}):",
        *_common.header_lines(before["machines"]["after"]),
        "",
    ]
    lines += [
        f"**after** (commit {', '.join(commits_a)}):",
        *_common.header_lines(after["machines"]["core"]),
        "",
    ]
    lines += [
        "ARI against the teacher on the test cells, mean ± sd over seeds 0-2, the pipeline of "
        "`bench_protocol.py` (stain features, the split, the teacher outside the test side, `distill` defaults, "
        "five morphology baselines). `max |Δ|`: the largest difference of any single ARI (any method, any seed).",
        "",
        "| set | "
        + " | ".join(f"{v} before → after" for v in bench_protocol.LABELS.values())
        + " | max abs Δ |",
        "|---|" + "---|" * (len(bench_protocol.LABELS) + 1),
    ]
    for name in bench_protocol.SETS:
        seeds = sorted(s for (n, s) in a if n == name and (n, s) in b)
        if not seeds:
            continue
        cells, worst = [], 0.0
        for k in bench_protocol.LABELS:
            vb = [b[(name, s)]["vs_teacher"][k]["ari"] for s in seeds]
            va = [a[(name, s)]["vs_teacher"][k]["ari"] for s in seeds]
            worst = max(worst, *(abs(x - y) for x, y in zip(vb, va, strict=True)))
            cells.append(f"{_common.mean_sd(vb)} → {_common.mean_sd(va)}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst:.3g} |")
    total = sum(r["seconds"] for r in after["rows"])
    lines += ["", f"Wall time after: {_common.fmt_seconds(total)}.", ""]
    return lines


def main() -> None:
    before = _common.load_results("protocol")
    orig_load, orig_save = _common.load_results, _common.save_results
    _common.load_results = lambda name: orig_load("core" if name == "protocol" else name)
    _common.save_results = lambda name, data: orig_save("core" if name == "protocol" else name, data)
    try:
        after = bench_protocol.run(HERE.parent, "core", [0, 1, 2], None)
    finally:
        _common.load_results, _common.save_results = orig_load, orig_save
    (HERE / "results_core.md").write_text("\n".join(report(before, after)) + "\n")
    print("\n".join(report(before, after)))


if __name__ == "__main__":
    main()
