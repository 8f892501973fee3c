"""Evaluate any saved checkpoint (full model or LoRA adapter) on any dataset split, and compare checkpoints.

The task is read from the checkpoint's config: causal LMs get loss, perplexity and bits per byte (packed blocks, or a
sliding window with `--stride`); masked LMs and classifiers get their fine-tuning recipe's metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoConfig

from .config import DataConfig
from .data.sources import load_raw_datasets
from .data.text import collate_blocks, sliding_windows, tokenize_documents
from .data.tokenizer import token_byte_lengths
from .evaluation import CausalLMEvaluator
from .outputs import write_json
from .training import evaluate


@dataclass
class EvaluateArguments:
    model: str = field(
        metadata={"help": "Checkpoint to evaluate: an output folder, a LoRA adapter folder or a Hub id."}
    )
    compare: list[str] | None = field(
        default=None, metadata={"help": "More checkpoints evaluated on the same data and shown side by side."}
    )
    split: str = field(default="validation", metadata={"help": "Split to evaluate: train, validation or test."})
    run_config: str | None = field(
        default=None,
        metadata={
            "help": "A run's recipe.yaml (or its output folder): take the data settings and seed from it, so the "
            "split is exactly the one that run evaluated. Flags given here still win."
        },
    )
    stride: int | None = field(
        default=None,
        metadata={
            "help": "Causal LMs: sliding-window stride in tokens (default: block_size, i.e. the packed blocks the "
            "recipes evaluate). Smaller strides give each scored token more context."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per evaluation batch and device."})
    seed: int = field(default=42, metadata={"help": "Seed of the train/validation/test split (as in the run)."})
    output_file: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the checkpoint's own code to run."})


CONFIG_TYPES = (EvaluateArguments, DataConfig)


def run_config_args(path: str | None, argv: list[str]) -> list[str]:
    """Turn a run's recipe.yaml into flags for the data settings and seed; explicit flags come after and win."""
    if not path:
        return argv
    recipe = Path(path)
    recipe = recipe / "recipe.yaml" if recipe.is_dir() else recipe
    values = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    wanted = {f.name for f in fields(DataConfig)} | {"seed"}
    flags: list[str] = []
    for key, value in values.items():
        if key in wanted and value is not None:
            flags += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value).lower()
                                                                                   if isinstance(value, bool)
                                                                                   else str(value)])]
    return flags + argv


def detect_task(name_or_path: str, trust_remote_code: bool = False) -> str:
    """causal, masked or classification, from the checkpoint's (or the adapter's base model's) architecture."""
    adapter = Path(name_or_path) / "adapter_config.json"
    if adapter.is_file():
        task_type = json.loads(adapter.read_text()).get("task_type", "")
        return {"CAUSAL_LM": "causal", "SEQ_CLS": "classification"}.get(task_type, "masked")
    architectures = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).architectures or []
    names = " ".join(architectures)
    if "ForCausalLM" in names:
        return "causal"
    if "ForMaskedLM" in names or "ForPreTraining" in names:
        return "masked"
    if "ForSequenceClassification" in names:
        return "classification"
    raise ValueError(f"{name_or_path}: cannot tell the task from architectures {architectures or 'none'}")


def evaluate_causal(checkpoint: str, raw, args: EvaluateArguments, data_cfg: DataConfig, accelerator: Accelerator):
    from .generation import load_causal_lm

    model, tokenizer = load_causal_lm(checkpoint, args.trust_remote_code)
    with accelerator.main_process_first():
        tokenized = tokenize_documents(raw[args.split], tokenizer, data_cfg.text_column)
    windows = sliding_windows(tokenized, data_cfg.block_size, args.stride or data_cfg.block_size)
    loader = accelerator.prepare(DataLoader(windows, args.batch_size, collate_fn=collate_blocks))
    model = accelerator.prepare(model)
    evaluator = CausalLMEvaluator(token_byte_lengths(tokenizer))
    return evaluate(model, loader, evaluator, accelerator, f"Evaluating {Path(checkpoint).name}")


# Other tasks register their evaluation here (their task modules own the data and metric logic).
TASK_EVALUATORS: dict[str, Callable[..., dict[str, float]]] = {"causal": evaluate_causal}


def compare_table(results: dict[str, dict[str, float]]) -> str:
    """Metrics as rows, checkpoints as columns."""
    names = list(results)
    metrics = [m for m in dict.fromkeys(k for r in results.values() for k in r) if m != "task"]
    width = max([len(m) for m in metrics] + [6])
    header = f"{'metric':<{width}}  " + "  ".join(f"{Path(n).name[-24:]:>24}" for n in names)
    rows = [header, "-" * len(header)]
    for metric in metrics:
        cells = []
        for name in names:
            value = results[name].get(metric)
            cells.append(f"{value:>24.4f}" if isinstance(value, float) else f"{'' if value is None else value:>24}")
        rows.append(f"{metric:<{width}}  " + "  ".join(cells))
    return "\n".join(rows)


def evaluate_checkpoints(args: EvaluateArguments, data_cfg: DataConfig) -> dict[str, dict[str, Any]]:
    accelerator = Accelerator()
    checkpoints = [args.model, *(args.compare or [])]
    with accelerator.main_process_first():
        raw = load_raw_datasets(data_cfg, seed=args.seed)
    if args.split not in raw:
        raise ValueError(f"split {args.split!r} not found; available: {', '.join(raw)}")
    results: dict[str, dict[str, Any]] = {}
    for checkpoint in checkpoints:
        task = detect_task(checkpoint, args.trust_remote_code)
        if task not in TASK_EVALUATORS:
            raise ValueError(f"{checkpoint}: evaluating {task} checkpoints is not supported by this command yet")
        metrics = TASK_EVALUATORS[task](checkpoint, raw, args, data_cfg, accelerator)
        results[checkpoint] = {"task": task, "split": args.split, **metrics}
    if accelerator.is_main_process:
        print(compare_table(results))
        if args.output_file:
            write_json(args.output_file, results)
    return results
