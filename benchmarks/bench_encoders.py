"""Patches per second of the CPU encoders next to the FLOP-bound ceiling measured in the same run.

Run: ``.venv/bin/python benchmarks/bench_encoders.py [--rounds 5] [--out benchmarks/results_encoders.md]``
(about 1-3 minutes on 2 cores).

The ceiling is ``dense matmul GFLOP/s / GFLOPs per patch`` (FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode``): the rate the encoder would reach if every FLOP ran at dense matmul
speed. On a shared machine every rate is noisy, so the matmul rates and the encoders are measured in
interleaved rounds in one process and each figure is the best of its rounds: the ratio compares the best
moments of both.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the timed calls would flood the log
import time
from pathlib import Path

import _common
import anndata as ad
import numpy as np
import torch

from nichekd._core import patches as _image
from nichekd._core.runtime import torch_threads
from nichekd.io._build import build_library
from nichekd.models import encoders
from nichekd.models.encoders import _efficientnet, _stain

DATA = Path(os.environ.get("NICHEKD_DATA_DIR", _common.REPO.parent / "shared" / "data"))


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """Best-of dense matmul rate in ``dtype`` on torch's current threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_patch(encoder, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder.module(x)
    return float(counter.get_total_flops())


def once(fn, n: int) -> float:
    """Patches/s of one call of ``fn()`` that encodes ``n`` patches."""
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def once_cpu(fn, n: int) -> float:
    """Patches per CPU-second of one single-threaded call: time the process actually ran, so other jobs on a
    shared machine barely change it (they still share caches and memory bandwidth)."""
    with torch_threads(1):
        t = time.process_time()
        fn()
        return n / (time.process_time() - t)


def matmul_gflops_cpu(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """Dense matmul GFLOP per CPU-second on one thread."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    with torch_threads(1):
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.process_time()
            a @ b
            best = min(best, time.process_time() - t)
    return 2 * n**3 / max(best, 1e-9) / 1e9


def matmul_ceiling(dtype: torch.dtype) -> float:
    """The best dense matmul rate of three sizes (1024^3, 2048^3, 4096^3) in ``dtype``: a ceiling no
    network's FLOPs can beat on these threads, taken at the size that runs fastest on this CPU."""
    return max(matmul_gflops(dtype, n) for n in (1024, 2048, 4096))


def end_to_end_cases(has_bf16: bool) -> list[dict]:
    """What a user runs: ``nk.pp.histology_features(sdata, backbone=...)`` with its defaults, on the
    simulator (image at the encoder's 0.5 um/px: patches are sliced) and on a real section (a 2 um/px crop:
    every patch is resampled)."""
    import nichekd as nk

    synthetic = nk.datasets.synthetic_tissue(n_cells=3000, random_state=0)
    large = nk.datasets.synthetic_tissue(n_cells=30000, random_state=0)
    cases = [
        {"name": "efficientnet_lite0, precision='fp32'", "sdata": synthetic, "backbone": "efficientnet_lite0",
         "kw": {"precision": "fp32"}, "ceiling": "fp32"},
        {"name": "efficientnet_lite0 (default precision='auto': "
                 f"{'bf16' if has_bf16 else 'fp32'})", "sdata": synthetic, "backbone": "efficientnet_lite0",
         "kw": {}, "ceiling": "fp32"},
        {"name": "stain", "sdata": synthetic, "backbone": "stain", "kw": {}, "ceiling": None},
        {"name": "stain", "sdata": large, "backbone": "stain", "kw": {}, "ceiling": None},
    ]  # fmt: skip
    try:
        kidney = nk.datasets.visium_hd_kidney_crop(DATA)
    except (FileNotFoundError, OSError) as err:
        print(f"real kidney crop not found ({err}); skipping its rows")
    else:
        cases.append({"name": "stain, real Visium HD kidney crop (2 um/px, resampled)", "sdata": kidney,
                      "backbone": "stain", "kw": {}, "ceiling": None})  # fmt: skip
        cases.append({"name": "efficientnet_lite0, every argument at its default, real Visium HD kidney crop "
                              "(grid_um='auto')", "sdata": kidney, "backbone": "efficientnet_lite0", "kw": {},
                      "ceiling": "fp32"})  # fmt: skip
    for case in cases:
        table = case["sdata"].tables["table"]
        case["n"] = table.n_obs
        case["source"] = "synthetic_tissue" if "synthetic_he" in case["sdata"].images else "kidney crop"
    return cases


def run_end_to_end(case: dict) -> float:
    """Seconds of one ``histology_features`` call (features recomputed: ``overwrite=True``); records the
    patches it encoded (grid nodes where ``grid_um="auto"`` chose a grid, else one per observation)."""
    import nichekd as nk

    t = time.perf_counter()
    nk.pp.histology_features(
        case["sdata"], backbone=case["backbone"], key_added="X_bench", overwrite=True, **case["kw"]
    )
    sec = time.perf_counter() - t
    params = case["sdata"].tables["table"].uns["X_bench"]["params"]
    case["patches"] = int(params.get("grid_nodes") or case["n"])
    case["grid_um"] = params.get("grid_um")
    return sec


def encoder_alone(cases: list[dict], batch_size: int = 64) -> dict[str, float]:
    """Patches/s of each case's encoder alone, on that case's own patches read beforehand, in the batches
    ``histology_features`` hands it (``batch_size``, its default, or the encoder's ``min_batch`` if larger):
    the gap to the end-to-end rate is what reading, resampling and bookkeeping cost. Grid cases (``grid_um``
    chosen) encode the grid nodes' patches."""
    from nichekd.pp import _features

    out = {}
    for case in cases:
        spec = encoders.resolve_spec(case["backbone"])
        size_um = spec.input_size * spec.mpp
        plan = _features._plan(case["sdata"], "table", "library", None, None, size_um, spec)
        if case.get("grid_um"):
            plan, _, _ = _features._grid.grid_plan(plan, case["grid_um"])
        x = np.concatenate(
            [_image.read_patches(p["pyramid"], p["centres"], size_um, spec.input_size, level=p["level"])
             for p in plan.values()]
        )  # fmt: skip
        enc = encoders.build_encoder(
            case["backbone"], spec, device="cpu", precision=case["kw"].get("precision", "auto")
        )
        step = max(batch_size, enc.min_batch)
        enc(x[:step])

        def run(enc=enc, x=x, step=step) -> None:
            for i in range(0, len(x), step):
                enc(x[i : i + step])

        out[case["name"] + str(case["n"])] = max(once(run, len(x)) for _ in range(2))
    return out


def real_patches(n: int, size: int) -> tuple[np.ndarray, str]:
    """``n`` random ``size``-px crops of a real H&E (ST mouse olfactory bulb), or noise without the data."""
    path = DATA / "st_mob" / "MOB1.jpg"
    rng = np.random.default_rng(0)
    if not path.exists():
        return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), "uniform noise (real data not found)"
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"))
    ys = rng.integers(0, img.shape[0] - size, n)
    xs = rng.integers(0, img.shape[1] - size, n)
    crops = [img[y : y + size, x : x + size].transpose(2, 0, 1) for y, x in zip(ys, xs, strict=True)]
    return np.stack(crops), f"{n} random {size}-px crops of the real H&E st_mob/MOB1.jpg"


def synthetic_slide(size_px: int = 4096, mpp: float = 0.5):
    rng = np.random.default_rng(0)
    tile = rng.integers(120, 250, (512, 512, 3), dtype=np.uint8)
    img = np.tile(tile, (size_px // 512, size_px // 512, 1))
    a = ad.AnnData(np.zeros((1, 1), np.float32))
    sdata = build_library(a, library="S", xy_um=np.array([[10.0, 10.0]]), diameter_um=10, image=img, mpp=mpp)
    return _image.image_pyramid(sdata, "S_he", "S"), size_px * mpp


def reading(rng: np.random.Generator) -> tuple[list[tuple], float]:
    """Patch reading alone: tile-wise reads + batched resampling, and naive one-patch dask reads."""
    pyr, side_um = synthetic_slide()
    centres = rng.uniform(60, side_um - 60, (2000, 2))
    read = []
    for size_um, out_px in ((112.0, 224), (64.0, 64)):
        lv = pyr.level_for(size_um / out_px)
        fn = lambda s=size_um, o=out_px: _image.read_patches(pyr, centres, s, o, num_workers=2)  # noqa: E731
        fn()
        read.append((size_um, out_px, lv.index, lv.mpp, max(once(fn, len(centres)) for _ in range(2))))
    lv0 = pyr.levels[0]
    px = lv0.um_to_px(centres[:100]).astype(int)

    def naive():
        for cx, cy in px:
            np.asarray(lv0.data.data[:, cy - 112 : cy + 112, cx - 112 : cx + 112].compute())

    return read, once(naive, len(px))


def compiled_rates(enc, x: np.ndarray, has_bf16: bool) -> list[str]:
    """Per-core rate of the eager module vs ``torch.compile`` (inductor with weight freezing), not used by
    nichekd's runner: reported so the trade-off (compile time vs speed) is on record."""
    import torch._inductor.config as inductor_config

    xt = torch.from_numpy(x).float().sub(127.0).div(128.0).contiguous(memory_format=torch.channels_last)
    step = enc.micro_batch

    def run(module, bf16: bool) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(xt) - step + 1, step):  # full micro-batches only: one compiled shape
                module(xt[i : i + step])

    n = (len(xt) // step) * step
    out = ["### torch.compile (one thread, CPU time; not used by nichekd)", ""]
    with inductor_config.patch(freezing=True), encoders._base.torch_threads(1):
        compiled = torch.compile(enc.module)
        for bf16 in (False, True) if has_bf16 else (False,):
            t = time.perf_counter()
            run(compiled, bf16)  # compiles
            compile_s = time.perf_counter() - t
            eager = max(once_cpu(lambda b=bf16: run(enc.module, b), n) for _ in range(3))
            fast = max(once_cpu(lambda b=bf16: run(compiled, b), n) for _ in range(3))
            out.append(
                f"- {'bf16' if bf16 else 'fp32'}: eager {eager:.1f}, compiled {fast:.1f} patches per CPU-second "
                f"(first call incl. compilation {compile_s:.0f} s wall)"
            )
    return out


NOTES = """## Notes

- **What makes EfficientNet-Lite0 fast here.** (1) Micro-batches sized to the last-level cache
  (`TorchEncoder._micro_batch`: the largest layer's input + output of one patch is measured once with forward
  hooks; micro-batch = L3 size / that, rounded up to a power of two: 4 patches in fp32 and 8 in bf16 with a
  32 MiB L3): a batch of 64 in one forward pass streams every activation through memory, small batches
  keep them in cache. (2) bf16 autocast (`precision="auto"` on CPUs with `avx512_bf16`/`amx_bf16`, detected from `/proc/cpuinfo` and oneDNN; never
  on CPUs without: torch would emulate it). (3) BatchNorm folded into the convolutions, symmetric 'same'
  padding moved into them, in-place ReLU6 (`_efficientnet.fuse_for_inference`), channels-last,
  `torch.inference_mode`.
- **Tried and not kept.** `torch.jit.trace` + `freeze` (fuses conv + ReLU6 through oneDNN), fp32 only (tracing
  under bf16 autocast is not supported): one-off script, one thread, CPU time, 68-84 vs 62-63 patches per
  CPU-second eager; less than bf16 gives and TorchScript is deprecated, so not a second code path. Casting the whole network to bf16 instead of autocast: same features
  (cosine 0.9997 both), not clearly faster; autocast keeps norms and softmax of the ViT foundation models in
  fp32, so the one runner uses autocast. int8 dynamic quantisation (`torch.ao.quantization.quantize_dynamic`)
  only quantises `nn.Linear`; EfficientNet-Lite0's pooled features use no Linear layer, so it would change
  nothing; for the ViT foundation models it is not measured (no weights on this offline machine).
  `torch.compile` (inductor, weight freezing; `--compile` times it, see above) is 1.4-1.8x faster per core,
  but its first call compiled for 48 s on this machine with a cold cache (6-8 s once inductor's on-disk
  cache holds the kernels), it needs a C++ compiler at run time, and a compiled module called from several
  worker threads and recompiled for the last partial micro-batch needs care: left for a follow-up (opt-in for
  large jobs).
- **Threads.** On CPU the micro-batches run side by side on worker threads, one intra-op thread each
  (`TorchEncoder.__call__`), instead of one micro-batch at a time on OpenMP threads: OpenMP waits at a
  barrier after every layer, and on a shared machine one descheduled thread stalls the other (under load
  average ~14, EfficientNet-Lite0 fp32 ran 28 patches/s this way vs 5-11 with two OpenMP threads; bf16 66 vs
  2-20). The worker count is `n_threads=` or torch's current thread count; the process-wide setting is
  restored after each call and `histology_features` no longer resets it. The stain encoder runs chunks of
  64 patches on that many threads the same way (numpy releases the GIL in its loops), at least 1,024
  patches per call so that every thread has chunks. The worker threads are started once per process
  (`_core.runtime.worker_pool`), not per batch.
- **Overlap.** `histology_features` encodes each batch in its own thread while the next batch is read; the
  reader threads (`num_workers`) read tiles and resample patches ahead of it.
- **Stain encoder.** Colour deconvolution from one logarithm per value, percentiles from per-patch
  histograms with bins uniform in log(1 + v / 1e-4) (within 0.49% + 5e-7 of `np.percentile`), blob maxima
  by separable float64 3x3 means and 5x5 maxima at full resolution (the same maxima as the reference), R/G/B
  moments from exact integer sums, GLCM from int32 codes in one `bincount`, all vectorised over chunks of 64
  patches; tested against the reference (`_stain._stain_features_reference`) in
  `tests/test_encoders_speed.py`.
- Patch reading: patches at the slide's own resolution are sliced from tile-sized reads; patches that must
  be resampled on an axis-aligned image are interpolated separably (two gathered rows, then columns; within
  one grey level of `grid_sample`, which stays for rotated or sheared images), after an exact integer box
  average where the level is at least twice finer than the patch.
- On CUDA the encoders run under bf16 (or fp16) autocast from pinned memory; not measured here (no GPU).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best of)")
    parser.add_argument("--threads", type=int, default=encoders.available_threads())
    parser.add_argument("--e2e-rounds", type=int, default=2, help="end-to-end timing rounds (best of)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_encoders.md")))
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile (inductor, freezing) per core; +1-2 min",
    )
    args = parser.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)  # this benchmark's own process
    info = _common.machine()
    rng = np.random.default_rng(0)

    x224, source224 = real_patches(32, 224)
    x64, source64 = real_patches(2048, 64)
    fp32 = _efficientnet.build(device="cpu").configure(precision="fp32")
    old_way = encoders.TorchEncoder(fp32.module, fp32.spec, pool=fp32.pool, precision="fp32", micro_batch=64)
    gflop = flops_per_patch(fp32, 224) / 1e9
    has_bf16 = encoders.cpu_bf16_supported()
    bf16 = _efficientnet.build(device="cpu").configure(precision="bf16") if has_bf16 else None
    fp32_1 = _efficientnet.build(device="cpu").configure(precision="fp32", n_threads=1)
    bf16_1 = _efficientnet.build(device="cpu").configure(precision="bf16", n_threads=1) if has_bf16 else None
    feats32 = fp32(x224)
    cos = None
    if bf16 is not None:
        f16 = bf16(x224)
        cos = (f16 * feats32).sum(1) / np.linalg.norm(f16, axis=1) / np.linalg.norm(feats32, axis=1)
    n_ref = 256
    # (function, patches, precision of the matching ceiling or None)
    wall = {
        "efficientnet_lite0 fp32": (lambda: fp32(x224), len(x224), "fp32"),
        "efficientnet_lite0 fp32, one batch of 64 OpenMP threads (before)": (
            lambda: old_way(np.concatenate([x224, x224])), 2 * len(x224), "fp32"),
        "stain (fast)": (lambda: _stain.stain_features(x64), len(x64), None),
        "stain (reference implementation)": (
            lambda: _stain._stain_features_reference(x64[:n_ref]), n_ref, None),
    }  # fmt: skip
    per_core = {
        "efficientnet_lite0 fp32": (lambda: fp32_1(x224), len(x224), "fp32"),
        "stain (fast)": (lambda: _stain.stain_features(x64, n_threads=1), len(x64), None),
    }
    if has_bf16:
        wall["efficientnet_lite0 bf16"] = (lambda: bf16(x224), len(x224), "bf16")
        per_core["efficientnet_lite0 bf16"] = (lambda: bf16_1(x224), len(x224), "bf16")
    best = dict.fromkeys(wall, 0.0)
    best_cpu = dict.fromkeys(per_core, 0.0)
    mm = {"fp32": 0.0, "bf16": 0.0}
    mm1 = {"fp32": 0.0, "bf16": 0.0}
    for fn, *_ in [*wall.values(), *per_core.values()]:
        fn()  # warm-up: allocations, oneDNN primitives, micro-batch sizing
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for dt, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            mm[name] = max(mm[name], matmul_gflops(dt))
            mm1[name] = max(mm1[name], matmul_gflops_cpu(dt))
        for name, (fn, n, _) in wall.items():
            best[name] = max(best[name], once(fn, n))
        for name, (fn, n, _) in per_core.items():
            best_cpu[name] = max(best_cpu[name], once_cpu(fn, n))
    load_after = os.getloadavg()[0]
    read, naive_rate = reading(rng)

    # end to end: what the user calls, beside the encoder alone on the same patches and the ceiling, interleaved
    cases = end_to_end_cases(has_bf16)
    for case in cases:
        case["first"] = run_end_to_end(case)  # the user's first call: oneDNN primitives, pixel rule, ...
        case["best"] = float("inf")
    e2e_ceiling = {"fp32": 0.0, "bf16": 0.0}
    load_e2e = os.getloadavg()[0]
    for _ in range(args.e2e_rounds):
        for dt, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            e2e_ceiling[name] = max(e2e_ceiling[name], matmul_ceiling(dt))
        for case in cases:
            case["best"] = min(case["best"], run_end_to_end(case))
    load_e2e_after = os.getloadavg()[0]
    alone = encoder_alone(cases)

    def row(name: str, r: float, n: int, prec: str | None, rates: dict) -> str:
        if prec is None:
            return f"| {name} | {n} x 64 px | {r:.0f} | n/a (no matmuls) | |"
        c32, cp = rates["fp32"] / gflop, rates[prec] / gflop
        own = f"{100 * r / cp:.0f}% of {cp:.0f}" if prec != "fp32" else ""
        return f"| {name} | {n} x 224 px | {r:.1f} | {100 * r / c32:.0f}% of {c32:.0f} | {own} |"

    c32 = e2e_ceiling["fp32"] / gflop
    e2e_lines = [
        "## End to end: `nk.pp.histology_features(sdata, backbone=...)` (what the user waits for)",
        "",
        f"Ceiling measured in the same rounds: dense matmul, best of 1024^3, 2048^3 and 4096^3, "
        f"**fp32 {e2e_ceiling['fp32']:.0f} GFLOP/s** (EfficientNet-Lite0 ceiling **{c32:.0f} patches/s**), "
        f"bf16 {e2e_ceiling['bf16']:.0f} GFLOP/s. 1-min load average {load_e2e:.1f} -> {load_e2e_after:.1f}. "
        f"Each call recomputes the features (`overwrite=True`); 'best' is the best of {args.e2e_rounds} calls "
        "after the first; 'encoder alone' runs the same encoder on the same patches, read beforehand, in the "
        "batches that `histology_features` hands it (64, or the stain encoder's 1,024). Rates count patches "
        "encoded: one per observation, or one per grid node where `grid_um='auto'` chose a grid.",
        "",
        "| backbone | data | observations | patches encoded | first call (s) | best call (s) | "
        "end to end (patches/s) | encoder alone (patches/s) | end to end / fp32 ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        rate = case["patches"] / case["best"]
        share = f"{100 * rate / c32:.0f}%" if case["ceiling"] else "n/a (no matmuls)"
        grid = f" ({case['grid_um']:g} um grid)" if case.get("grid_um") else ""
        e2e_lines.append(
            f"| {case['name']} | {case['source']} | {case['n']:,} | {case['patches']:,}{grid} | "
            f"{case['first']:.1f} | {case['best']:.1f} | **{rate:.0f}** | "
            f"{alone[case['name'] + str(case['n'])]:.0f} | {share} |"
        )
    header = "| encoder | patches | measured | fp32 ceiling | own-precision ceiling |"
    lines = [
        "# Encoder throughput (CPU)",
        "",
        *_common.header_lines(info),
        f"- torch threads: {args.threads}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {has_bf16}, last-level cache {encoders._base.last_level_cache_bytes() >> 20} MiB, "
        f"micro-batch fp32 {fp32.micro_batch}" + (f", bf16 {bf16.micro_batch}" if bf16 else ""),
        f"- 1-min load average during the timing rounds: {load_before:.1f} -> {load_after:.1f} on "
        f"{os.cpu_count()} cores. **The machine was shared with other jobs while this ran**: every rate is the "
        f"best of {args.rounds} interleaved rounds (matmul, then each encoder), so matmul and encoder are "
        "compared at their best moments; the per-core table uses CPU time, which other jobs barely change.",
        f"- total benchmark time {time.perf_counter() - t_start:.0f} s",
        "",
        *e2e_lines,
        "",
        "## The encoders alone",
        "",
        f"EfficientNet-Lite0: {gflop:.3f} GFLOP per 224-px patch. Ceiling = dense matmul rate (1024^3) / that.",
        "",
        f"### {args.threads} threads, wall clock (patches/s)",
        "",
        f"Dense matmul: **fp32 {mm['fp32']:.0f} GFLOP/s**, **bf16 {mm['bf16']:.0f} GFLOP/s**. On a loaded "
        "machine the matmul's two OpenMP threads lose more to other jobs than the encoders' independent worker "
        "threads, so these percentages overstate; the per-core table below is the fair ratio.",
        "",
        header,
        "|---|---|---|---|---|",
        *[row(k, best[k], n, prec, mm) for k, (_, n, prec) in wall.items()],
        "",
        "### One thread, CPU time (patches per CPU-second)",
        "",
        f"Dense matmul on one thread: fp32 {mm1['fp32']:.0f}, bf16 {mm1['bf16']:.0f} GFLOP per CPU-second.",
        "",
        header,
        "|---|---|---|---|---|",
        *[row(k, best_cpu[k], n, prec, mm1) for k, (_, n, prec) in per_core.items()],
        "",
        f"EfficientNet patches: {source224}. Stain patches: {source64}. Stain fast / reference (wall clock): "
        f"{best['stain (fast)'] / best['stain (reference implementation)']:.1f}x.",
    ]
    if cos is not None:
        lines.append(
            f"bf16 vs fp32 EfficientNet-Lite0 features on those {len(cos)} real patches: cosine similarity per "
            f"patch min {cos.min():.4f}, median {np.median(cos):.4f}."
        )
    if args.compile:
        lines += ["", *compiled_rates(fp32, x224, has_bf16)]
    lines += [
        "",
        "## Patch reading alone (tile-wise reads + batched resampling)",
        "",
        "Synthetic 4096 x 4096 px slide at 0.5 um/px (1024-px chunks, 4-level pyramid), 2000 random centres.",
        "",
        "| patch (um) | output (px) | level used | level um/px | patches/s |",
        "|---|---|---|---|---|",
        *[f"| {s:g} | {o} | {i} | {m:g} | {r:.0f} |" for s, o, i, m, r in read],
        "",
        f"Naive one-patch-at-a-time dask reads (224 px, no resampling): {naive_rate:.0f} patches/s.",
        "",
        NOTES,
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
