"""Typed recipe configuration: dataclasses parsed by `HfArgumentParser`, a YAML recipe as defaults, the CLI on top.

Each field's help text lives in its `metadata["help"]` and nowhere else. A YAML recipe is turned into command-line
arguments placed before the user's own, so YAML values get the same type conversion and validation as flags and the
command line always wins. Unknown keys (in the YAML or on the command line) are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


class ConfigError(ValueError):
    """A recipe setting is unknown or invalid; the message names the key (and the file when there is one)."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class DataConfig:
    """Where the raw text comes from and how it becomes training examples."""

    dataset_name: str | None = _help(
        "Hub dataset id for `datasets.load_dataset` (e.g. roneneldan/TinyStories). Leave empty for local files or "
        "the embedded default corpus.",
        default=None,
    )
    dataset_config: str | None = _help("Hub dataset configuration name.", default=None)
    data_files: list[str] | None = _help(
        "Local data: files, folders or globs (.txt, .json, .jsonl, .csv, .tsv, .parquet). Prefix an entry with "
        "`train=`, `validation=` or `test=` to give it a split; unprefixed entries form the train split.",
        default=None,
    )
    text_column: str = _help("Column holding the text.", default="text")
    sample_by: str = _help(
        "How .txt files split into documents: paragraph (blank-line separated), line, or document (whole file).",
        default="paragraph",
    )
    validation_split: str = _help("Name of the validation split in the source, when it has one.", default="validation")
    test_split: str = _help("Name of the test split in the source, when it has one.", default="test")
    validation_fraction: float = _help(
        "Share of training documents held out for validation when the source has no validation split.", default=0.05
    )
    test_fraction: float = _help(
        "Share of training documents held out for testing when the source has no test split.", default=0.05
    )
    streaming: bool = _help(
        "Stream the source instead of loading it into the cache (for corpora larger than memory or disk).",
        default=False,
    )
    streaming_eval_documents: int = _help(
        "With --streaming and no validation/test split: documents taken from the stream's start for each.",
        default=500,
    )
    max_train_documents: int | None = _help("Use at most this many training documents (quick runs).", default=None)
    block_size: int = _help("Tokens per training sequence (packed block or maximum length).", default=256)
    on_long_sequence: str = _help(
        "What to do with an example longer than block_size (unpacked tasks): truncate (cut it and warn once with "
        "the count) or error (stop, naming the split, row and length).",
        default="truncate",
    )
    preprocessing_num_workers: int | None = _help(
        "Processes for `datasets.map` tokenization (default: one per CPU core, at most 8).", default=None
    )

    def __post_init__(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"{name}={value} must be in [0, 0.5)")
        if self.block_size < 2:
            raise ConfigError(f"block_size={self.block_size} must be at least 2")
        if self.on_long_sequence not in ("truncate", "error"):
            raise ConfigError(f"on_long_sequence={self.on_long_sequence!r} must be truncate or error")
        if self.sample_by not in ("paragraph", "line", "document"):
            raise ConfigError(f"sample_by={self.sample_by!r} must be paragraph, line or document")
        if self.data_files and self.dataset_name:
            raise ConfigError("give either data_files or dataset_name, not both")


@dataclass
class TokenizerConfig:
    """Train a byte-level BPE tokenizer on the training text, or reuse an existing one."""

    tokenizer_name_or_path: str | None = _help(
        "Reuse this tokenizer (local folder or Hub id) instead of training one.", default=None
    )
    vocab_size: int = _help("Vocabulary size of a trained tokenizer, special tokens included.", default=4096)
    min_frequency: int = _help("A merge must occur at least this often to enter the vocabulary.", default=2)
    tokenizer_train_max_mb: float = _help("Train the tokenizer on at most this many MB of text.", default=200.0)

    def __post_init__(self) -> None:
        if self.vocab_size < 300:
            raise ConfigError(f"vocab_size={self.vocab_size} must be at least 300 (256 bytes + special tokens)")
        if self.min_frequency < 1:
            raise ConfigError(f"min_frequency={self.min_frequency} must be at least 1")


@dataclass
class ModelConfig:
    """Which model to build (from scratch) or load (from a checkpoint)."""

    model_name_or_path: str | None = _help(
        "Start from this checkpoint (local folder or Hub id). Empty: build a new model from scratch.", default=None
    )
    model_preset: str = _help(
        "Size preset for a model built from scratch: tiny (~1M parameters incl. embeddings, tests), small (~6M, "
        "the CPU default), medium (~30M), base (~125M, GPUs).",
        default="small",
    )
    model_config: str | None = _help(
        "Build from scratch from this Hugging Face config instead of a preset: a config.json path, a folder or a "
        "Hub id.",
        default=None,
    )
    attn_implementation: str = _help("Attention kernel: sdpa, eager or flash_attention_2.", default="sdpa")
    trust_remote_code: bool = _help(
        "Allow code from the checkpoint's repository to run. Off by default: only enable for repositories you trust.",
        default=False,
    )


@dataclass
class TrainConfig:
    """The shared training loop: optimisation, precision, evaluation, checkpoints, logging, publishing."""

    output_dir: str = _help("Where the model, results, checkpoints and logs are written.", default="outputs/run")
    overwrite_output_dir: bool = _help(
        "Start afresh in an output folder that already holds a finished run or checkpoints.", default=False
    )
    seed: int = _help("Seed for model initialisation, data order and splits.", default=42)
    per_device_train_batch_size: int = _help("Sequences per device per micro-batch.", default=16)
    per_device_eval_batch_size: int | None = _help(
        "Sequences per device per evaluation batch (default: the training batch size).", default=None
    )
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", default=1)
    learning_rate: float = _help("Peak learning rate.", default=1e-3)
    weight_decay: float = _help("AdamW weight decay (not applied to biases, norms and embeddings).", default=0.1)
    adam_beta1: float = _help("AdamW beta1.", default=0.9)
    adam_beta2: float = _help("AdamW beta2.", default=0.95)
    adam_epsilon: float = _help("AdamW epsilon.", default=1e-8)
    max_grad_norm: float = _help("Clip the global gradient norm to this (0 disables clipping).", default=1.0)
    lr_scheduler_type: str = _help(
        "Learning-rate schedule for `transformers.get_scheduler` (cosine, linear, constant_with_warmup, ...).",
        default="cosine",
    )
    warmup_ratio: float = _help("Warmup as a share of all optimizer steps.", default=0.05)
    warmup_steps: int = _help("Warmup steps; overrides warmup_ratio when > 0.", default=0)
    num_train_epochs: float = _help("Passes over the training data (ignored when max_steps > 0).", default=1.0)
    max_steps: int = _help("Optimizer steps to run; > 0 overrides num_train_epochs.", default=-1)
    mixed_precision: str = _help(
        "auto, no, bf16 or fp16. auto: the `accelerate launch` setting if it asks for one, else bf16 on GPUs that "
        "support it and on CPUs with AMX or AVX512-BF16, fp32 otherwise.",
        default="auto",
    )
    eval_steps: int = _help("Evaluate on the validation split every N optimizer steps (and at the end).", default=200)
    logging_steps: int = _help("Log loss, learning rate, gradient norm and throughput every N steps.", default=20)
    save_steps: int | None = _help(
        "Write a resumable checkpoint every N optimizer steps (default: eval_steps; 0 disables).", default=None
    )
    save_total_limit: int = _help(
        "Checkpoints kept on disk; older ones are deleted, never the best or the newest.", default=2
    )
    load_best_model_at_end: bool = _help(
        "Export the checkpoint with the best validation metric instead of the last weights.", default=True
    )
    metric_for_best_model: str = _help("Validation metric that selects the best checkpoint.", default="loss")
    greater_is_better: bool | None = _help(
        "Whether a larger metric_for_best_model is better (default: False for loss-like metrics, else True).",
        default=None,
    )
    early_stopping_patience: int | None = _help(
        "Stop after this many evaluations without improvement of metric_for_best_model.", default=None
    )
    max_consecutive_nonfinite_steps: int = _help(
        "Stop the run when this many optimizer steps in a row had a NaN/inf loss or gradient (each such update is "
        "skipped and counted).",
        default=10,
    )
    resume_from_checkpoint: str | None = _help(
        "Resume from a checkpoint folder, or `latest` for the newest complete one in output_dir.", default=None
    )
    report_to: str = _help(
        "Trackers for Accelerate's `log_with`: none, all, or a comma list (tensorboard, trackio, wandb).",
        default="none",
    )
    torch_compile: bool = _help("Compile the model with torch.compile (pays off on long runs).", default=False)
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass instead of keeping them: less memory (with LoRA, about half "
        "of full fine-tuning's peak in benchmarks/ B7) for about a third more compute.",
        default=False,
    )
    cpu_threads: int = _help(
        "Threads per process when training on CPU. 0: this machine's usable cores divided among its processes, "
        "whatever OMP_NUM_THREADS says (`accelerate launch` without a config file pins it to 1, which would leave "
        "cores idle); set a number to share the machine with other jobs.",
        default=0,
    )
    dataloader_num_workers: int = _help("Data-loader worker processes.", default=0)
    num_samples: int = _help("Sample generations written at the end of a causal-LM run.", default=3)
    sample_max_new_tokens: int = _help("Length of each sample generation.", default=60)
    push_to_hub: bool = _help(
        "Upload the final model folder to the Hub (token from HF_TOKEN or `hf auth login`).", default=False
    )
    hub_model_id: str | None = _help(
        "Hub repository id for --push_to_hub (default: the output folder's name).", default=None
    )
    hub_private: bool = _help("Create the Hub repository as private.", default=False)

    def __post_init__(self) -> None:
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.save_steps is None:
            self.save_steps = self.eval_steps
        for name in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "eval_steps", "logging_steps",
            "max_consecutive_nonfinite_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.cpu_threads < 0:
            raise ConfigError(f"cpu_threads={self.cpu_threads} must be 0 (automatic) or a positive number of threads")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision={self.mixed_precision!r} must be one of auto, no, bf16, fp16")
        if self.load_best_model_at_end and self.save_steps and self.save_steps % self.eval_steps:
            raise ConfigError(
                f"save_steps={self.save_steps} must be a multiple of eval_steps={self.eval_steps} so every "
                "checkpoint has a validation score (or pass --load_best_model_at_end false)"
            )
        if self.greater_is_better is None:
            self.greater_is_better = not any(
                key in self.metric_for_best_model for key in ("loss", "perplexity", "bits_per_byte", "mse", "mae")
            )
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set max_steps > 0 or num_train_epochs > 0")


def yaml_to_argv(values: dict[str, Any], known: set[str], source: str) -> list[str]:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; see --help for the valid ones")
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            raise ConfigError(f"{source}: key {key} must be a scalar or a list, not a mapping")
        else:
            argv.append(str(value).lower() if isinstance(value, bool) else str(value))
    return argv


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe YAML file into a flat mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            values = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value at the top level")
    return values


def parse_config(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None, default_config: str | os.PathLike | None = None
) -> tuple[Any, ...]:
    """Parse `--config recipe.yaml` plus command-line flags into one instance of each dataclass type.

    `default_config` is the recipe's own YAML, used when the command line names none.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    has_config = "--config" in argv or any(arg.startswith("--config=") for arg in argv)
    if default_config is not None and not has_config:
        argv = ["--config", str(default_config), *argv]
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", type=str, default=None, help="A YAML recipe; command-line flags override it.")
    known = {action.dest for action in parser._actions} - {"help", "config"}
    yaml_argv: list[str] = []
    if "--config" in argv or any(arg.startswith("--config=") for arg in argv):
        config_args, argv = _split_config_flag(argv)
        for config_path in config_args:
            yaml_argv += yaml_to_argv(load_yaml(config_path), known, str(config_path))
    flag_names = {arg.split("=", 1)[0][2:] for arg in argv if arg.startswith("--")}
    unknown = sorted(name for name in flag_names if name not in known and name != "help")
    if unknown:
        raise ConfigError(f"unknown argument(s): {', '.join('--' + n for n in unknown)}; see --help")
    parsed = parser.parse_args_into_dataclasses(args=yaml_argv + argv, return_remaining_strings=True)
    instances, remaining = parsed[: len(dataclass_types)], parsed[-1]  # (the namespace between holds --config)
    if remaining:
        raise ConfigError(f"unexpected argument(s): {' '.join(remaining)}")
    return tuple(instances)


def _split_config_flag(argv: list[str]) -> tuple[list[str], list[str]]:
    configs, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a YAML file path")
            configs.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            configs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return configs, rest


def config_to_dict(*instances: Any) -> dict[str, Any]:
    """One flat mapping of every field, in declaration order: the resolved recipe saved with each run."""
    resolved: dict[str, Any] = {}
    for instance in instances:
        resolved.update(dataclasses.asdict(instance))
    return resolved


def save_resolved_config(path: str | os.PathLike, *instances: Any) -> None:
    """Write the resolved recipe as YAML; it re-runs the same recipe with `--config`."""
    from .hub import scrub_secrets

    resolved = {k: v for k, v in config_to_dict(*instances).items() if k != "resume_from_checkpoint"}
    Path(path).write_text(yaml.safe_dump(scrub_secrets(resolved), sort_keys=False), encoding="utf-8")
