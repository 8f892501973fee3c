"""Causal fine-tuning: assistant-only label masks, packing without leaks, chat data errors, SFT end to end, LoRA."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, load_recipe
from datasets import Dataset
from peft import AutoPeftModelForCausalLM
from tiny_checkpoints import causal_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llm_recipes.config import TokenizerConfig
from llm_recipes.data.chat import (
    IGNORE_INDEX,
    ROLE_TOKENS,
    ChatDataError,
    PackedCollator,
    install_default_chat_template,
    pack_examples,
    tokenize_conversation,
)
from llm_recipes.data.sources import DataError
from llm_recipes.data.tokenizer import train_bpe_tokenizer
from llm_recipes.tasks.sft import check_packing_isolation

finetune_causal = load_recipe("finetune_causal")

COLORS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow"}
PHRASES = ("What color is the {}?", "Tell me the color of the {}.", "Which color does the {} have?", "Color of {}?")


def labelled_segments(encoded: dict[str, list[int]], tokenizer) -> list[str]:
    """The decoded runs of tokens that carry loss."""
    segments, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            segments.append(tokenizer.decode(current))
            current = []
    return segments + ([tokenizer.decode(current)] if current else [])


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory) -> Path:
    """A small byte-level BPE (the kind the pretraining recipe trains) saved once; tests load fresh copies."""
    texts = SENTENCES * 20 + [f"{p.format(k)} {v}" for k, v in COLORS.items() for p in PHRASES] * 10
    folder = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1)).save_pretrained(folder)
    return folder


def tiny_causal_checkpoint(folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and no chat template, saved like a pretraining output."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def color_chats(folder: Path, rows: int = 96, seed: int = 0) -> Path:
    """Conversations whose answers are a learnable function of the question, as JSON lines in `messages` format."""
    rng = random.Random(seed)
    path = folder / "chats.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(rows):
            thing = rng.choice(sorted(COLORS))
            question = rng.choice(PHRASES).format(thing)
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": COLORS[thing]}]
            handle.write(json.dumps({"messages": turns}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Label masks


def test_label_mask_covers_assistant_turns_only_with_the_installed_template(bpe_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bpe_folder)
    added = install_default_chat_template(tokenizer)
    assert tokenizer.convert_ids_to_tokens(added) == list(ROLE_TOKENS.values())
    messages = [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "What color is the sky?"},
        {"role": "assistant", "content": "blue"},
        {"role": "user", "content": "And the grass?"},
        {"role": "assistant", "content": "green, mostly"},
    ]
    encoded = tokenize_conversation(messages, tokenizer)
    eos = tokenizer.eos_token
    assert labelled_segments(encoded, tokenizer) == [f"blue{eos}", f"green, mostly{eos}"]
    # Everything else (system, user turns, role headers) is in the inputs but carries no loss.
    unlabelled = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label == IGNORE_INDEX]
    text = tokenizer.decode(unlabelled)
    assert "Answer with one word." in text and "And the grass?" in text and "<|assistant|>\n" in text
    assert tokenizer.decode(encoded["input_ids"]) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id  # the template ends turns with end-of-text already


def test_label_mask_with_a_checkpoint_template_appends_end_of_text() -> None:
    tokenizer = causal_tokenizer(chat=True)  # "role : content ." turns; nothing marks the end of the text
    messages = [{"role": "user", "content": "the cat sat"}, {"role": "assistant", "content": "on the mat"}]
    encoded = tokenize_conversation(messages, tokenizer)
    assert labelled_segments(encoded, tokenizer) == ["on the mat . <eos>"]
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id and encoded["labels"][-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------------------------------------------------------------
# Packing


def tiny_llama(vocab_size: int = 40, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def test_pack_examples_keeps_every_token_in_rows_of_at_most_block_size() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 12, (40,), generator=generator).tolist()
    examples = Dataset.from_dict(
        {"input_ids": [list(range(n)) for n in lengths], "labels": [[7] * n for n in lengths]}
    )
    packed = pack_examples(examples, max_length=16)
    assert all(len(ids) <= 16 for ids in packed["input_ids"])
    assert sum(len(ids) for ids in packed["input_ids"]) == sum(lengths)
    assert len(packed) <= sum(lengths) // 16 + 8  # rows are well filled, not one example each
    # Positions restart for every example, whose first label is masked (it would be predicted across the seam).
    restored = []
    for positions, labels in zip(packed["position_ids"], packed["labels"]):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for start, end in zip(starts, starts[1:]):
            restored.append(end - start)
            assert labels[start] == IGNORE_INDEX and set(labels[start + 1 : end]) <= {7}
    assert sorted(restored) == sorted(lengths)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(attn: str) -> None:
    model = tiny_llama(attn=attn).eval()
    generator = torch.Generator().manual_seed(1)
    examples = [torch.randint(3, 40, (n,), generator=generator).tolist() for n in (5, 9, 3, 7)]
    packed = pack_examples(Dataset.from_dict({"input_ids": examples, "labels": examples}), max_length=16)
    collator = PackedCollator(pad_token_id=0)
    batch = collator([packed[i] for i in range(len(packed))])
    assert batch["input_ids"].shape[0] == len(packed) >= 2  # several rows, so padding is exercised too
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
        for example in examples:
            alone = model(input_ids=torch.tensor([example])).logits[0]
            row, start = _locate(batch, example)
            torch.testing.assert_close(logits[row, start : start + len(example)], alone, atol=1e-5, rtol=0)
    # Why the collator sends use_cache=False: with a cache, transformers skips the packed-sequence masking.
    assert not torch.allclose(leaky, logits, atol=1e-3)
    check_packing_isolation(model, vocab_size=40)  # the recipe's pre-flight check agrees


def _locate(batch: dict, example: list[int]) -> tuple[int, int]:
    for row, (ids, positions) in enumerate(zip(batch["input_ids"].tolist(), batch["position_ids"].tolist())):
        for start in (i for i, p in enumerate(positions) if p == 0):
            if ids[start : start + len(example)] == example:
                return row, start
    raise AssertionError(f"{example} not found in the packed batch")


def test_packed_loss_counts_each_examples_tokens_once() -> None:
    model = tiny_llama().eval()
    examples = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    packed = pack_examples(Dataset.from_dict({"input_ids": examples, "labels": examples}), max_length=16)
    batch = PackedCollator(pad_token_id=0)([packed[i] for i in range(len(packed))])
    with torch.no_grad():
        packed_loss = model(**batch).loss
        nats = sum(model(input_ids=torch.tensor([e]), labels=torch.tensor([e])).loss * (len(e) - 1) for e in examples)
    torch.testing.assert_close(packed_loss, nats / sum(len(e) - 1 for e in examples), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Errors


def test_chat_data_without_an_assistant_turn_names_the_row(tmp_path: Path, bpe_folder: Path) -> None:
    checkpoint = tiny_causal_checkpoint(tmp_path / "base", bpe_folder)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 5
    rows.insert(3, {"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    validation = tmp_path / "validation.jsonl"
    validation.write_text(json.dumps(rows[0]) + "\n")
    args = ["--model_name_or_path", str(checkpoint), "--data_files", f"train={train}", f"validation={validation}",
            "--test_fraction", "0", "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]  # fmt: skip
    with pytest.raises(ChatDataError, match=r"train split, row 3: no assistant turn .*roles: system, user"):
        finetune_causal.main(args)

    good, bad = {"prompt": "hi", "response": "hello"}, {"prompt": "hi", "response": ""}
    train.write_text("".join(json.dumps(r) + "\n" for r in [good, bad, good]))
    validation.write_text(json.dumps(good) + "\n")
    with pytest.raises(ChatDataError, match=r"train split, row 1: no assistant turn \(empty or missing response in"):
        finetune_causal.main([*args, "--overwrite_output_dir", "true"])


def test_unknown_data_columns_say_what_was_expected(tmp_path: Path, bpe_folder: Path) -> None:
    checkpoint = tiny_causal_checkpoint(tmp_path / "base", bpe_folder)
    data = tmp_path / "odd.jsonl"
    data.write_text("".join(json.dumps({"question": "q", "reply": "r"}) + "\n" for _ in range(6)))
    with pytest.raises(DataError, match="could not tell the data format.*messages.*prompt/response.*text"):
        finetune_causal.main(["--model_name_or_path", str(checkpoint), "--data_files", str(data),
                              "--output_dir", str(tmp_path / "out")])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# End to end


def sft_args(checkpoint: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(checkpoint), "--data_files", str(data), "--output_dir", str(output),
        "--block_size", "48", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--warmup_ratio", "0",
        "--eval_steps", "10", "--logging_steps", "1", "--num_samples", "2", "--sample_max_new_tokens", "8",
        "--validation_fraction", "0.1", "--test_fraction", "0.1", "--eval_before_training", "true", *extra,
    ]  # fmt: skip


def train_losses(output: Path) -> list[float]:
    return [r["loss"] for r in json.loads((output / "log_history.json").read_text()) if "loss" in r]


def test_sft_learns_stops_with_end_of_text_and_saves_its_template(tmp_path: Path, bpe_folder: Path) -> None:
    checkpoint = tiny_causal_checkpoint(tmp_path / "base", bpe_folder)
    output = tmp_path / "sft"
    args = sft_args(checkpoint, color_chats(tmp_path), output, "--max_steps", "30", "--learning_rate", "1e-2")
    results = finetune_causal.main([*args, "--packing", "true"])
    assert results["data_format"] == "messages" and results["added_tokens"] == list(ROLE_TOKENS.values())
    losses = train_losses(output)
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses
    assert results["validation_loss"] < results["validation_loss_before_training"] - 1.0
    assert results["train_packing_fill"] > 0.7  # short conversations share rows
    # The fine-tuned model answers and then stops by emitting end-of-text (greedy decoding). (Which colour it names
    # after 30 steps depends on the seed; that it stops does not.)
    for sample in results["samples"]:
        assert sample["stopped"] and sample["completion"].strip(), sample

    # The installed template and role tokens round-trip through the saved folder; the model loads with Auto classes.
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoModelForCausalLM.from_pretrained(output)
    assert tokenizer.chat_template is not None and (output / "chat_template.jinja").is_file()
    assert all(tokenizer.convert_tokens_to_ids(t) != tokenizer.unk_token_id for t in ROLE_TOKENS.values())
    base_vocabulary = len(AutoTokenizer.from_pretrained(bpe_folder))
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == base_vocabulary + 3
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What color is the snow?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    output_ids = model.generate(**prompt, max_new_tokens=8, do_sample=False)[0]
    new_tokens = output_ids[prompt["input_ids"].shape[1] :].tolist()
    assert len(new_tokens) < 8 and new_tokens[-1] == tokenizer.eos_token_id


def test_lora_sft_saves_an_adapter_that_reloads_with_peft(tmp_path: Path, bpe_folder: Path) -> None:
    checkpoint = tiny_causal_checkpoint(tmp_path / "base", bpe_folder)
    output = tmp_path / "lora"
    results = finetune_causal.main(sft_args(checkpoint, color_chats(tmp_path), output, "--max_steps", "12",
                                            "--use_lora", "true", "--lora_r", "4", "--merge_lora", "true",
                                            "--learning_rate", "1e-2"))  # fmt: skip
    assert (output / "adapter_config.json").is_file() and (output / "adapter_model.safetensors").is_file()
    assert not (output / "model.safetensors").exists()
    assert results["trainable_parameters"] < 0.2 * results["num_parameters"]
    assert results["validation_loss"] < results["validation_loss_before_training"]
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    added = AutoTokenizer.from_pretrained(output).convert_tokens_to_ids(list(ROLE_TOKENS.values()))
    assert adapter_config["trainable_token_indices"] == added  # the new role tokens' rows live in the adapter

    # PEFT alone rebuilds the model (resizing the base for the added tokens) and reproduces the merged export.
    adapter_model = AutoPeftModelForCausalLM.from_pretrained(output).eval()
    merged = AutoModelForCausalLM.from_pretrained(output / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What color is the sky?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(adapter_model(**inputs).logits, merged(**inputs).logits, atol=1e-5, rtol=0)


def test_plain_text_continues_pretraining(tmp_path: Path, text_corpus: Path, bpe_folder: Path) -> None:
    checkpoint = tiny_causal_checkpoint(tmp_path / "base", bpe_folder)
    output = tmp_path / "cpt"
    results = finetune_causal.main(sft_args(checkpoint, text_corpus, output, "--max_steps", "8", "--block_size", "32"))
    assert results["data_format"] == "text" and "added_tokens" not in results
    assert results["validation_loss"] < results["validation_loss_before_training"]
    assert "validation_unigram_perplexity" in results and (output / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(output).chat_template is None  # plain text needs no template
