"""Evaluation for the shared loop: evaluators accumulate over batches (each example counted once across processes)."""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

LN2 = math.log(2.0)


class Evaluator(Protocol):
    """What the loop needs from a task's evaluation: feed batches in, get named metrics out."""

    def update(self, batch: dict[str, torch.Tensor], outputs: Any, accelerator: Accelerator) -> None: ...

    def compute(self) -> dict[str, float]: ...


class CausalLMEvaluator:
    """Token-weighted loss, perplexity and bits per byte of next-token prediction.

    Bits per byte divide the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so models with
    different tokenizers compare; special tokens (0 bytes) are left out of that ratio.
    """

    def __init__(self, token_bytes: np.ndarray | torch.Tensor | None = None) -> None:
        self.token_bytes = None if token_bytes is None else torch.as_tensor(token_bytes, dtype=torch.float64)
        self.totals = torch.zeros(4, dtype=torch.float64)  # nats, tokens, nats on byte tokens, bytes

    def update(self, batch: dict[str, torch.Tensor], outputs: Any, accelerator: Accelerator) -> None:
        logits = outputs.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none").double()
        mask = labels != -100
        per_example = [nll.sum(1), mask.sum(1).double()]
        if self.token_bytes is not None:
            table = self.token_bytes.to(labels.device)
            n_bytes = table[labels.clamp(min=0)] * mask
            per_example += [(nll * (n_bytes > 0)).sum(1), n_bytes.sum(1)]
        else:
            per_example += [torch.zeros_like(nll[:, 0]), torch.zeros_like(nll[:, 0])]
        gathered = accelerator.gather_for_metrics(torch.stack(per_example, dim=1))
        self.totals += gathered.sum(0).cpu()

    def compute(self) -> dict[str, float]:
        nats, tokens, byte_nats, n_bytes = self.totals.tolist()
        loss = nats / max(tokens, 1.0)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}
        if n_bytes > 0:
            metrics["bits_per_byte"] = byte_nats / LN2 / n_bytes
        return metrics


def unigram_perplexity(train_blocks: np.ndarray, eval_blocks: np.ndarray, vocab_size: int) -> float:
    """Perplexity of a token-frequency model fitted on train (add-one smoothing), on the same targets as the LM."""
    counts = np.bincount(train_blocks.reshape(-1), minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    targets = eval_blocks[:, 1:].reshape(-1)
    return float(np.exp(-log_probs[targets].mean()))


def measure_matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seconds: float = 0.3):
    """Achievable matmul FLOP/s here, measured now: the denominator of model FLOPs utilisation (MFU)."""
    device = torch.device(device)
    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    runs, start = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        if runs % 4 == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2.0 * size**3 * runs / elapsed
