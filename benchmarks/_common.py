"""Shared benchmark plumbing: the machine header, per-stage timing and memory, subprocess runs, result files.

Peak memory is measured two ways, both per run:

- per stage, inside the worker: the kernel's high-water mark of resident memory (``VmHWM``), reset before each
  stage through ``/proc/self/clear_refs`` (Linux), so each stage reports its own peak;
- per run, by the parent: ``ru_maxrss`` of the child from ``os.wait4`` (every size runs in its own process, so
  peaks never carry over from one size to the next).

Each stage also records its CPU seconds (all threads of the process): on a shared machine wall time includes
waiting for the CPU, CPU time does not.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"  # raw numbers (committed); RESULTS.md is generated from them
WORK_DIR = BENCH_DIR / "_work"  # logs and scratch stores (gitignored)
PYTHON = sys.executable


# -- machine and versions -----------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("nichekd", "numpy", "scipy", "scikit-learn", "torch", "anndata", "scanpy", "spatialdata",
                "dask", "distributed", "zarr"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy the machine was."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(_total_memory_gb(), 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "versions": package_versions(),
    }


def commit() -> str:
    """The checkout's commit, with ``+uncommitted`` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+uncommitted" if git("status", "--porcelain", "--untracked-files=no") else "")


def header_lines(info: dict[str, Any]) -> list[str]:
    """Markdown lines describing one run's machine."""
    v = info["versions"]
    return [
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, {info['os']}",
        f"- measured: {info['date']} (1-min load average then: {info['load_average_1min']}), commit "
        f"{info.get('commit', 'not recorded')}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]


# -- memory and time of stages ------------------------------------------------------------------------------
def reset_peak() -> bool:
    """Reset this process's resident-memory high-water mark (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    """Resident-memory high-water mark since the last :func:`reset_peak` (MB)."""
    try:
        return _status_kb("VmHWM") / 1024
    except OSError:  # not Linux: the process-lifetime peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """Records wall time and peak memory of named stages, in order."""

    def __init__(self, before: Callable[[], None] | None = None) -> None:
        self.records: dict[str, dict[str, float]] = {}
        self.before = before  # called before every stage (untimed)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.before is not None:
            self.before()
        reset_peak()
        start_rss = rss_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        wall = time.perf_counter() - t0
        # CPU seconds of all this process's threads: on a shared machine, what the stage cost, not its wait
        cpu = time.process_time() - c0
        self.records[name] = {"seconds": wall, "cpu_s": cpu, "peak_mb": peak_mb(), "start_mb": start_rss}
        print(
            f"[stage] {name}: {wall:.1f} s (CPU {cpu:.1f} s), peak {self.records[name]['peak_mb']:.0f} MB",
            flush=True,
        )


# -- subprocess runs -----------------------------------------------------------------------------------------
RESULT_MARK = "@@RESULT@@"


def emit(result: dict[str, Any]) -> None:
    """Worker side: hand a JSON result to the parent on stdout."""
    print(RESULT_MARK + json.dumps(result, default=float), flush=True)


def run_worker(args: Sequence[str], log_path: Path, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``python *args`` in its own process; return its emitted result plus wall time and peak memory.

    The child's output goes to ``log_path``; its whole-process peak resident memory comes from ``os.wait4``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # this checkout's nichekd first (not an installed copy from another checkout)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([PYTHON, *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = None if timeout_s is None else t0 + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
    result["process"] = {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KB on Linux
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "returncode": proc.returncode,
        "log": str(log_path.relative_to(REPO)) if log_path.is_relative_to(REPO) else str(log_path),
    }
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        print(
            f"worker {' '.join(args)} failed (exit {proc.returncode}); log {log_path}:\n{tail}",
            file=sys.stderr,
        )
    return result


# -- results -------------------------------------------------------------------------------------------------
def load_results(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def save_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path


def loglog_slope(n: Sequence[float], t: Sequence[float]) -> float:
    """Least-squares slope of ``log t`` against ``log n``: the growth exponent (1 = linear)."""
    n, t = np.asarray(n, float), np.asarray(t, float)
    ok = (n > 0) & (t > 0) & np.isfinite(t)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(n[ok]), np.log(t[ok]), 1)[0])


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample sd) with 3 decimals."""
    v = np.asarray(values, float)
    if len(v) == 0:
        return "n/a"
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {sd:.3f}"


def fmt_seconds(s: float) -> str:
    if not np.isfinite(s):
        return "n/a"
    if s < 1:
        return f"{s:.2f} s"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"
