"""Experiments behind the optimisation choices (not part of run_all): each lever measured as an A/B ratio in one run.

    python benchmarks/levers.py             # ~10 minutes on 2 CPU cores; writes results/levers.json
    python benchmarks/levers.py --only compile

- wait: OpenMP waiting. OMP_WAIT_POLICY=PASSIVE (threads sleep at once) and GOMP_SPINCOUNT=10000 (spin briefly,
  then sleep) against libgomp's default (spin 300k iterations), in fresh interpreters (libgomp reads them once, when
  torch loads); `--contention N` adds N busy processes, as on a CPU shared with other jobs.
- threads: 1 against all torch threads (set_num_threads) on the B1 workload.
- compile: `torch_compile` in our loop against eager: the one-off compile time (cold inductor cache) and the
  steady-state step-time gain, hence the break-even number of steps.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # as run_all.py, before torch loads; the `wait` lever sets its own per child
import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    ROOT,
    Figure,
    alternate,
    cpu_lock,
    format_table,
    load_average,
    machine_info,
    paired_ratios,
)

RESULTS = Path(__file__).resolve().parent / "results" / "levers.json"
STEP_SCRIPT = """
import json, sys, time, torch
sys.path.insert(0, {root!r})
from benchmarks.pretraining import build_model
model = build_model("small", 4096, 256)
optimizer = torch.optim.AdamW(model.parameters(), fused=True)
batch = torch.randint(0, 4096, (8, 256), generator=torch.Generator().manual_seed(0))
times = []
for _ in range(4):
    started = time.perf_counter()
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    times.append(time.perf_counter() - started)
print(json.dumps({{"step_seconds": sorted(times[1:])[1], "all": times}}))
"""


WAIT_SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
}


def wait_policy_lever(repeats: int, contention: int = 0) -> list[Figure]:
    """Median step time of the B1 model (small, 8 x 256) in a fresh interpreter per OpenMP wait setting.

    `contention` busy processes run alongside (a CPU shared with other jobs, as on CI runners and shared boxes).
    """

    def trial(settings: dict[str, str]):
        def run(repeat: int) -> dict:
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(settings)
            out = subprocess.run([sys.executable, "-c", STEP_SCRIPT.format(root=str(ROOT))], env=env,
                                 capture_output=True, text=True, check=True, timeout=3600)
            return {**json.loads(out.stdout.strip().splitlines()[-1]), "load": load_average()}
        return run

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(contention)]
    try:
        runs = alternate({name: trial(settings) for name, settings in WAIT_SETTINGS.items()}, repeats)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    step = {name: [r["step_seconds"] for r in results] for name, results in runs.items()}
    where = f"{contention} busy processes alongside" if contention else "no added load"
    return [
        Figure(f"L1 {name} vs default, {where}", f"training step speed: {name} / default OpenMP wait ({where})",
               paired_ratios(step["default"], step[name]), details={"runs": runs, "settings": WAIT_SETTINGS})
        for name in WAIT_SETTINGS if name != "default"
    ]


def threads_lever(repeats: int, workdir: Path) -> list[Figure]:
    import torch

    from benchmarks.common import pretraining_corpus, quiet
    from benchmarks.pretraining import build_model, packed_blocks, run_our_loop
    from llm_recipes.data.text import collate_blocks

    quiet()
    corpus = pretraining_corpus(workdir, 4096)
    blocks = packed_blocks(corpus, 256, 8 * 8)
    cores = torch.get_num_threads()

    def trial(threads: int):
        def run(repeat: int) -> dict:
            torch.set_num_threads(threads)
            try:
                return run_our_loop(build_model("small", 4096, 256), blocks, collate_blocks, 8, 2, 6, workdir)
            finally:
                torch.set_num_threads(cores)
        return run

    runs = alternate({"all": trial(cores), "one": trial(1)}, repeats)
    return [Figure(f"L2 {cores} threads vs 1", f"our loop tokens/s: {cores} torch threads / 1 thread",
                   paired_ratios([r["tokens_per_second"] for r in runs["all"]],
                                 [r["tokens_per_second"] for r in runs["one"]]), details={"runs": runs})]


def compile_lever(
    repeats: int, workdir: Path, preset: str = "small", block: int = 256, batch: int = 8
) -> list[Figure]:
    """Compile time against steady-state gain of torch.compile in our loop: the break-even in optimizer steps."""
    from benchmarks.common import pretraining_corpus, quiet
    from benchmarks.pretraining import build_model, packed_blocks, run_our_loop
    from llm_recipes.data.text import collate_blocks

    quiet()
    corpus = pretraining_corpus(workdir, 4096)
    warmup, measured = 2, 8
    blocks = packed_blocks(corpus, block, batch * (warmup + measured))

    def trial(compiled: bool):
        def run(repeat: int) -> dict:
            model = build_model(preset, 4096, block)
            return run_our_loop(model, blocks, collate_blocks, batch, warmup, measured, workdir,
                                torch_compile=compiled)
        return run

    runs = alternate({"compiled": trial(True), "eager": trial(False)}, repeats)
    eager_step = [1 / r["steps_per_second"] for r in runs["eager"]]
    compiled_step = [1 / r["steps_per_second"] for r in runs["compiled"]]
    # The warm-up window holds the compilation; the first compiled run compiles cold (fresh inductor cache).
    extra = [(c["warmup_seconds"] - e["warmup_seconds"]) for c, e in zip(runs["compiled"], runs["eager"])]
    gains = [e - c for e, c in zip(eager_step, compiled_step)]
    cold_compile = extra[0]
    median_gain = sorted(gains)[len(gains) // 2]
    break_even = cold_compile / median_gain if median_gain > 0 else float("inf")
    details = {"runs": runs, "compile_seconds_cold": cold_compile, "compile_seconds_all": extra,
               "step_gain_seconds": gains, "break_even_steps": break_even,
               "setup": f"{preset} preset, block {block}, batch {batch}, {measured} steps after {warmup}"}
    return [Figure("L3 torch.compile steady gain", "our loop tokens/s: compiled / eager (after compilation)",
                   paired_ratios([r["tokens_per_second"] for r in runs["compiled"]],
                                 [r["tokens_per_second"] for r in runs["eager"]]), details=details,
                   note=f"cold compile {cold_compile:.0f} s; break-even after {break_even:.0f} optimizer steps")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="wait,threads,compile")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--contention", type=int, default=0, help="busy processes during the `wait` lever")
    parser.add_argument("--no-lock", action="store_true")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="llm-recipes-levers-"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(workdir / "inductor"))  # a cold compile cache
    figures: list[Figure] = []
    with cpu_lock(not args.no_lock):
        load_before = load_average()
        if "wait" in chosen:
            figures += wait_policy_lever(args.repeats, args.contention)
        if "threads" in chosen:
            figures += threads_lever(args.repeats, workdir)
        if "compile" in chosen:
            figures += compile_lever(args.repeats, workdir)
        load_after = load_average()
    table = format_table(figures)
    print(table)
    for figure in figures:
        if figure.note:
            print(f"  {figure.key}: {figure.note}")
    payload = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine_info(),
               "load_average_before": load_before, "load_average_after": load_after, "table": table,
               "figures": [f.to_json() for f in figures]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    previous.update({f["key"]: {**f, "date": payload["date"], "load_average_before": load_before,
                                "load_average_after": load_after} for f in payload["figures"]})
    RESULTS.write_text(json.dumps(previous, indent=2, default=str) + "\n")
    return payload


if __name__ == "__main__":
    main()
