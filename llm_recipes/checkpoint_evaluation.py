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

from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import AutoConfig

from .config import DataConfig, load_yaml, yaml_to_argv
from .data.sources import load_raw_datasets
from .data.text import collate_blocks, sliding_windows, tokenize_documents
from .data.tokenizer import load_tokenizer, token_byte_lengths
from .evaluation import CausalLMEvaluator
from .lora import load_model_or_adapter
from .outputs import write_json
from .tasks.classification import LabelConfig
from .tasks.mlm import MaskingConfig
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


# Flags: the command's own, the data settings, and the task settings a classification or masked-LM run's recipe.yaml
# carries (label column, masking, ...), whose classes their task modules own.
CONFIG_TYPES = (EvaluateArguments, DataConfig, LabelConfig, MaskingConfig)


@dataclass
class EvaluationSettings:
    """The parsed command line (plus run config), one instance per CONFIG_TYPES entry, handed to every evaluator."""

    args: EvaluateArguments
    data: DataConfig
    labels: LabelConfig
    masking: MaskingConfig


def run_config_args(path: str | None, argv: list[str]) -> list[str]:
    """Turn a run's recipe.yaml into flags for the data and task settings and the seed; explicit flags come after
    and win. Keys this command has no use for (learning rate, LoRA rank, ...) are skipped, so a run of any recipe
    serves."""
    if not path:
        return argv
    recipe = Path(path)
    recipe = recipe / "recipe.yaml" if recipe.is_dir() else recipe
    values = load_yaml(recipe)
    wanted = {f.name for config_type in CONFIG_TYPES[1:] for f in fields(config_type)} | {"seed"}
    return yaml_to_argv({k: v for k, v in values.items() if k in wanted}, wanted, str(recipe)) + argv


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


def evaluate_causal(
    checkpoint: str, dataset: Dataset, settings: EvaluationSettings, accelerator: Accelerator
) -> dict[str, Any]:
    """Loss, perplexity and bits per byte over sliding windows (by default the packed blocks the recipes score)."""
    from .generation import load_causal_lm

    args, data_cfg = settings.args, settings.data
    model, tokenizer = load_causal_lm(checkpoint, args.trust_remote_code)
    with accelerator.main_process_first():
        tokenized = tokenize_documents(dataset, tokenizer, data_cfg.text_column)
    windows = sliding_windows(tokenized, data_cfg.block_size, args.stride or data_cfg.block_size)
    evaluator = CausalLMEvaluator(token_byte_lengths(tokenizer))
    loader = DataLoader(windows, args.batch_size, collate_fn=collate_blocks)
    return _run(checkpoint, model, loader, evaluator, accelerator)


def evaluate_masked(
    checkpoint: str, dataset: Dataset, settings: EvaluationSettings, accelerator: Accelerator
) -> dict[str, Any]:
    """Masked-LM loss, perplexity and masked-token accuracy on the MLM recipe's blocks and seeded evaluation masks."""
    from transformers import AutoModelForMaskedLM

    from .tasks.mlm import MaskedLMEvaluator, MaskingCollator, evaluation_blocks, usable_block_size

    args, masking = settings.args, settings.masking
    model = load_model_or_adapter(checkpoint, AutoModelForMaskedLM, args.trust_remote_code)
    tokenizer = load_tokenizer(checkpoint, trust_remote_code=args.trust_remote_code)
    block_size = usable_block_size(tokenizer, model, settings.data.block_size)  # as the run capped it
    with accelerator.main_process_first():
        blocks = evaluation_blocks(dataset, args.split, tokenizer, settings.data, masking, block_size)
    loader = DataLoader(blocks, args.batch_size, collate_fn=MaskingCollator(tokenizer, masking))
    return _run(checkpoint, model, loader, MaskedLMEvaluator(), accelerator)


def evaluate_classification(
    checkpoint: str, dataset: Dataset, settings: EvaluationSettings, accelerator: Accelerator
) -> dict[str, Any]:
    """The classification recipe's metrics, with the labels mapped through the checkpoint's own label2id."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from .tasks.classification import ClassificationEvaluator, LabelSpace, evaluation_split, max_sequence_length

    cfg = settings.labels
    model = load_model_or_adapter(checkpoint, AutoModelForSequenceClassification, settings.args.trust_remote_code)
    tokenizer = load_tokenizer(checkpoint, trust_remote_code=settings.args.trust_remote_code)
    labels = LabelSpace.from_model_config(model.config, cfg.label_column, cfg.problem_type)
    max_length = max_sequence_length(tokenizer, model.config, settings.data.block_size)
    split = settings.args.split
    with accelerator.main_process_first():
        examples = evaluation_split(dataset, split, tokenizer, labels, settings.data, cfg, max_length)
    loader = DataLoader(examples, settings.args.batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    return _run(checkpoint, model, loader, ClassificationEvaluator(labels, cfg.threshold), accelerator)


def _run(checkpoint: str, model, loader: DataLoader, evaluator, accelerator: Accelerator) -> dict[str, Any]:
    """The training loop's own evaluation pass (so the numbers are the run's), on every process's share."""
    model, loader = accelerator.prepare(model, loader)
    return evaluate(model, loader, evaluator, accelerator, f"Evaluating {Path(checkpoint).name}")


def load_task_data(task: str, settings: EvaluationSettings):
    """The raw splits as the task's recipe loads them (classification: its label column, labels-in-text lines and
    embedded default data)."""
    if task == "classification":
        from .tasks.classification import load_classification_data

        return load_classification_data(settings.data, settings.labels, settings.args.seed)
    return load_raw_datasets(settings.data, seed=settings.args.seed)


# Each task's evaluation; the task modules own the data and metric logic.
TASK_EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "causal": evaluate_causal,
    "masked": evaluate_masked,
    "classification": evaluate_classification,
}


def _cell(value: Any) -> str:
    """A table cell: floats to 4 decimals; lists (a confusion matrix, its labels) compact, cut to fit (the JSON
    output has them whole)."""
    if isinstance(value, float):
        return f"{value:>24.4f}"
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, separators=(",", ":"))
        return f"{text if len(text) <= 24 else text[:23] + '…':>24}"
    return f"{'' if value is None else value:>24}"


def compare_table(results: dict[str, dict[str, Any]]) -> str:
    """Metrics as rows, checkpoints as columns."""
    names = list(results)
    metrics = [m for m in dict.fromkeys(k for r in results.values() for k in r) if m != "task"]
    width = max([len(m) for m in metrics] + [6])
    header = f"{'metric':<{width}}  " + "  ".join(f"{Path(n).name[-24:]:>24}" for n in names)
    rows = [header, "-" * len(header)]
    for metric in metrics:
        rows.append(f"{metric:<{width}}  " + "  ".join(_cell(results[name].get(metric)) for name in names))
    return "\n".join(rows)


def evaluate_checkpoints(
    args: EvaluateArguments, data_cfg: DataConfig, label_cfg: LabelConfig, masking_cfg: MaskingConfig
) -> dict[str, dict[str, Any]]:
    """Each checkpoint on the same split of its task's data; prints one table and writes the JSON once."""
    settings = EvaluationSettings(args, data_cfg, label_cfg, masking_cfg)
    accelerator = Accelerator()
    checkpoints = [args.model, *(args.compare or [])]
    tasks = {checkpoint: detect_task(checkpoint, args.trust_remote_code) for checkpoint in checkpoints}
    raw_by_task: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    for checkpoint, task in tasks.items():
        if task not in TASK_EVALUATORS:
            raise ValueError(f"{checkpoint}: evaluating {task} checkpoints is not supported by this command")
        if task not in raw_by_task:  # checkpoints of one task share the data
            with accelerator.main_process_first():
                raw_by_task[task] = load_task_data(task, settings)
        raw = raw_by_task[task]
        if args.split not in raw:
            raise ValueError(f"split {args.split!r} not found; available: {', '.join(raw)}")
        metrics = TASK_EVALUATORS[task](checkpoint, raw[args.split], settings, accelerator)
        results[checkpoint] = {"task": task, "split": args.split, **metrics}
    if accelerator.is_main_process:
        print(compare_table(results))
        if args.output_file:
            write_json(args.output_file, results)
    return results
