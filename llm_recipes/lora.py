"""LoRA through PEFT for every fine-tuning recipe: wrap a model, save the adapter, merge it into a plain model.

Output layout of a LoRA run (`save_adapter_or_model`):

    output_dir/            the adapter: adapter_config.json + adapter_model.safetensors (LoRA weights and the
                           modules_to_save, e.g. a classification head), the tokenizer, and config.json of the adapted
                           base model (labels, vocabulary size) so the base is rebuilt with the right head and shapes
    output_dir/merged/     with --merge_lora: a plain model (config.json + model.safetensors + tokenizer) that loads
                           with the `Auto*` classes and no PEFT

Reload an adapter with `load_adapter_model(output_dir)`, or with PEFT alone:
    base = AutoModelForSequenceClassification.from_pretrained(BASE, config=AutoConfig.from_pretrained(output_dir))
    model = PeftModel.from_pretrained(base, output_dir)
`recipes/merge_lora.py` merges a saved adapter later.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from .config import ConfigError
from .outputs import save_pretrained_atomic

MERGED_SUBDIR = "merged"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# Which Auto class rebuilds the base model of an adapter saved with this PEFT task type.
AUTO_CLASS_BY_TASK = {
    TaskType.SEQ_CLS: transformers.AutoModelForSequenceClassification,
    TaskType.CAUSAL_LM: transformers.AutoModelForCausalLM,
    TaskType.TOKEN_CLS: transformers.AutoModelForTokenClassification,
    TaskType.SEQ_2_SEQ_LM: transformers.AutoModelForSeq2SeqLM,
    TaskType.QUESTION_ANS: transformers.AutoModelForQuestionAnswering,
}


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class LoraConfigArgs:
    """Low-rank adapters (LoRA) instead of full fine-tuning: only the adapters and the task head train."""

    use_lora: bool = _help(
        "Train LoRA adapters (PEFT) instead of every weight; the run saves the adapter only.", default=False
    )
    lora_r: int = _help("LoRA rank: the inner dimension of each low-rank update.", default=16)
    lora_alpha: int = _help("LoRA scaling numerator: updates are scaled by lora_alpha / lora_r.", default=32)
    lora_dropout: float = _help(
        "Dropout on the LoRA branch's input. Off by default, as in PEFT: above 0 every adapted layer keeps a dropped "
        "copy of its input for the backward pass (+65% activation memory on the base preset, benchmarks/ B7).",
        default=0.0,
    )
    lora_target_modules: list[str] | None = _help(
        "Module names (or name suffixes, e.g. query value) that get adapters. Default: every linear layer except "
        "the output/classification head (PEFT's all-linear).",
        default=None,
    )
    merge_lora: bool = _help(
        "Also export a plain merged model (adapter folded into the weights) to <output_dir>/merged.", default=False
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ConfigError(f"lora_r={self.lora_r} must be at least 1")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha={self.lora_alpha} must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.merge_lora and not self.use_lora:
            raise ConfigError("merge_lora needs use_lora: there is no adapter to merge")


@dataclass
class MergeLoraArgs:
    """The standalone merge command (`recipes/merge_lora.py`)."""

    adapter_dir: str = _help("Folder of a saved LoRA adapter (a LoRA run's output_dir).", default="")
    output_dir: str | None = _help("Where the merged plain model goes (default: <adapter_dir>/merged).", default=None)
    base_model_name_or_path: str | None = _help(
        "Base model to merge into (default: the one recorded in adapter_config.json).", default=None
    )

    def __post_init__(self) -> None:
        if not self.adapter_dir:
            raise ConfigError("--adapter_dir is required: the folder of a saved LoRA adapter")
        if self.output_dir is None:
            self.output_dir = str(Path(self.adapter_dir) / MERGED_SUBDIR)


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Top-level modules with weights outside the backbone (`base_model_prefix`): a task head such as `classifier`,
    `score` or DistilBERT's `pre_classifier` + `classifier`, found without a list of architecture names."""
    backbone = getattr(model, "base_model_prefix", None)
    return [
        name for name, child in model.named_children() if name != backbone and any(True for _ in child.parameters())
    ]


def _within(module_name: str, ancestor: str) -> bool:
    """Whether `module_name` is `ancestor` or inside it (PEFT matches module names by suffix)."""
    dotted = f".{module_name}."
    return f".{ancestor}." in dotted


def apply_lora(
    model: PreTrainedModel,
    args: LoraConfigArgs,
    task_type: TaskType | str | None,
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap `model` with LoRA adapters; everything but the adapters and `modules_to_save` is frozen.

    For classification task types (SEQ_CLS, TOKEN_CLS) the head is found generically (see `head_module_names`) and
    trained in full unless `modules_to_save` is given. Linear layers inside saved modules get no adapter.
    `task_type=None` gives a plain `PeftModel` (e.g. masked LM, which PEFT has no task type for).
    """
    task_type = TaskType(task_type) if task_type else None
    if modules_to_save is None and task_type in (TaskType.SEQ_CLS, TaskType.TOKEN_CLS):
        modules_to_save = head_module_names(model)
    saved = set(modules_to_save or [])
    # Linear layers within fully-trained modules must not also carry adapters (PEFT would wrap them twice).
    exclude = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(_within(name, saved_name) for saved_name in saved)
    )
    targets = args.lora_target_modules or "all-linear"
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        exclude_modules=exclude or None,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type=task_type,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. a --lora_target_modules name that matches nothing
        raise ConfigError(f"LoRA could not be applied (lora_target_modules={targets}): {error}") from error


def _adapted_base_config(peft_model: PeftModel):
    """The base model's config as trained (labels, vocabulary), naming the class that rebuilds it."""
    base = peft_model.get_base_model()
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]
    return config


def save_adapter_or_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    processing_class: Any,
    output_dir: str | os.PathLike,
    merge: bool = False,
) -> dict[str, Path]:
    """Save what a run produced: the adapter (and with `merge`, a merged plain model in `output_dir/merged`) for a
    PEFT model, else the full model. Every process must call this. Returns the folders written by kind."""
    output_dir = Path(output_dir)
    unwrapped = accelerator.unwrap_model(model)
    if not isinstance(unwrapped, PeftModel):
        save_pretrained_atomic(accelerator, model, processing_class, output_dir)
        return {"model": output_dir}
    state_dict = accelerator.get_state_dict(model)  # gathers shards; PEFT keeps only the adapter entries
    written = {"adapter": output_dir}
    if accelerator.is_main_process:
        staging = output_dir / ".tmp-adapter"
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        _adapted_base_config(unwrapped).save_pretrained(staging)
        if processing_class is not None:
            processing_class.save_pretrained(staging)
        for path in sorted(staging.iterdir()):
            target = output_dir / path.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
        staging.rmdir()
        if merge:
            # A copy, so the caller's adapter model stays usable (evaluation, predictions) after the export.
            merged = copy.deepcopy(unwrapped).merge_and_unload()
            _save_plain(merged, processing_class, output_dir / MERGED_SUBDIR)
    if merge:
        written["merged"] = output_dir / MERGED_SUBDIR
    accelerator.wait_for_everyone()
    return written


def _save_plain(model: PreTrainedModel, processing_class: Any, folder: Path) -> None:
    staging = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    if processing_class is not None:
        processing_class.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)


def _auto_class_for(adapter_dir: Path, peft_task_type: str | None, config) -> Any:
    if peft_task_type and TaskType(peft_task_type) in AUTO_CLASS_BY_TASK:
        return AUTO_CLASS_BY_TASK[TaskType(peft_task_type)]
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    return model_class or AutoModel


def load_adapter_model(adapter_dir: str | os.PathLike, base_model_name_or_path: str | None = None) -> PeftModel:
    """Rebuild the base model (with the adapter folder's config: labels, vocabulary size) and load the adapter.

    `base_model_name_or_path` overrides the base recorded in adapter_config.json (e.g. the base moved)."""
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / ADAPTER_CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_CONFIG_FILE}; not a LoRA adapter folder")
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    base_path = base_model_name_or_path or adapter_config.get("base_model_name_or_path")
    if not base_path:
        raise ValueError(f"{config_file}: base_model_name_or_path is empty; pass the base model's folder or Hub id")
    has_config = (adapter_dir / "config.json").is_file()
    config = AutoConfig.from_pretrained(adapter_dir if has_config else base_path)
    model_class = _auto_class_for(adapter_dir, adapter_config.get("task_type"), config)
    base = model_class.from_pretrained(base_path, config=config, dtype=torch.float32)
    embeddings = base.get_input_embeddings()
    if embeddings is not None and embeddings.weight.shape[0] != config.vocab_size:  # tokens added while fine-tuning
        base.resize_token_embeddings(config.vocab_size)
    return PeftModel.from_pretrained(base, adapter_dir)


def load_model_or_adapter(
    path: str | os.PathLike, auto_class: Any, trust_remote_code: bool = False
) -> PreTrainedModel | PeftModel:
    """What a fine-tuning run saved, in fp32: a LoRA adapter folder rebuilt on its base, or a full model loaded with
    `auto_class` (e.g. AutoModelForMaskedLM), so callers need not know which kind a run produced."""
    if (Path(path) / ADAPTER_CONFIG_FILE).is_file():
        return load_adapter_model(path)
    return auto_class.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)


def merge_adapter(
    adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, base_model_name_or_path: str | None = None
) -> Path:
    """Fold a saved adapter into its base model and save a plain model (+ the adapter's tokenizer) to output_dir."""
    merged = load_adapter_model(adapter_dir, base_model_name_or_path).merge_and_unload()
    tokenizer = None
    if any((Path(adapter_dir) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _save_plain(merged, tokenizer, output_dir)
    return output_dir
