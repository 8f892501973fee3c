"""The evaluation command: it reproduces a run's own numbers and compares checkpoints on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN, load_recipe

pretrain = load_recipe("pretrain")
evaluate_recipe = load_recipe("evaluate_checkpoint")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the module returns a value to its caller. " * 4
                                  for i in range(80)), encoding="utf-8")
    tiny = str(Path(pretrain.__file__).parent / "configs" / "pretrain_tiny.yaml")
    runs = []
    for name, steps in (("short", "2"), ("longer", "12")):
        out = root / name
        pretrain.main(["--config", tiny, "--data_files", str(corpus), "--output_dir", str(out), *TINY_PRETRAIN,
                       "--max_steps", steps, "--validation_fraction", "0.1", "--test_fraction", "0.1"])
        runs.append(out)
    return corpus, runs[0], runs[1]


def test_perplexity_equals_the_runs_own_validation_perplexity(two_runs, tmp_path: Path) -> None:
    _, _, run = two_runs
    out_file = tmp_path / "eval.json"
    results = evaluate_recipe.main(["--model", str(run), "--run_config", str(run), "--output_file", str(out_file)])
    own = json.loads((run / "all_results.json").read_text())
    got = results[str(run)]
    assert got["task"] == "causal"
    assert got["perplexity"] == pytest.approx(own["validation_perplexity"], abs=1e-4)
    assert got["bits_per_byte"] == pytest.approx(own["validation_bits_per_byte"], abs=1e-6)
    assert json.loads(out_file.read_text())[str(run)]["perplexity"] == pytest.approx(got["perplexity"])
    test_split = evaluate_recipe.main(["--model", str(run), "--run_config", str(run), "--split", "test"])
    assert test_split[str(run)]["perplexity"] == pytest.approx(own["test_perplexity"], abs=1e-4)


def test_compare_two_checkpoints_and_sliding_window(two_runs, capsys) -> None:
    _, short, longer = two_runs
    results = evaluate_recipe.main(["--model", str(short), "--compare", str(longer), "--run_config", str(longer)])
    assert results[str(longer)]["loss"] < results[str(short)]["loss"]  # more training, lower loss, same data
    table = capsys.readouterr().out
    assert "short" in table and "longer" in table and "perplexity" in table
    packed = results[str(longer)]
    sliding = evaluate_recipe.main(["--model", str(longer), "--run_config", str(longer), "--stride", "8"])[str(longer)]
    assert sliding["tokens"] != packed["tokens"]  # a different window layout scores a different token set
    assert sliding["loss"] < packed["loss"] + 0.5
