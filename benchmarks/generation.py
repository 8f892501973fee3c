"""B6: generation tokens/s with and without the KV cache, at batch 1 and batch 8 (greedy, fixed length)."""

from __future__ import annotations

import time
from typing import Any

import torch

from .common import Scale
from .harness import Figure, alternate, paired_ratios
from .pretraining import build_model

VOCAB = 4096


def generation_rate(model, batch_size: int, prompt_tokens: int, new_tokens: int, use_cache: bool) -> dict[str, Any]:
    prompt = torch.randint(10, VOCAB, (batch_size, prompt_tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        started = time.perf_counter()
        output = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )
        seconds = time.perf_counter() - started
    generated = (output.shape[1] - prompt_tokens) * batch_size
    return {"tokens": generated, "seconds": seconds, "tokens_per_second": generated / seconds}


def b6_generation(scale: Scale) -> list[Figure]:
    model = build_model(scale.b6_preset, VOCAB, scale.b6_prompt_tokens + scale.b6_new_tokens).eval()
    generation_rate(model, 1, scale.b6_prompt_tokens, 4, True)  # warm-up
    figures = []
    for batch_size in (1, 8):
        def trial(use_cache: bool, batch_size: int = batch_size):
            return lambda repeat: generation_rate(model, batch_size, scale.b6_prompt_tokens, scale.b6_new_tokens,
                                                  use_cache)

        runs = alternate({"cache": trial(True), "no_cache": trial(False)}, scale.repeats)
        ratio = paired_ratios([r["tokens_per_second"] for r in runs["cache"]],
                              [r["tokens_per_second"] for r in runs["no_cache"]])
        figures.append(Figure(
            f"B6 KV cache, batch {batch_size}", "generation tokens/s with the KV cache / without",
            ratio, target=3.0,
            details={"runs": runs, "setup": f"{scale.b6_preset} preset, prompt {scale.b6_prompt_tokens} tokens, "
                     f"{scale.b6_new_tokens} new tokens, greedy, fp32"},
        ))
    return figures
