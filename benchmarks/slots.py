"""B3: wasted token slots. Useful (non-padding) tokens divided by the token slots the model processes, counted on
the batches the training data loader really yields (the library's own samplers and collators), one epoch per seed.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .common import Corpus, Scale, encoder_path, sentence_classification_raw
from .harness import SHARED_DATA, Figure

SFT_BLOCK = 512
SFT_BATCH = 8
CLASSIFICATION_MAX_LENGTH = 128  # run_glue.py's max_seq_length default
CLASSIFICATION_BATCH = 32


def slot_efficiency(batches: Iterable[dict[str, torch.Tensor]], count_useful) -> dict[str, float]:
    useful = slots = 0
    for batch in batches:
        useful += int(count_useful(batch))
        slots += batch["input_ids"].numel()
    return {"useful_tokens": useful, "slots": slots, "ratio": useful / max(slots, 1)}


def shuffled(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining


def pretraining_slots(corpus: Corpus, block_size: int, batch_size: int, seed: int) -> dict[str, Any]:
    from llm_recipes.data.text import collate_blocks, prepare_lm_datasets, tokenize_documents

    packed = prepare_lm_datasets(corpus.raw, corpus.tokenizer, "text", block_size)["train"]
    loader = DataLoader(packed, batch_size, sampler=shuffled(len(packed), seed), collate_fn=collate_blocks)
    result = slot_efficiency(loader, lambda batch: batch["input_ids"].numel())  # a block has no padding
    tokenized = tokenize_documents(corpus.raw["train"], corpus.tokenizer, "text")
    corpus_tokens = sum(len(ids) for ids in tokenized["input_ids"])
    result["share_of_corpus_tokens_trained"] = result["useful_tokens"] / corpus_tokens
    return result


# ---------------------------------------------------------------------------------------------------------------------
# SFT, packed or padded


def gsm8k_raw(max_examples: int):
    from datasets import Dataset

    rows = []
    with open(SHARED_DATA / "gsm8k" / "train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.append({"prompt": row["question"], "response": row["answer"]})
            if len(rows) == max_examples:
                break
    return Dataset.from_list(rows)


def sft_slots(corpus: Corpus, max_examples: int, seeds: list[int]) -> dict[str, Any]:
    """GSM8K question/answer pairs through the SFT data path, packed and padded; a stand-in without chat.py."""
    from llm_recipes.data.text import default_num_proc

    raw = gsm8k_raw(max_examples)
    tokenizer = corpus.tokenizer
    try:
        from llm_recipes.data.chat import (
            PackedCollator,
            install_default_chat_template,
            pack_examples,
            padding_collator,
            tokenize_chat_dataset,
        )
    except ImportError:
        return sft_slots_stand_in(raw, tokenizer, seeds)
    tokenizer = tokenizer.__class__.from_pretrained(corpus.tokenizer_dir)  # a copy: the template adds tokens
    install_default_chat_template(tokenizer)
    tokenized = tokenize_chat_dataset(
        raw, tokenizer, "train", SFT_BLOCK, default_num_proc(len(raw)),
        data_format="prompt_response", prompt_column="prompt", response_column="response",
        messages_column="messages", system_prompt=None,
    )
    packed = pack_examples(tokenized, SFT_BLOCK)
    packed_collator, padded_collator = PackedCollator(tokenizer.pad_token_id), padding_collator(tokenizer)
    results: dict[str, list] = {"packed": [], "padded": []}
    for seed in seeds:
        loader = DataLoader(packed, SFT_BATCH, sampler=shuffled(len(packed), seed), collate_fn=packed_collator)
        results["packed"].append(slot_efficiency(loader, packed_collator.count_tokens))
        loader = DataLoader(tokenized, SFT_BATCH, sampler=shuffled(len(tokenized), seed),
                            collate_fn=padded_collator)
        results["padded"].append(slot_efficiency(loader, lambda batch: batch["attention_mask"].sum()))
    results["implementation"] = "llm_recipes.data.chat (tokenize_chat_dataset, pack_examples, PackedCollator)"
    results["examples"] = len(tokenized)
    results["packed_rows"] = len(packed)
    return results


def sft_slots_stand_in(raw, tokenizer, seeds: list[int]) -> dict[str, Any]:
    """Without llm_recipes.data.chat: prompt + answer + end-of-text, best-fit-decreasing packing, batch padding."""
    texts = [f"{p}\n{r}" for p, r in zip(raw["prompt"], raw["response"])]
    lengths = [min(len(ids) + 1, SFT_BLOCK) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    bins: list[int] = []  # tokens per packed row
    free: list[tuple[int, int]] = []
    for length in sorted(lengths, reverse=True):
        slot = bisect.bisect_left(free, (length, -1))
        if slot == len(free):
            bins.append(length)
            room, number = SFT_BLOCK - length, len(bins) - 1
        else:
            room, number = free.pop(slot)
            bins[number] += length
            room -= length
        if room > 0:
            bisect.insort(free, (room, number))

    def padded_batches(row_lengths: list[int], seed: int) -> dict[str, float]:
        order = shuffled(len(row_lengths), seed)
        useful = slots = 0
        for start in range(0, len(order), SFT_BATCH):
            batch = [row_lengths[i] for i in order[start : start + SFT_BATCH]]
            useful += sum(batch)
            slots += max(batch) * len(batch)
        return {"useful_tokens": useful, "slots": slots, "ratio": useful / slots}

    return {
        "packed": [padded_batches(bins, seed) for seed in seeds],
        "padded": [padded_batches(lengths, seed) for seed in seeds],
        "implementation": "stand-in (llm_recipes.data.chat not importable): best-fit-decreasing packing",
        "examples": len(lengths),
        "packed_rows": len(bins),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Classification


def length_grouped_sampler(lengths: list[int], batch_size: int, seed: int):
    """The classification recipe's sampler (llm_recipes.tasks.classification), or transformers' equivalent."""
    try:
        from llm_recipes.tasks.classification import LengthGroupedEpochSampler

        return LengthGroupedEpochSampler(lengths, batch_size, seed), "llm_recipes LengthGroupedEpochSampler"
    except ImportError:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        generator = torch.Generator().manual_seed(seed)
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
        return sampler, "transformers LengthGroupedSampler"


def classification_slots(scale: Scale, workdir: Path, seeds: list[int]) -> dict[str, Any]:
    from transformers import AutoTokenizer, DataCollatorWithPadding, default_data_collator

    raw, source = sentence_classification_raw()
    tokenizer = AutoTokenizer.from_pretrained(encoder_path(scale.b4_tiny_model, workdir))
    train = raw["train"]
    dynamic = train.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=CLASSIFICATION_MAX_LENGTH),
        batched=True, remove_columns=["text"],
    ).rename_column("label", "labels")
    padded = train.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=CLASSIFICATION_MAX_LENGTH,
                                padding="max_length"),
        batched=True, remove_columns=["text"],
    ).rename_column("label", "labels")
    lengths = [len(ids) for ids in dynamic["input_ids"]]
    collator = DataCollatorWithPadding(tokenizer)
    results: dict[str, Any] = {"grouped": [], "run_glue_pad_to_max": [], "dynamic_random_order": []}
    for seed in seeds:
        sampler, sampler_name = length_grouped_sampler(lengths, CLASSIFICATION_BATCH, seed)
        loader = DataLoader(dynamic, CLASSIFICATION_BATCH, sampler=sampler, collate_fn=collator)
        results["grouped"].append(slot_efficiency(loader, lambda batch: batch["attention_mask"].sum()))
        loader = DataLoader(dynamic, CLASSIFICATION_BATCH, sampler=shuffled(len(dynamic), seed), collate_fn=collator)
        results["dynamic_random_order"].append(slot_efficiency(loader, lambda batch: batch["attention_mask"].sum()))
        loader = DataLoader(padded, CLASSIFICATION_BATCH, sampler=shuffled(len(padded), seed),
                            collate_fn=default_data_collator)
        results["run_glue_pad_to_max"].append(slot_efficiency(loader, lambda batch: batch["attention_mask"].sum()))
    results.update(source=source, sampler=sampler_name, examples=len(dynamic),
                   mean_length=sum(lengths) / len(lengths))
    return results


def b3_wasted_slots(corpus: Corpus, scale: Scale, workdir: Path) -> list[Figure]:
    seeds = list(range(scale.repeats))
    pretrain = [pretraining_slots(corpus, scale.b1_block, scale.b1_batch, seed) for seed in seeds]
    figures = [Figure(
        "B3 pretraining", "useful tokens / token slots, packed pretraining blocks",
        [r["ratio"] for r in pretrain], target=0.99, unit="%",
        details={"runs": pretrain, "block_size": scale.b1_block},
        note=(f"packing keeps {100 * pretrain[0]['share_of_corpus_tokens_trained']:.2f}% of the corpus tokens "
              "(only each split's final partial block is dropped)"),
    )]
    if (SHARED_DATA / "gsm8k" / "train.jsonl").is_file():
        sft = sft_slots(corpus, 200 if scale.quick else 2000, seeds)
        setup = {k: v for k, v in sft.items() if k not in ("packed", "padded")}
        setup.update(block_size=SFT_BLOCK, batch_size=SFT_BATCH, data="GSM8K train (question -> answer)")
        figures += [
            Figure("B3 SFT packed", "useful tokens / token slots, SFT with packing",
                   [r["ratio"] for r in sft["packed"]], target=0.95, unit="%",
                   details={"runs": sft["packed"], **setup},
                   note="" if sft["implementation"].startswith("llm_recipes") else sft["implementation"]),
            Figure("B3 SFT padded", "useful tokens / token slots, SFT without packing (pad to batch longest)",
                   [r["ratio"] for r in sft["padded"]], unit="%", details={"runs": sft["padded"], **setup}),
        ]
    classification = classification_slots(scale, workdir, seeds)
    setup = {k: v for k, v in classification.items() if not isinstance(v, list)}
    figures += [
        Figure("B3 classification", "useful tokens / token slots, dynamic padding + length grouping",
               [r["ratio"] for r in classification["grouped"]], target=0.85, unit="%",
               details={"runs": classification["grouped"], **setup}),
        Figure("B3 classification run_glue", "useful tokens / token slots, run_glue.py pad-to-max (128)",
               [r["ratio"] for r in classification["run_glue_pad_to_max"]], unit="%",
               details={"runs": classification["run_glue_pad_to_max"],
                        "dynamic_padding_random_order": classification["dynamic_random_order"]}),
    ]
    return figures
