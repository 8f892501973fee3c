"""The measuring stick: alternating trials, ratios with median and spread, machine facts, subprocess workers.

These machines are shared and noisy, so no figure is an absolute number taken at one moment: every figure is a ratio
of two things measured in the same run, in alternating order (A B, B A, A B, ...), at least three times. A figure's
value is the median of the per-repeat ratios and its spread is their min-max.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
LOCK_FILE = "/tmp/cpu.lock"


# ---------------------------------------------------------------------------------------------------------------------
# Figures


@dataclass
class Figure:
    """One row of the table: a ratio (median over repeats, min-max spread) against its target."""

    key: str  # e.g. "B1.defaults"
    what: str  # what the ratio divides, in words
    ratios: list[float]
    target: float | None = None
    target_is_max: bool = False  # True when smaller is better (memory, scale)
    unit: str = "x"
    details: dict[str, Any] = field(default_factory=dict)  # the raw measurements behind the ratio
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    @property
    def status(self) -> str:
        if self.target is None or not self.ratios:
            return "info"
        met = self.median <= self.target if self.target_is_max else self.median >= self.target
        return "met" if met else "MISSED"

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            median=self.median,
            min=min(self.ratios) if self.ratios else None,
            max=max(self.ratios) if self.ratios else None,
            repeats=len(self.ratios),
            status=self.status,
        )
        return record


def format_value(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3g} {unit}"


def format_table(figures: list[Figure]) -> str:
    """A markdown table: figure, what it compares, median, spread, target, status."""
    rows = [("figure", "ratio", "median", "spread (min-max)", "n", "target", "status")]
    for fig in figures:
        spread = (
            f"{format_value(min(fig.ratios), fig.unit)} - {format_value(max(fig.ratios), fig.unit)}"
            if fig.ratios
            else "n/a"
        )
        target = (
            "" if fig.target is None else ("<= " if fig.target_is_max else ">= ") + format_value(fig.target, fig.unit)
        )
        rows.append(
            (fig.key, fig.what, format_value(fig.median, fig.unit), spread, str(len(fig.ratios)), target, fig.status)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Alternating trials


def alternate(trials: dict[str, Callable[[int], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run every trial `repeats` times, reversing the order on each repeat (A B C, C B A, A B C, ...).

    A slow drift of the machine's load then hits every variant alike; each trial gets the repeat number.
    """
    names = list(trials)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            results[name].append(trials[name](repeat))
    return results


def paired_ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Ratio per repeat (the two measurements of one repeat ran back to back)."""
    return [a / b if b else float("nan") for a, b in zip(numerators, denominators)]


def median_spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {}


# ---------------------------------------------------------------------------------------------------------------------
# Machine, load and memory


def choose_omp_wait_policy() -> str:
    """OpenMP threads that sleep while they wait (PASSIVE) unless OMP_WAIT_POLICY is set. Call before torch loads.

    Measured (benchmarks/levers.py, B1 model): PASSIVE is ~0.88x on an idle CPU, but 1.6x with 3 busy processes
    alongside and ~10x at a load of 10 on 2 cores, where the spinning threads of every process steal each other's
    cores. The load of a shared machine changes during a run, so a benchmark takes the safe side.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import torch

    flags = cpu_flags()
    memory_gb = None
    with contextlib.suppress(OSError, ValueError):
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": memory_gb,
        "cpu_bf16_units": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"}) or "none",
        "cpu_vector": sorted(flags & {"avx2", "avx512f", "fma"}),
        "cuda": torch.cuda.is_available(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "python": platform.python_version(),
        "versions": {
            name: package_version(name)
            for name in ("torch", "transformers", "datasets", "accelerate", "tokenizers", "peft")
        },
    }


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (what `uptime` prints): how busy the shared CPU was."""
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return float("nan")


@contextlib.contextmanager
def cpu_lock(enabled: bool = True) -> Iterator[None]:
    """Hold /tmp/cpu.lock (the same lock as `flock /tmp/cpu.lock ...`) so no two timed runs overlap."""
    if not enabled:
        yield
        return
    with open(LOCK_FILE, "a") as handle:
        started = time.perf_counter()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waited = time.perf_counter() - started
        if waited > 1:
            print(f"(waited {waited:.0f} s for {LOCK_FILE})", flush=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------------------
# Fresh processes (memory figures need one per measurement: a process's peak RSS only ever grows)

_CONTEXT = None
WORKER_PRELOAD = ["torch", "transformers", "datasets", "peft", "accelerate", "llm_recipes.training",
                  "llm_recipes.data.text", "llm_recipes.lora", "benchmarks.memory"]


def worker_context():
    """A forkserver that imported the heavy libraries once: every measurement runs in its own fresh child process
    forked from it (the same baseline for all, without paying the imports again), never from this busy process."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(WORKER_PRELOAD)
    return _CONTEXT


def _child(function: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any], queue) -> None:
    try:
        queue.put(("ok", function(args)))
    except BaseException:  # noqa: B036 - report anything to the parent, then exit
        import traceback

        queue.put(("error", traceback.format_exc()))


def run_in_fresh_process(function: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any],
                         timeout: float = 1800) -> dict[str, Any]:
    """Run `function(args)` in a new process (forked from the preloaded server) and return its result dict."""
    context = worker_context()
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, args, queue))
    process.start()
    try:
        status, value = queue.get(timeout=timeout)
    finally:
        process.join(timeout=60)
    if status != "ok":
        raise RuntimeError(f"benchmark worker {function.__name__}({args}) failed:\n{value}")
    return value


class AnonymousMemoryPeak:
    """Polls RssAnon (memory the process cannot give back; RSS also counts memory-mapped file pages, which the
    kernel can reclaim) every few milliseconds and keeps its maximum."""

    def __init__(self, interval: float = 0.02) -> None:
        import threading

        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def read_mb() -> float:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.read_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> AnonymousMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.read_mb())


def process_peak_rss_mb() -> dict[str, float]:
    """Peak RSS of this process: ru_maxrss, and VmHWM from /proc (the same on Linux), in MiB."""
    result = {"ru_maxrss_mb": peak_rss_mb()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM", "VmRSS")):
                result[line.split(":")[0]] = int(line.split()[1]) / 1024
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Results


def save_results(payload: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    """Write results/<date>.json and results/latest.json."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    dated = results_dir / f"{stamp}{'-quick' if payload.get('quick') else ''}.json"
    text = json.dumps(payload, indent=2, default=str) + "\n"
    dated.write_text(text, encoding="utf-8")
    latest = results_dir / ("latest-quick.json" if payload.get("quick") else "latest.json")
    latest.write_text(text, encoding="utf-8")
    return dated, latest
