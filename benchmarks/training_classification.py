"""B4: sentence-classification fine-tuning examples/s, our loop against two `Trainer` baselines.

The same checkpoint (all-MiniLM-L6-v2, or a tiny random BERT in --quick) and the same SST-2 examples on every side:
- ours: the classification task of llm_recipes (unpadded examples, padded per batch, length-grouped sampler);
- run_glue.py's default: every example padded to max_seq_length=128, `default_data_collator`, Trainer defaults;
- Trainer at its best flags on this CPU: dynamic padding (`DataCollatorWithPadding`),
  `train_sampling_strategy="group_by_length"`, fused AdamW, fp32 (bf16 is emulated here), no pinned memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .common import Scale, encoder_path, sentence_classification_raw
from .harness import Figure, alternate, paired_ratios
from .pretraining import TRAINER_FLAGS, run_our_loop, run_trainer

MAX_LENGTH = 128  # run_glue.py's max_seq_length default


def load_classifier(path: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32)


def our_classification_task(model, raw, tokenizer, batch_size: int):
    """The recipe's task (llm_recipes.tasks.classification) when importable, else the same pieces by hand."""
    try:
        from llm_recipes.tasks.classification import (
            ClassificationConfig,
            build_label_space,
            classification_task,
            tokenize_for_classification,
        )
    except ImportError:
        return stand_in_task(model, raw, tokenizer, batch_size), "stand-in (llm_recipes.tasks.classification absent)"
    cls_cfg = ClassificationConfig()
    labels = build_label_space(raw, cls_cfg)
    tokenized = tokenize_for_classification(raw, tokenizer, "text", None, MAX_LENGTH, labels, "label")
    task = classification_task(model, tokenized, tokenizer, labels, cls_cfg, batch_size, seed=0)
    task.eval_datasets = {}  # throughput only: no evaluation passes
    return task, "llm_recipes.tasks.classification.classification_task"


def stand_in_task(model, raw, tokenizer, batch_size: int):
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from llm_recipes.training import Task

    train = raw["train"].map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH), batched=True,
        remove_columns=["text"],
    ).rename_column("label", "labels")
    lengths = [len(ids) for ids in train["input_ids"]]
    return Task(
        model=model, train_dataset=train, eval_datasets={}, collate_fn=DataCollatorWithPadding(tokenizer),
        make_evaluator=lambda: None,
        train_sampler=LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0)),
    )


def b4_classification_throughput(scale: Scale, workdir: Path) -> list[Figure]:
    from transformers import AutoTokenizer, DataCollatorWithPadding, default_data_collator

    raw, source = sentence_classification_raw(max_examples=scale.b4_train_examples)
    path = encoder_path(scale.b4_tiny_model, workdir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch, warmup = scale.b4_batch, scale.b4_warmup_steps
    if len(raw["train"]) % batch:
        raise ValueError(f"b4_train_examples={len(raw['train'])} must be a multiple of the batch size {batch}")
    measured = len(raw["train"]) // batch  # one epoch's worth of steps after the warm-up
    examples = batch * measured

    def tokenized(padding: bool):
        kwargs = {"padding": "max_length"} if padding else {}
        return raw["train"].map(
            lambda rows: tokenizer(rows["text"], truncation=True, max_length=MAX_LENGTH, **kwargs),
            batched=True, remove_columns=["text"],
        ).rename_column("label", "labels")

    padded_to_max, unpadded = tokenized(True), tokenized(False)
    implementation = {}

    def ours(repeat: int) -> dict[str, Any]:
        task, implementation["ours"] = our_classification_task(load_classifier(path), raw, tokenizer, batch)
        run = run_our_loop(task.model, task.train_dataset, task.collate_fn, batch, warmup, measured, workdir,
                           count_tokens=task.count_tokens, train_sampler=task.train_sampler)
        return {**run, "examples_per_second": examples / run["seconds"]}

    def pad_to_max(repeat: int) -> dict[str, Any]:
        run = run_trainer(load_classifier(path), padded_to_max, default_data_collator, batch, warmup, measured,
                          workdir, TRAINER_FLAGS["defaults"])
        return {**run, "examples_per_second": examples / run["seconds"]}

    def trainer_best(repeat: int) -> dict[str, Any]:
        flags = {**TRAINER_FLAGS["best"], "train_sampling_strategy": "group_by_length"}
        run = run_trainer(load_classifier(path), unpadded, DataCollatorWithPadding(tokenizer), batch, warmup,
                          measured, workdir, flags)
        return {**run, "examples_per_second": examples / run["seconds"]}

    runs = alternate({"ours": ours, "run_glue_pad_to_max": pad_to_max, "trainer_best": trainer_best}, scale.repeats)
    rate = {name: [r["examples_per_second"] for r in results] for name, results in runs.items()}
    setup = (f"{Path(path).name if scale.b4_tiny_model else 'all-MiniLM-L6-v2'} on {source}, "
             f"{len(raw['train'])} train examples, batch {batch}, fp32, one epoch ({measured} steps) timed after "
             f"{warmup} warm-up step")
    details = {"setup": setup, "examples_per_second": rate, "runs": runs, "implementation": implementation}
    return [
        Figure("B4 vs run_glue pad-to-max", "classification examples/s: ours / Trainer + run_glue pad-to-max",
               paired_ratios(rate["ours"], rate["run_glue_pad_to_max"]), target=2.0, details=details),
        Figure("B4 vs Trainer best", "classification examples/s: ours / Trainer best (dynamic pad, group_by_length)",
               paired_ratios(rate["ours"], rate["trainer_best"]), target=1.3, details={"see": "B4 vs run_glue"}),
    ]
