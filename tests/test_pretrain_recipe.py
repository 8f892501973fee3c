"""The pretraining recipe end to end: sources, output folder contract, generation CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN, load_recipe
from datasets import Dataset

from llm_recipes.config import parse_config
from llm_recipes.generation import main as generate_main

pretrain = load_recipe("pretrain")
TINY_YAML = str(Path(pretrain.__file__).parent / "configs" / "pretrain_tiny.yaml")


def test_output_folder_is_complete_and_rerunnable(text_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = pretrain.main(["--config", TINY_YAML, "--data_files", str(text_corpus), "--output_dir", str(out),
                             *TINY_PRETRAIN, "--max_steps", "6"])
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "all_results.json",
                 "log_history.json", "recipe.yaml"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "all_results.json").read_text())
    for key in ("validation_loss", "validation_perplexity", "validation_bits_per_byte", "test_perplexity",
                "validation_unigram_perplexity", "validation_bytes_per_token", "tokens_seen", "train_runtime_s",
                "train_tokens_per_second", "samples"):
        assert key in saved, key
    assert saved["validation_perplexity"] == pytest.approx(results["validation_perplexity"])
    # The resolved recipe parses back into the same settings.
    _, _, model_cfg, train_cfg = parse_config(pretrain.CONFIG_TYPES, ["--config", str(out / "recipe.yaml")])
    assert train_cfg.max_steps == 6 and model_cfg.model_preset == "tiny"
    # A finished run is never overwritten by accident.
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        pretrain.main(["--config", TINY_YAML, "--data_files", str(text_corpus), "--output_dir", str(out)])

    text = generate_main(["--model", str(out), "--prompt", "Every module", "--max_new_tokens", "5", "--seed", "0"])
    assert isinstance(text, str)


def test_dataset_by_name_goes_through_load_dataset(tmp_path: Path) -> None:
    """`--dataset_name` takes the `datasets.load_dataset` path users take for Hub ids (here a local dataset dir)."""
    source = tmp_path / "hub_like"
    source.mkdir()
    rows = [{"content": f"Sentence number {i} is about the topic {i % 7}. " * 6} for i in range(60)]
    Dataset.from_list(rows).to_parquet(str(source / "train.parquet"))
    results = pretrain.main(["--config", TINY_YAML, "--dataset_name", str(source), "--text_column", "content",
                             "--output_dir", str(tmp_path / "out"), *TINY_PRETRAIN, "--max_steps", "3"])
    assert results["global_step"] == 3


def test_streaming_mode_trains_from_a_stream(text_corpus: Path, tmp_path: Path) -> None:
    results = pretrain.main(["--config", TINY_YAML, "--data_files", str(text_corpus), "--streaming", "true",
                             "--streaming_eval_documents", "4", "--output_dir", str(tmp_path / "out"),
                             *TINY_PRETRAIN, "--max_steps", "4"])
    assert results["global_step"] == 4 and results["validation_tokens"] > 0


@pytest.mark.slow
def test_default_recipe_on_the_embedded_corpus_beats_unigram(tmp_path: Path) -> None:
    """The README's main command, shortened: the embedded corpus, the default model, 60 of its 258 steps."""
    results = pretrain.main(["--output_dir", str(tmp_path / "out"), "--max_steps", "60", "--eval_steps", "60",
                             "--save_steps", "60"])
    assert results["validation_perplexity"] < results["validation_unigram_perplexity"]
