"""Models: Llama-style size presets built from scratch, any Hugging Face config or checkpoint, and their cost."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel

from .config import ConfigError, ModelConfig


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


# Parameter counts are for the default vocabularies (4k for tiny/small, larger for the GPU presets), embeddings tied.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=176),  # ~0.4M
    "small": Preset(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=704),  # ~6M
    "medium": Preset(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1408),  # ~30M
    "base": Preset(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),  # ~125M
}


def causal_lm_config(cfg: ModelConfig, vocab_size: int, max_positions: int, special_ids: dict[str, int]):
    """A config for a new causal LM: from `--model_config` when given, else a Llama preset."""
    if cfg.model_config:
        config = AutoConfig.from_pretrained(cfg.model_config, trust_remote_code=cfg.trust_remote_code)
        config.vocab_size = vocab_size
    else:
        if cfg.model_preset not in PRESETS:
            raise ConfigError(f"model_preset={cfg.model_preset!r} is not one of {', '.join(PRESETS)}")
        preset = PRESETS[cfg.model_preset]
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=preset.hidden_size,
            num_hidden_layers=preset.num_hidden_layers,
            num_attention_heads=preset.num_attention_heads,
            num_key_value_heads=preset.num_attention_heads,
            intermediate_size=preset.intermediate_size,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            rope_theta=10_000.0,
        )
    for key, value in special_ids.items():
        setattr(config, key, value)
    return config


def build_causal_lm(config: PretrainedConfig, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """A randomly initialised causal LM (seed it first with `accelerate.utils.set_seed`)."""
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for parameter in model.parameters():
        if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def flops_per_token(model: PreTrainedModel, sequence_length: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·d·T for attention scores (PaLM appendix B)."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    n_params = count_parameters(model)
    embedding = model.get_input_embeddings()
    if embedding is not None and not getattr(config, "tie_word_embeddings", False):
        n_params -= embedding.weight.numel()  # a lookup, not a matmul (an untied output head still counts)
    layers = getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "hidden_size", 0)
    return 6.0 * n_params + 12.0 * layers * hidden * sequence_length
