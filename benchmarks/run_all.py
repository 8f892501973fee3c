"""Run every benchmark figure, print the table, save it as JSON with the date and the machine.

    python benchmarks/run_all.py            # the full run (~25 minutes on 2 CPU cores), writes results/latest.json
    python benchmarks/run_all.py --quick    # every figure at toy sizes (~3 minutes): a smoke test of the harness
    python benchmarks/run_all.py --only B1,B6 --repeats 5

Each figure is a ratio of two measurements taken in this run, alternating, at least 3 times: the table shows the
median ratio and its min-max spread. The run holds /tmp/cpu.lock (as `flock /tmp/cpu.lock`) so that timed runs of
other users of the machine never overlap with it; the load average before and after is saved with the results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("TQDM_DISABLE", "1")  # the table is the output, not the loops' progress bars
from benchmarks.harness import choose_omp_wait_policy  # noqa: E402

# Before torch loads (libgomp reads it once): OpenMP threads that sleep while waiting (other jobs share the CPU).
choose_omp_wait_policy()

from benchmarks import generation, memory, preprocessing, pretraining, slots, training_classification  # noqa: E402
from benchmarks.common import Scale, pretraining_corpus, quiet  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Figure,
    cpu_lock,
    format_table,
    load_average,
    machine_info,
    save_results,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIGURES = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8")
NEEDS_CORPUS = {"B1", "B2", "B3", "B5", "B7", "B8"}


def run_figure(name: str, scale: Scale, workdir: Path, state: dict) -> list[Figure]:
    """One figure group; the pretraining corpus and tokenizer are built once and shared."""
    if name in NEEDS_CORPUS and "corpus" not in state:
        state["corpus"] = pretraining_corpus(workdir, scale.vocab_size)
    corpus = state.get("corpus")
    if name == "B1":
        return pretraining.b1_pretraining_throughput(corpus, scale, workdir)
    if name == "B2":
        return pretraining.b2_mfu(corpus, scale, workdir)
    if name == "B3":
        return slots.b3_wasted_slots(corpus, scale, workdir)
    if name == "B4":
        return training_classification.b4_classification_throughput(scale, workdir)
    if name == "B5":
        return preprocessing.b5_preprocessing(corpus, scale)
    if name == "B6":
        return generation.b6_generation(scale)
    if name == "B7":
        return memory.b7_lora_memory(corpus, scale, workdir)
    if name == "B8":
        return memory.b8_scale(corpus, scale, workdir)
    raise ValueError(f"unknown figure {name}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes: a few minutes in all")
    parser.add_argument("--only", default=",".join(FIGURES), help="comma list of figures, e.g. B1,B3")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per figure (at least 3)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where <date>.json and latest.json go")
    parser.add_argument("--no-lock", action="store_true", help="do not take /tmp/cpu.lock (smoke tests)")
    args = parser.parse_args(argv)
    selected = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    if args.repeats < 3:
        parser.error("--repeats must be at least 3: a median and a spread need three measurements")

    quiet()
    scale = Scale.for_mode(args.quick)
    scale.repeats = args.repeats
    workdir = Path(tempfile.mkdtemp(prefix="llm-recipes-bench-"))
    figures: list[Figure] = []
    groups: dict[str, dict] = {}
    state: dict = {}
    started_at = dt.datetime.now().astimezone()
    with cpu_lock(not args.no_lock):
        load_before = load_average()
        started = time.perf_counter()
        try:
            for name in selected:
                group_started, group_load = time.perf_counter(), load_average()
                print(f"[{time.perf_counter() - started:6.0f} s] {name} ...", flush=True)
                try:
                    new = run_figure(name, scale, workdir, state)
                    error = None
                except Exception as exc:  # one broken figure must not lose the others
                    traceback.print_exc()
                    new, error = [], f"{type(exc).__name__}: {exc}"
                figures += new
                groups[name] = {
                    "seconds": round(time.perf_counter() - group_started, 1),
                    "load_before": group_load,
                    "load_after": load_average(),
                    **({"error": error} if error else {}),
                }
                for figure in new:
                    print(f"    {figure.key}: {figure.median:.4g} ({figure.status})", flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        load_after = load_average()
        seconds = time.perf_counter() - started

    payload = {
        "date": started_at.isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "seconds": round(seconds, 1),
        "repeats": scale.repeats,
        "groups": groups,
        "figures": [figure.to_json() for figure in figures],
    }
    table = format_table(figures)
    machine = payload["machine"]
    print()
    print(f"llm-recipes benchmarks, {payload['date']}{' (--quick)' if args.quick else ''}")
    print(
        f"machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, bf16 units: {machine['cpu_bf16_units']}, "
        f"torch {machine['versions']['torch']}, transformers {machine['versions']['transformers']}"
    )
    print(f"load average before {load_before}, after {load_after}; {seconds / 60:.1f} minutes")
    print(table)
    for figure in figures:
        if figure.note:
            print(f"  {figure.key}: {figure.note}")
    for name, group in groups.items():
        if "error" in group:
            print(f"  {name} FAILED: {group['error']}")
    payload["table"] = table
    dated, latest = save_results(payload, Path(args.results_dir))
    print(f"saved {dated} and {latest}")
    return payload


if __name__ == "__main__":
    main()
