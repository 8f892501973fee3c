"""The evaluation command: it reproduces a run's own numbers (causal, masked-LM and classification runs, full and
LoRA) and compares checkpoints on the same data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN, load_recipe
from tiny_checkpoints import WORDS, build_classifier, build_masked_lm

pretrain = load_recipe("pretrain")
finetune_mlm = load_recipe("finetune_mlm")
finetune_classification = load_recipe("finetune_classification")
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


# --- masked LM and classification: tiny BERTs over the word-level vocabulary of tests/tiny_checkpoints.py ---

TINY_FINETUNE = [
    "--block_size", "32", "--per_device_train_batch_size", "8", "--eval_steps", "3", "--logging_steps", "1",
    "--warmup_ratio", "0", "--learning_rate", "1e-2", "--max_steps", "6",
]  # fmt: skip
LORA = ["--use_lora", "true", "--lora_r", "4"]


@pytest.fixture(scope="module")
def mlm_runs(tmp_path_factory) -> dict[str, Path]:
    """A full and a LoRA masked-LM run on word sentences, with the non-default masking a run config must carry."""
    root = tmp_path_factory.mktemp("mlm")
    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    corpus = root / "words.txt"
    corpus.write_text("".join(" ".join(rng.choices(words, k=rng.randint(6, 14))) + " .\n" for _ in range(160)))
    base = build_masked_lm(root / "base")
    runs = {}
    for name, extra in (("full", []), ("lora", LORA)):
        runs[name] = root / name
        finetune_mlm.main([
            "--model_name_or_path", str(base), "--data_files", str(corpus), "--sample_by", "line",
            "--output_dir", str(runs[name]), "--validation_fraction", "0.15", "--test_fraction", "0.1",
            "--mlm_probability", "0.25", "--eval_mask_seed", "7", *TINY_FINETUNE, *extra,
        ])  # fmt: skip
    return runs


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_masked_lm_metrics_equal_the_runs_own(mlm_runs: dict[str, Path], kind: str) -> None:
    run = mlm_runs[kind]
    own = json.loads((run / "all_results.json").read_text())
    for split in ("validation", "test"):
        got = evaluate_recipe.main(["--model", str(run), "--run_config", str(run), "--split", split])[str(run)]
        assert got["task"] == "masked"
        for metric in ("loss", "perplexity", "accuracy", "masked_tokens"):
            assert got[metric] == pytest.approx(own[f"{split}_{metric}"], abs=1e-4), (split, metric)
    # The masking settings come from the run config: other masks score other tokens.
    other = evaluate_recipe.main(["--model", str(run), "--run_config", str(run), "--eval_mask_seed", "0"])[str(run)]
    assert other["loss"] != pytest.approx(own["validation_loss"], abs=1e-4)


def write_sentiment(folder: Path) -> list[str]:
    """JSON lines with a `sentiment` column of 0/1 (named by --label_names), so the run config must supply both."""
    positive, negative = "good happy big new sun".split(), "bad sad small old rain".split()
    filler = "the a cat dog sat on mat tree".split()
    entries = []
    for index, (split, size) in enumerate({"train": 96, "validation": 40, "test": 40}.items()):
        rng = random.Random(index)
        rows = []
        for _ in range(size):
            label = rng.randint(0, 1)
            tokens = rng.choices(positive if label else negative, k=rng.randint(1, 4)) + rng.choices(filler, k=4)
            rng.shuffle(tokens)
            rows.append(json.dumps({"text": " ".join(tokens), "sentiment": label}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
        entries.append(f"{split}={folder / f'{split}.jsonl'}")
    return entries


@pytest.fixture(scope="module")
def classification_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classification")
    files = write_sentiment(root)
    base = build_classifier(root / "base")
    runs = {}
    for name, extra in (("full", []), ("lora", LORA)):
        runs[name] = root / name
        finetune_classification.main([
            "--model_name_or_path", str(base), "--data_files", *files, "--label_column", "sentiment",
            "--label_names", "negative", "positive", "--output_dir", str(runs[name]), *TINY_FINETUNE, *extra,
        ])  # fmt: skip
    return runs


def test_classification_metrics_equal_the_runs_own(classification_runs: dict[str, Path]) -> None:
    run = classification_runs["full"]
    own = json.loads((run / "all_results.json").read_text())
    for split in ("validation", "test"):
        got = evaluate_recipe.main(["--model", str(run), "--run_config", str(run), "--split", split])[str(run)]
        assert got["task"] == "classification"
        for metric in ("loss", "accuracy", "f1_macro", "precision_macro", "recall_macro", "matthews_correlation"):
            assert got[metric] == pytest.approx(own[f"{split}_{metric}"], abs=1e-4), (split, metric)
        assert got["confusion_matrix"] == own[f"{split}_confusion_matrix"]
        assert got["confusion_matrix_labels"] == ["negative", "positive"]


def test_compare_two_classifiers_in_one_table(classification_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    full, lora = classification_runs["full"], classification_runs["lora"]
    out_file = tmp_path / "comparison.json"
    results = evaluate_recipe.main(["--model", str(full), "--compare", str(lora), "--run_config", str(full),
                                    "--output_file", str(out_file)])
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert "full" in header and "lora" in header and "f1_macro" in table and "confusion_matrix" in table
    assert json.loads(out_file.read_text()) == json.loads(json.dumps(results))
    for run in (full, lora):  # the LoRA adapter, rebuilt on its base, reproduces its own run too
        own = json.loads((run / "all_results.json").read_text())
        assert results[str(run)]["task"] == "classification"
        assert results[str(run)]["accuracy"] == pytest.approx(own["validation_accuracy"], abs=1e-4)
        assert results[str(run)]["f1_macro"] == pytest.approx(own["validation_f1_macro"], abs=1e-4)
