"""The benchmark harness: alternating trials, ratio summaries, the table and JSON; a --quick smoke of two figures.

No timing is asserted: the figures are measurements, not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Figure, alternate, format_table, paired_ratios, save_results  # noqa: E402


def test_alternate_reverses_the_order_on_every_repeat():
    calls = []
    trials = {name: (lambda repeat, name=name: calls.append((repeat, name)) or repeat) for name in "ABC"}
    results = alternate(trials, repeats=3)
    assert [name for _, name in calls] == list("ABCCBAABC")
    assert results == {"A": [0, 1, 2], "B": [0, 1, 2], "C": [0, 1, 2]}


def test_figure_median_spread_and_status():
    faster = Figure("B1", "ours / theirs", paired_ratios([3.0, 2.0, 9.0], [1.0, 1.0, 3.0]), target=2.5)
    assert faster.ratios == [3.0, 2.0, 3.0]
    record = faster.to_json()
    assert (record["median"], record["min"], record["max"], record["repeats"]) == (3.0, 2.0, 3.0, 3)
    assert record["status"] == "met"
    memory = Figure("B7", "lora / full", [0.7, 0.8, 0.65], target=0.6, target_is_max=True)
    assert memory.status == "MISSED"
    assert Figure("info", "no target", [1.0, 1.0, 1.0]).status == "info"


def test_table_and_results_files(tmp_path):
    figures = [Figure("B3 x", "useful / slots", [0.98, 0.99, 1.0], target=0.95, unit="%")]
    table = format_table(figures)
    assert "| B3 x" in table and "99.0%" in table and "98.0% - 100.0%" in table and ">= 95.0%" in table
    dated, latest = save_results({"quick": False, "figures": [f.to_json() for f in figures]}, tmp_path)
    assert latest.name == "latest.json" and dated.exists()
    assert json.loads(latest.read_text())["figures"][0]["status"] == "met"


@pytest.mark.slow
def test_quick_run_of_two_figures(tmp_path):
    """`run_all.py --quick` end to end on the preprocessing and wasted-slot figures."""
    completed = subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--quick", "--only", "B3,B5", "--no-lock", "--results-dir",
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| figure" in completed.stdout
    payload = json.loads((tmp_path / "latest-quick.json").read_text())
    assert payload["machine"]["cpu_cores"] >= 1 and payload["machine"]["versions"]["torch"]
    assert "error" not in payload["groups"]["B3"] and "error" not in payload["groups"]["B5"]
    figures = {figure["key"]: figure for figure in payload["figures"]}
    packed = figures["B3 pretraining"]
    assert packed["repeats"] == 3 and packed["median"] == pytest.approx(1.0)  # packed blocks hold no padding
    assert 0 < figures["B3 classification run_glue"]["median"] < figures["B3 classification"]["median"] <= 1
    assert figures["B5 tokenize+pack"]["median"] > 0
