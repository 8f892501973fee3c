"""Causal fine-tuning: continued pretraining on plain text, or supervised fine-tuning (SFT) on instruction/chat data.

Plain text goes through `tasks.causal` unchanged (packed blocks). Chat data is rendered with the checkpoint's chat
template (or the built-in one, installed with its role tokens), labelled on assistant tokens only, and either padded
per batch or packed several conversations to a row without attention crossing between them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from peft import PeftModel
from peft.utils import set_additional_trainable_modules
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..config import ConfigError, DataConfig, ModelConfig, TrainConfig
from ..data.chat import (
    CHAT_FORMATS,
    IGNORE_INDEX,
    PackedCollator,
    conversation_from_row,
    generation_prompt,
    install_default_chat_template,
    pack_examples,
    padding_collator,
    tokenize_chat_dataset,
)
from ..data.sources import DataError, load_raw_datasets
from ..data.text import default_num_proc
from ..data.tokenizer import load_tokenizer, token_byte_lengths
from ..evaluation import CausalLMEvaluator
from ..lora import LoraConfigArgs, apply_lora
from ..modeling import flops_per_token
from ..training import Task, evaluate

logger = logging.getLogger(__name__)
DATA_FORMATS = ("auto", "text", *CHAT_FORMATS)


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class SFTConfig:
    """What the fine-tuning data is (plain text or conversations) and how conversations become training rows."""

    data_format: str = _help(
        "auto, text, prompt_response or messages. auto: messages when --messages_column exists, prompt_response "
        "when --prompt_column and --response_column exist, else plain text (continued pretraining, packed).",
        default="auto",
    )
    prompt_column: str = _help("Column holding the instruction (prompt_response data).", default="prompt")
    response_column: str = _help("Column holding the answer (prompt_response data).", default="response")
    messages_column: str = _help(
        "Column holding a conversation: a list of {role, content} turns in the Hugging Face chat format (a JSON "
        "string in CSV files).",
        default="messages",
    )
    system_prompt: str | None = _help(
        "A system message put before every conversation that does not start with one.", default=None
    )
    chat_template: str | None = _help(
        "A Jinja chat template file to use instead of the checkpoint's own, or `default` for the built-in template "
        "(role tokens <|system|> <|user|> <|assistant|>, turns ended by end-of-text). The built-in one is installed "
        "anyway when the checkpoint has none; either way it is saved with the model.",
        default=None,
    )
    packing: bool = _help(
        "Pack several conversations into each row of up to block_size tokens, position ids restarting per "
        "conversation so none attends to another (fewer padding slots); otherwise pad each batch to its longest.",
        default=False,
    )
    eval_before_training: bool = _help(
        "Evaluate the starting checkpoint on validation first (reported as validation_loss_before_training).",
        default=False,
    )

    def __post_init__(self) -> None:
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"data_format={self.data_format!r} must be one of {', '.join(DATA_FORMATS)}")


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint, tokenizer and template


def load_causal_checkpoint(model_cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The starting model (fp32 weights; the loop's autocast picks the compute precision) and its tokenizer."""
    source = model_cfg.model_name_or_path
    if not source:
        raise ConfigError("--model_name_or_path is required: a causal checkpoint folder or Hub id to fine-tune")
    try:
        tokenizer = load_tokenizer(source, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch.float32,
            attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except OSError as error:
        hint = " (run `python recipes/pretrain.py` first to create it)" if source.startswith("outputs/") else ""
        raise FileNotFoundError(
            f"model_name_or_path={source!r}: not a checkpoint folder here{hint}, and not loadable from the Hub "
            f"({error.__class__.__name__}: {str(error).splitlines()[0]})"
        ) from error
    return model, tokenizer


def prepare_chat_template(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, chat_template: str | None
) -> list[int]:
    """Make sure the tokenizer has a chat template; returns ids of tokens added (embeddings already resized)."""
    if chat_template and chat_template != "default":
        path = Path(chat_template)
        if not path.is_file():
            raise FileNotFoundError(f"chat_template={chat_template!r}: no such template file")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
        return []
    if tokenizer.chat_template is not None and chat_template != "default":
        return []
    added = install_default_chat_template(tokenizer)
    if added:
        # New rows start at the mean of the old embeddings (transformers' default), a neutral starting point.
        model.resize_token_embeddings(len(tokenizer))
    logger.info("installed the built-in chat template; added tokens: %s", tokenizer.convert_ids_to_tokens(added))
    return added


def apply_causal_lora(model: PreTrainedModel, lora_args: LoraConfigArgs, new_token_ids: list[int]) -> PeftModel:
    """LoRA adapters on the causal LM; tokens added for the chat template also train (only their embedding rows).

    Those rows must live in the adapter: a reload re-creates the added rows at random, so without them the adapter
    would not reproduce the trained model. PEFT's trainable tokens keep just those rows (tied output head included).
    """
    peft_model = apply_lora(model, lora_args, "CAUSAL_LM")
    if new_token_ids:
        adapter = peft_model.active_adapter
        config = peft_model.peft_config[adapter]
        config.trainable_token_indices = list(new_token_ids)
        set_additional_trainable_modules(
            model=peft_model.base_model.model,
            peft_config=config,
            model_config=model.config.to_dict(),
            adapter_name=adapter,
        )
    return peft_model


def ensure_stops_at_end_of_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, block_size: int) -> None:
    """The saved generation config stops at end-of-text (kept alongside the checkpoint's own stop tokens)."""
    config = model.generation_config
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    stops = [token for token in stops if token is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    trained_length = getattr(model.config, "max_position_embeddings", None)
    if trained_length and block_size > trained_length:
        logger.warning(
            "block_size=%d exceeds the checkpoint's max_position_embeddings=%d: positions beyond it are new to the "
            "model (rotary models adapt while fine-tuning; absolute-position models fail)",
            block_size,
            trained_length,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_finetuning_data(data_cfg: DataConfig, sft_cfg: SFTConfig, seed: int):
    """Load the raw splits and decide the data format; returns (format, raw) with format text or a chat format."""
    columns_by_format = {
        "messages": [sft_cfg.messages_column],
        "prompt_response": [sft_cfg.prompt_column, sft_cfg.response_column],
        "text": [data_cfg.text_column],
    }
    if sft_cfg.data_format != "auto":
        return sft_cfg.data_format, load_raw_datasets(data_cfg, columns_by_format[sft_cfg.data_format], seed)
    # load_raw_datasets checks the required columns in every split: try the formats from most to least specific
    # (the datasets cache makes the retries cheap).
    errors = []
    for data_format in ("messages", "prompt_response", "text"):
        try:
            return data_format, load_raw_datasets(data_cfg, columns_by_format[data_format], seed)
        except DataError as error:
            if "available columns" not in str(error):  # a missing file or bad data, not a missing column
                raise
            errors.append(str(error))
    raise DataError(
        "could not tell the data format: no messages column "
        f"({sft_cfg.messages_column!r}), no prompt/response columns ({sft_cfg.prompt_column!r}, "
        f"{sft_cfg.response_column!r}) and no text column ({data_cfg.text_column!r}). Set --data_format and the "
        f"matching column option. Last error: {errors[-1]}"
    )


def chat_datasets(
    raw, tokenizer: PreTrainedTokenizerBase, data_format: str, sft_cfg: SFTConfig, data_cfg: DataConfig
) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """Tokenize, label and (optionally) pack every split; also returns counts for the report."""
    row_options = {
        "data_format": data_format,
        "messages_column": sft_cfg.messages_column,
        "prompt_column": sft_cfg.prompt_column,
        "response_column": sft_cfg.response_column,
        "system_prompt": sft_cfg.system_prompt,
    }
    prepared, report = {}, {}
    for split, dataset in raw.items():
        num_proc = default_num_proc(len(dataset), data_cfg.preprocessing_num_workers)
        tokenized = tokenize_chat_dataset(dataset, tokenizer, split, data_cfg.block_size, num_proc, **row_options)
        if len(tokenized) == 0:
            raise DataError(
                f"{split} split: no example keeps an assistant token within block_size={data_cfg.block_size}; "
                "raise --block_size"
            )
        report[f"{split}_examples"] = len(tokenized)
        dropped = len(dataset) - len(tokenized)
        if dropped:
            report[f"{split}_examples_dropped_truncated"] = dropped
            logger.warning("%s: %d conversation(s) had no assistant token left after truncation", split, dropped)
        if sft_cfg.packing:
            packed = pack_examples(tokenized, data_cfg.block_size)
            tokens = sum(len(ids) for ids in tokenized["input_ids"])
            report[f"{split}_packed_rows"] = len(packed)
            report[f"{split}_packing_fill"] = tokens / (len(packed) * data_cfg.block_size)
            tokenized = packed
        prepared[split] = tokenized
    if "validation" not in prepared:
        raise DataError("no validation split: give one or set --validation_fraction above 0")
    return prepared, report


def evaluation_conversations(raw_validation, data_format: str, sft_cfg: SFTConfig, count: int) -> list[tuple]:
    """(prompt turns, reference answer) for the first `count` validation conversations: what on_evaluate asks."""
    pairs = []
    for index in range(min(count, len(raw_validation))):
        messages = conversation_from_row(
            raw_validation[index],
            data_format,
            f"validation split, row {index}",
            sft_cfg.messages_column,
            sft_cfg.prompt_column,
            sft_cfg.response_column,
            sft_cfg.system_prompt,
        )
        pairs.append(generation_prompt(messages))
    return pairs


# ---------------------------------------------------------------------------------------------------------------------
# Generation and checks


@torch.no_grad()
def generate_answers(
    model, tokenizer: PreTrainedTokenizerBase, conversations: list[tuple], max_new_tokens: int
) -> list[dict[str, Any]]:
    """Greedy answers to each prompt, tokenized exactly as in training; `stopped` says whether end-of-text came."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for prompt_turns, reference in conversations:
        text = tokenizer.apply_chat_template(prompt_turns, tokenize=False, add_generation_prompt=True)
        input_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        input_ids = torch.tensor([input_ids], device=device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[0, input_ids.shape[1] :].tolist()
        answers.append(
            {
                "prompt": prompt_turns[-1]["content"],
                "completion": tokenizer.decode(new_tokens, skip_special_tokens=True),
                "reference": reference,
                "stopped": bool(new_tokens) and new_tokens[-1] == tokenizer.eos_token_id,
            }
        )
    model.train(was_training)
    return answers


@torch.no_grad()
def check_packing_isolation(model: PreTrainedModel, vocab_size: int, atol: float = 1e-4) -> None:
    """Fail before training when this model's attention lets packed examples see each other.

    Runs two short random sequences packed in one row (positions restarting) and alone; their logits must match.
    FlashAttention kernels (CUDA, half precision only) are not probed: transformers turns restarting position ids into
    their variable-length form, which is the reference implementation of packing.
    """
    if "flash" in model.config._attn_implementation:
        return
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    first, second = (torch.randint(0, vocab_size, (1, n), generator=generator).to(device) for n in (5, 7))
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0).to(device)
    packed_logits = model(input_ids=packed, position_ids=positions, use_cache=False).logits[:, 5:]
    alone_logits = model(input_ids=second, use_cache=False).logits
    model.train(was_training)
    difference = (packed_logits - alone_logits).abs().max().item()
    if difference > atol:
        raise ConfigError(
            f"--packing: this model's attention ({model.config._attn_implementation}) does not keep packed examples "
            f"apart (logits differ by {difference:.2e}); use --attn_implementation sdpa or flash_attention_2, or "
            "train without --packing"
        )


def evaluate_before_training(task: Task, train_cfg: TrainConfig, accelerator: Accelerator) -> dict[str, float]:
    """Validation metrics of the starting model, computed the way the loop computes them."""
    loader = DataLoader(
        task.eval_datasets["validation"], train_cfg.per_device_eval_batch_size, collate_fn=task.collate_fn
    )
    model = task.model.to(accelerator.device)
    with accelerator.autocast():
        return evaluate(
            model, accelerator.prepare_data_loader(loader), task.make_evaluator(), accelerator, "Evaluating start"
        )


# ---------------------------------------------------------------------------------------------------------------------
# The task


def sft_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    datasets: dict[str, Dataset],
    packing: bool,
    block_size: int,
    eval_conversations: list[tuple] | None = None,
    max_new_tokens: int = 60,
    fingerprint: str | None = None,
) -> Task:
    """Conversations for the shared loop: loss on assistant tokens (labels -100 elsewhere), causal-LM metrics."""
    if packing:
        collator = PackedCollator(tokenizer.pad_token_id)
        collate_fn, count_tokens = collator, collator.count_tokens
    else:
        collate_fn, count_tokens = padding_collator(tokenizer), None
    token_bytes = token_byte_lengths(tokenizer)

    def on_evaluate(trained_model, accelerator: Accelerator) -> dict[str, Any] | None:
        if not eval_conversations or not accelerator.is_main_process:
            return None
        with accelerator.autocast():
            answers = generate_answers(
                accelerator.unwrap_model(trained_model), tokenizer, eval_conversations, max_new_tokens
            )
        first = answers[0]
        accelerator.print(f"  prompt: {first['prompt'][:200]!r}\n  answer: {first['completion'][:300]!r}")
        return {"generations": answers}

    return Task(
        model=model,
        train_dataset=datasets["train"],
        eval_datasets={split: data for split, data in datasets.items() if split != "train"},
        collate_fn=collate_fn,
        make_evaluator=lambda: CausalLMEvaluator(token_bytes),
        flops_per_token=flops_per_token(model, block_size),
        count_tokens=count_tokens,
        on_evaluate=on_evaluate,
        data_fingerprint=fingerprint,
    )


def label_token_share(dataset: Dataset) -> float:
    """Share of token slots that carry loss (assistant tokens) in a tokenized or packed split."""
    labelled = total = 0
    for labels in dataset["labels"]:
        labelled += sum(label != IGNORE_INDEX for label in labels)
        total += len(labels)
    return labelled / max(total, 1)
