"""nichekd's stain normalisation against torchstain's (Macenko, Reinhard) on real H&E patches.

Run: ``.venv/bin/python benchmarks/bench_stain_normalization.py`` (needs ``pip install torchstain``); writes
``benchmarks/results_stain_normalization.md``. Both normalise 256 random 64-px crops of ``st_mob/MOB1.jpg``
to a reference fitted on 256 crops of ``MOB3.jpg``; reported: patches per second (one thread) and how close the
two outputs are (mean absolute difference in 0-255 RGB, and the correlation of the stain features computed on
each output), so the choice of implementation is measured, not assumed.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results_stain_normalization.md"


def _crops(path: Path, n: int, size: int, seed: int) -> np.ndarray:
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"))
    rng = np.random.default_rng(seed)
    ys = rng.integers(200, img.shape[0] - size - 200, n)
    xs = rng.integers(200, img.shape[1] - size - 200, n)
    return np.stack([img[y : y + size, x : x + size].transpose(2, 0, 1) for y, x in zip(ys, xs, strict=True)])


def main() -> None:
    import torch
    import torchstain

    from nichekd.models.encoders import _stain

    torch.set_num_threads(1)
    root = Path(os.environ.get("NICHEKD_DATA_DIR", "../shared/data")) / "st_mob"
    patches = _crops(root / "MOB1.jpg", 256, 64, 0)
    target = _crops(root / "MOB3.jpg", 256, 64, 1)
    # torchstain fits one target image: the reference crops tiled into one image
    tiled = target[:256].reshape(16, 16, 3, 64, 64).transpose(0, 3, 1, 4, 2).reshape(1024, 1024, 3)
    rows = []
    for method in ("macenko", "reinhard"):
        ref = _stain.stain_reference(method, target)
        t0 = time.perf_counter()
        ours = _stain.normalize_stain(patches, method, ref)
        t_ours = time.perf_counter() - t0
        norm = (
            torchstain.normalizers.MacenkoNormalizer
            if method == "macenko"
            else torchstain.normalizers.ReinhardNormalizer
        )(backend="numpy")
        norm.fit(tiled)
        t0 = time.perf_counter()
        theirs, failed = [], 0
        for p in patches:
            try:
                out = (
                    norm.normalize(I=p.transpose(1, 2, 0), stains=False)
                    if method == "macenko"
                    else norm.normalize(I=p.transpose(1, 2, 0))
                )
                out = out[0] if isinstance(out, tuple) else out
                theirs.append(np.clip(np.asarray(out), 0, 255).astype(np.uint8).transpose(2, 0, 1))
            except Exception:  # noqa: BLE001  torchstain raises on patches it cannot decompose (e.g. background)
                failed += 1
                theirs.append(p)
        t_theirs = time.perf_counter() - t0
        theirs = np.stack(theirs)
        diff = float(np.abs(ours.astype(float) - theirs.astype(float)).mean())
        f_ours, f_theirs = _stain.stain_features(ours), _stain.stain_features(theirs)
        corr = [
            np.corrcoef(f_ours[:, j], f_theirs[:, j])[0, 1]
            for j in range(f_ours.shape[1])
            if f_ours[:, j].std() > 0 and f_theirs[:, j].std() > 0
        ]
        rows.append(
            (method, len(patches) / t_ours, len(patches) / t_theirs, failed, diff, float(np.median(corr)))
        )
    lines = [
        "# Stain normalisation: nichekd vs torchstain",
        "",
        f"- measured {datetime.now(UTC).isoformat(timespec='seconds')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, torchstain {getattr(torchstain, '__version__', 'installed')}, one thread; "
        f"1-min load average {os.getloadavg()[0]:.1f}",
        "- 256 random 64-px crops of st_mob MOB1.jpg normalised to a reference from 256 crops of MOB3.jpg",
        "",
        "| method | nichekd patches/s | torchstain patches/s | torchstain failures | mean abs RGB difference | median feature correlation |",
        "|---|---|---|---|---|---|",
        *[f"| {m} | {a:.0f} | {b:.0f} | {f} | {d:.1f} | {c:.3f} |" for m, a, b, f, d, c in rows],
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
