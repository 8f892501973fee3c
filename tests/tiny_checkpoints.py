"""Tiny random checkpoints of every task the app serves, saved like recipe outputs; built in well under a second.

A word-level tokenizer keeps decoding simple: every token decodes with a space after it, so a streamer flushes text
token by token and a test sees many chunks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a cat dog bird sat ran flew on in under mat tree house red blue green big small old new and then it was "
    "happy sad good bad day night sun moon rain snow fast slow one two three . , ! ? user assistant :"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} . {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def word_tokenizer(specials: dict[str, str], encoder: bool = False) -> PreTrainedTokenizerFast:
    tokens = list(dict.fromkeys(specials.values())) + WORDS
    backend = Tokenizer(
        models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token=specials["unk_token"])
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if encoder:
        cls, sep = specials["cls_token"], specials["sep_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", special_tokens=[(cls, tokens.index(cls)), (sep, tokens.index(sep))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=128, **specials)


def causal_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    tokenizer = word_tokenizer({"pad_token": "<pad>", "unk_token": "<unk>", "eos_token": "<eos>"})
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def encoder_tokenizer() -> PreTrainedTokenizerFast:
    specials = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    return word_tokenizer(specials, encoder=True)


def build_causal_lm(folder: Path, chat: bool = False, seed: int = 0) -> Path:
    """A 2-layer Llama that never emits end-of-text (no eos id), so it always generates max_new_tokens."""
    torch.manual_seed(seed)
    tokenizer = causal_tokenizer(chat)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_lora_adapter(base_folder: Path, folder: Path, seed: int = 1) -> Path:
    """A LoRA adapter of `base_folder` with non-zero weights (so merging changes the model) and a chat template."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    model.save_pretrained(folder)
    causal_tokenizer(chat=True).save_pretrained(folder)
    return folder


def _bert_config(tokenizer: PreTrainedTokenizerFast, **extra) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, **extra,
    )  # fmt: skip


def build_masked_lm(folder: Path, seed: int = 2) -> Path:
    torch.manual_seed(seed)
    tokenizer = encoder_tokenizer()
    BertForMaskedLM(_bert_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_classifier(
    folder: Path,
    labels: tuple[str, ...] = ("negative", "positive"),
    problem_type: str | None = None,
    seed: int = 3,
    **config_overrides,
) -> Path:
    """Single-label by default; problem_type="multi_label_classification", or one label for regression.

    `config_overrides` go into the BertConfig (e.g. hidden_dropout_prob=0.0 for runs that must match exactly)."""
    torch.manual_seed(seed)
    tokenizer = encoder_tokenizer()
    config = _bert_config(
        tokenizer,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
        **config_overrides,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
