"""Masked-LM recipe: an encoder from scratch learns, evaluation masks are fixed, whole words mask together, checkpoints
with and without an MLM head, LoRA adapters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, load_recipe
from datasets import Dataset, DatasetDict
from tiny_checkpoints import WORDS, _bert_config, build_masked_lm, encoder_tokenizer
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertModel

from llm_recipes.config import DataConfig, TokenizerConfig
from llm_recipes.data.tokenizer import ENCODER_SPECIAL_TOKENS, train_bpe_tokenizer
from llm_recipes.lora import load_adapter_model
from llm_recipes.tasks.mlm import MLMConfig, encoder_blocks, masking_collator, mlm_datasets

finetune_mlm = load_recipe("finetune_mlm")

TINY_ENCODER = [
    "--model_preset", "tiny", "--vocab_size", "300", "--min_frequency", "1", "--block_size", "32",
    "--per_device_train_batch_size", "8", "--eval_steps", "10", "--logging_steps", "1", "--warmup_ratio", "0",
    "--learning_rate", "3e-3", "--validation_fraction", "0.1", "--test_fraction", "0.1",
]  # fmt: skip


def train_losses(output: Path) -> list[float]:
    return [r["loss"] for r in json.loads((output / "log_history.json").read_text()) if "loss" in r]


@pytest.fixture
def word_corpus(tmp_path: Path) -> Path:
    """Sentences over the tiny word-level vocabulary of tests/tiny_checkpoints.py (no unknown words)."""
    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + " ." for _ in range(120)]
    path = tmp_path / "words.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def bpe_encoder_tokenizer():
    return train_bpe_tokenizer(
        SENTENCES * 30, TokenizerConfig(vocab_size=300, min_frequency=1), special_tokens=ENCODER_SPECIAL_TOKENS
    )


def test_encoder_from_scratch_learns(text_corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "mlm"
    args = ["--data_files", str(text_corpus), "--output_dir", str(output), *TINY_ENCODER]
    results = finetune_mlm.main([*args, "--max_steps", "24", "--eval_steps", "12", "--eval_before_training", "true"])
    losses = train_losses(output)
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses
    assert results["validation_loss"] < results["validation_loss_before_training"] - 1.0
    assert results["validation_accuracy"] > results["validation_accuracy_before_training"] + 0.03
    assert results["validation_perplexity"] == pytest.approx(torch.tensor(results["validation_loss"]).exp().item())
    assert results["newly_initialised_weights"] == ["all (built from scratch)"]
    # A BERT-style encoder with its own tokenizer, loadable with the Auto classes.
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoModelForMaskedLM.from_pretrained(output)
    assert model.config.model_type == "bert" and tokenizer.mask_token == "[MASK]"
    encoded = tokenizer("A function returns a [MASK] to its caller.", return_tensors="pt")
    assert model(**encoded).logits.shape[-1] == len(tokenizer)


def test_evaluation_masks_are_fixed_and_training_masks_are_fresh(tmp_path: Path) -> None:
    tokenizer = bpe_encoder_tokenizer()
    text = [" ".join(SENTENCES[i % 6 :] + SENTENCES[: i % 6]) for i in range(30)]
    raw = DatasetDict({"train": Dataset.from_dict({"text": text}), "validation": Dataset.from_dict({"text": text})})
    data_cfg, mlm_cfg = DataConfig(block_size=32), MLMConfig()
    first = mlm_datasets(raw, tokenizer, data_cfg, mlm_cfg, block_size=32)["validation"]
    second = mlm_datasets(raw, tokenizer, data_cfg, mlm_cfg, block_size=32)["validation"]
    first, second = first[:], second[:]  # every row, as tensors
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    masked = (first["labels"] != -100).float().mean().item()
    assert 0.08 < masked < 0.22  # ~15% of the (non-special) tokens
    reseeded = mlm_datasets(raw, tokenizer, data_cfg, MLMConfig(eval_mask_seed=1), block_size=32)["validation"]
    assert not torch.equal(first["labels"], reseeded[:]["labels"])

    train = mlm_datasets(raw, tokenizer, data_cfg, mlm_cfg, block_size=32)["train"]
    collator = masking_collator(tokenizer, mlm_cfg)
    examples = [train[i] for i in range(8)]
    assert not torch.equal(collator(examples)["labels"], collator(examples)["labels"])


def test_whole_word_masking_masks_every_piece_of_a_word() -> None:
    tokenizer = bpe_encoder_tokenizer()
    text = ["Readability counts, and simple is better than complex. Errors should never pass silently."] * 8
    blocks = encoder_blocks(Dataset.from_dict({"text": text}), tokenizer, "text", 24, whole_word_mask=True)
    examples = [blocks[i] for i in range(len(blocks))]
    batch = masking_collator(tokenizer, MLMConfig(mlm_probability=0.4, whole_word_mask=True), seed=0)(examples)
    multi_piece_words = 0
    for example, labels in zip(examples, batch["labels"].tolist()):
        masked = [label != -100 for label in labels]
        # Word = a run of tokens whose offsets touch (leading spaces trimmed) between special tokens.
        words, previous_end = [], None
        for index, ((start, end), special) in enumerate(
            zip(example["offset_mapping"], example["special_tokens_mask"])
        ):
            if special:
                previous_end = None
                continue
            if previous_end is None or start != previous_end:
                words.append([])
            words[-1].append(index)
            previous_end = end
        for word in words[1:]:  # the first may continue a word cut at the block's start
            assert len({masked[i] for i in word}) == 1, [tokenizer.decode(example["input_ids"][i]) for i in word]
            multi_piece_words += len(word) > 1
    assert multi_piece_words > 5 and batch["labels"].ne(-100).any()


def test_checkpoint_without_mlm_head_gets_a_new_one_and_a_full_one_keeps_its(tmp_path: Path, word_corpus) -> None:
    headless = tmp_path / "headless"
    torch.manual_seed(0)
    tokenizer = encoder_tokenizer()
    BertModel(_bert_config(tokenizer)).save_pretrained(headless)  # like all-MiniLM-L6-v2: encoder weights only
    tokenizer.save_pretrained(headless)
    args = ["--data_files", str(word_corpus), "--sample_by", "line", "--block_size", "32", "--max_steps", "2",
            "--eval_steps", "2", "--per_device_train_batch_size", "8", "--validation_fraction", "0.1",
            "--test_fraction", "0.1"]  # fmt: skip
    results = finetune_mlm.main(["--model_name_or_path", str(headless), "--output_dir", str(tmp_path / "a"), *args])
    assert "cls.predictions.transform.dense.weight" in results["newly_initialised_weights"]
    assert not any(name.startswith("bert.") for name in results["newly_initialised_weights"])

    full = build_masked_lm(tmp_path / "full")
    results = finetune_mlm.main(["--model_name_or_path", str(full), "--output_dir", str(tmp_path / "b"), *args])
    assert results["newly_initialised_weights"] == []
    assert results["validation_masked_tokens"] > 0


def test_lora_mlm_saves_a_small_adapter_that_reloads(tmp_path: Path, word_corpus: Path) -> None:
    base = build_masked_lm(tmp_path / "base")
    output = tmp_path / "lora"
    results = finetune_mlm.main([
        "--model_name_or_path", str(base), "--data_files", str(word_corpus), "--sample_by", "line",
        "--output_dir", str(output),
        "--block_size", "32", "--max_steps", "6", "--eval_steps", "3", "--per_device_train_batch_size", "8",
        "--use_lora", "true", "--lora_r", "4", "--learning_rate", "1e-2", "--validation_fraction", "0.1",
        "--test_fraction", "0.1", "--merge_lora", "true",
    ])  # fmt: skip
    assert (output / "adapter_model.safetensors").is_file() and not (output / "model.safetensors").exists()
    assert results["trainable_parameters"] < 0.25 * results["num_parameters"]
    reloaded = load_adapter_model(output).eval()
    inputs = AutoTokenizer.from_pretrained(output)("the cat sat on the [MASK] .", return_tensors="pt")
    merged = AutoModelForMaskedLM.from_pretrained(output / "merged").eval()
    fresh_base = AutoModelForMaskedLM.from_pretrained(base).eval()
    with torch.no_grad():
        logits = reloaded(**inputs).logits
        torch.testing.assert_close(logits, merged(**inputs).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(logits, fresh_base(**inputs).logits)  # the adapter did change the model
