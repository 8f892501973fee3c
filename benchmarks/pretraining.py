"""B1 (pretraining tokens/s: our loop against `Trainer` as in run_clm.py) and B2 (MFU of the ~30M preset at 512).

Both sides train the same freshly initialised model on the same packed blocks with the same global batch and
precision, and both are timed the same way: wall time between the end of the last warm-up step and the end of the
last step (data loading, forward, backward, clipping, optimizer and scheduler included; set-up excluded).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .common import Corpus, Scale
from .harness import Figure, alternate, paired_ratios

LEARNING_RATE = 2e-3


def build_model(preset: str, vocab_size: int, block_size: int, seed: int = 0):
    from llm_recipes.config import ModelConfig
    from llm_recipes.modeling import build_causal_lm, causal_lm_config

    torch.manual_seed(seed)
    config = causal_lm_config(ModelConfig(model_preset=preset), vocab_size, block_size, {})
    return build_causal_lm(config)


def packed_blocks(corpus: Corpus, block_size: int, max_blocks: int):
    """Packed training blocks of the corpus (llm_recipes.data.text), at most `max_blocks`."""
    from llm_recipes.data.text import prepare_lm_datasets

    packed = prepare_lm_datasets(corpus.raw, corpus.tokenizer, "text", block_size)
    train = packed["train"]
    return train.select(range(min(max_blocks, len(train))))


def steady_rate_from_log(log_history: list[dict[str, Any]]) -> tuple[float, float]:
    """(tokens, seconds) of every logging window after the first (warm-up) one."""
    windows = [record for record in log_history if "tokens_per_second" in record]
    tokens, seconds, previous = 0.0, 0.0, windows[0]["tokens_seen"] if windows else 0
    for record in windows[1:]:
        window_tokens = record["tokens_seen"] - previous
        previous = record["tokens_seen"]
        tokens += window_tokens
        seconds += window_tokens / record["tokens_per_second"]
    return tokens, seconds


def run_our_loop(
    model,
    train_dataset,
    collate_fn,
    batch_size: int,
    warmup_steps: int,
    measured_steps: int,
    workdir: Path,
    flops_per_token: float | None = None,
    count_tokens=None,
    train_sampler=None,
    torch_compile: bool = False,
) -> dict[str, Any]:
    """Train with llm_recipes.training.train; logging windows of `warmup_steps` steps, the first one discarded."""
    from llm_recipes.config import TrainConfig
    from llm_recipes.training import Task, build_accelerator, train

    if measured_steps % warmup_steps:
        raise ValueError("measured_steps must be a multiple of warmup_steps (whole logging windows)")
    output_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="ours-"))
    cfg = TrainConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        max_steps=warmup_steps + measured_steps,
        logging_steps=warmup_steps,
        eval_steps=10**6,
        save_steps=0,
        load_best_model_at_end=False,
        learning_rate=LEARNING_RATE,
        warmup_ratio=0.0,
        report_to="none",
        torch_compile=torch_compile,
    )
    accelerator = build_accelerator(cfg)
    task = Task(
        model=model,
        train_dataset=train_dataset,
        eval_datasets={},
        collate_fn=collate_fn,
        make_evaluator=lambda: None,
        flops_per_token=flops_per_token,
        count_tokens=count_tokens,
        train_sampler=train_sampler,
    )
    started = time.perf_counter()
    result = train(task, cfg, accelerator)
    total = time.perf_counter() - started
    tokens, seconds = steady_rate_from_log(result.log_history)
    first = next(r for r in result.log_history if "tokens_per_second" in r)
    shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "steps_per_second": measured_steps / seconds,
        "warmup_seconds": first["tokens_seen"] / first["tokens_per_second"],
        "loop_mfu": statistics.median([r["mfu"] for r in result.log_history if "mfu" in r][1:] or [float("nan")]),
        "loop_peak_flops": result.extras.get("peak_flops"),
        "precision": accelerator.mixed_precision,
        "total_seconds": total,
    }


class StepClock:
    """A TrainerCallback that notes the wall time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __getattr__(self, name: str):  # every other callback event: do nothing
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.times.append(time.perf_counter())


TRAINER_FLAGS = {
    # TrainingArguments defaults (transformers 5: fused AdamW, fp32, pin_memory, no workers, progress bar)
    "defaults": {},
    # The fastest flags on this CPU: bf16 is emulated here (~100x slower matmuls) so fp32; fused AdamW (explicit);
    # no pinned memory (CPU), no progress bar, no token counting. Data-loader workers only compete for the 2 cores.
    "best": {
        "optim": "adamw_torch_fused",
        "bf16": False,
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "no",
    },
}


def run_trainer(
    model,
    train_dataset,
    data_collator,
    batch_size: int,
    warmup_steps: int,
    measured_steps: int,
    workdir: Path,
    flags: dict[str, Any],
    tokens_per_step: float | None = None,
) -> dict[str, Any]:
    """Train with `transformers.Trainer` (as run_clm.py / run_glue.py do); time the steps after the warm-up."""
    from transformers import Trainer, TrainingArguments

    output_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="trainer-"))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        max_steps=warmup_steps + measured_steps,
        save_strategy="no",
        report_to="none",
        seed=0,
        **flags,
    )
    clock = StepClock()
    trainer = Trainer(
        model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, callbacks=[clock]
    )
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    seconds = clock.times[-1] - clock.times[warmup_steps - 1]
    shutil.rmtree(output_dir, ignore_errors=True)
    result = {
        "seconds": seconds,
        "steps_per_second": measured_steps / seconds,
        "total_seconds": total,
        "warmup_seconds": clock.times[warmup_steps - 1] - started,
    }
    if tokens_per_step:
        result["tokens_per_second"] = tokens_per_step * measured_steps / seconds
    return result


def clm_dataset(blocks):
    """The packed blocks as run_clm.py's `group_texts` leaves them: input_ids, attention_mask of ones, labels."""
    import numpy as np
    from datasets import Dataset

    ids = np.asarray(blocks.with_format("numpy")["input_ids"], dtype=np.int64)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy()})


def b1_pretraining_throughput(corpus: Corpus, scale: Scale, workdir: Path) -> list[Figure]:
    from transformers import default_data_collator

    from llm_recipes.data.text import collate_blocks

    steps = scale.b1_warmup_steps + scale.b1_measured_steps
    blocks = packed_blocks(corpus, scale.b1_block, steps * scale.b1_batch)
    trainer_blocks = clm_dataset(blocks)
    vocab = len(corpus.tokenizer)
    tokens_per_step = scale.b1_batch * scale.b1_block

    def ours(repeat: int) -> dict[str, Any]:
        model = build_model(scale.b1_preset, vocab, scale.b1_block)
        return run_our_loop(
            model, blocks, collate_blocks, scale.b1_batch, scale.b1_warmup_steps, scale.b1_measured_steps, workdir
        )

    def trainer(flags: dict[str, Any]):
        def trial(repeat: int) -> dict[str, Any]:
            model = build_model(scale.b1_preset, vocab, scale.b1_block)
            return run_trainer(
                model,
                trainer_blocks,
                default_data_collator,
                scale.b1_batch,
                scale.b1_warmup_steps,
                scale.b1_measured_steps,
                workdir,
                flags,
                tokens_per_step,
            )

        return trial

    runs = alternate(
        {
            "ours": ours,
            "trainer_defaults": trainer(TRAINER_FLAGS["defaults"]),
            "trainer_best": trainer(TRAINER_FLAGS["best"]),
        },
        scale.repeats,
    )
    rate = {name: [r["tokens_per_second"] for r in results] for name, results in runs.items()}
    setup = (
        f"{scale.b1_preset} preset, block {scale.b1_block}, global batch {scale.b1_batch}, fp32, "
        f"{scale.b1_measured_steps} steps after {scale.b1_warmup_steps} warm-up"
    )
    details = {"setup": setup, "tokens_per_second": rate, "runs": runs, "trainer_flags": TRAINER_FLAGS}
    return [
        Figure(
            "B1 vs Trainer defaults",
            "pretraining tokens/s: our loop / Trainer defaults (run_clm.py)",
            paired_ratios(rate["ours"], rate["trainer_defaults"]),
            target=2.5,
            details=details,
        ),
        Figure(
            "B1 vs Trainer best",
            "pretraining tokens/s: our loop / Trainer best flags (fp32, fused AdamW)",
            paired_ratios(rate["ours"], rate["trainer_best"]),
            target=1.3,
            details={"setup": setup, "see": "B1 vs Trainer defaults"},
        ),
    ]


def b2_mfu(corpus: Corpus, scale: Scale, workdir: Path) -> list[Figure]:
    """Achieved model FLOP/s of our loop divided by matmul peaks measured in this process just before."""
    from llm_recipes.data.text import collate_blocks
    from llm_recipes.evaluation import measure_matmul_peak
    from llm_recipes.modeling import count_parameters, flops_per_token

    steps = scale.b2_warmup_steps + scale.b2_measured_steps
    blocks = packed_blocks(corpus, scale.b2_block, steps * scale.b2_batch)
    vocab = len(corpus.tokenizer)
    bf16_peak = measure_matmul_peak("cpu", torch.bfloat16) if scale.b2_bf16_peak else None
    fp32_mfu, bf16_mfu, runs = [], [], []
    for repeat in range(scale.repeats):
        model = build_model(scale.b2_preset, vocab, scale.b2_block, seed=repeat)
        per_token = flops_per_token(model, scale.b2_block)
        peak_before = measure_matmul_peak("cpu", torch.float32)
        run = run_our_loop(
            model,
            blocks,
            collate_blocks,
            scale.b2_batch,
            scale.b2_warmup_steps,
            scale.b2_measured_steps,
            workdir,
            flops_per_token=per_token,
        )
        peak_after = measure_matmul_peak("cpu", torch.float32)
        achieved = run["tokens_per_second"] * per_token
        fp32_peak = (peak_before + peak_after) / 2
        fp32_mfu.append(achieved / fp32_peak)
        if bf16_peak:
            bf16_mfu.append(achieved / bf16_peak)
        runs.append(
            {
                **run,
                "achieved_flops": achieved,
                "fp32_peak_before": peak_before,
                "fp32_peak_after": peak_after,
                "flops_per_token": per_token,
                "parameters": count_parameters(model),
            }
        )
    setup = (
        f"{scale.b2_preset} preset ({runs[0]['parameters'] / 1e6:.1f}M parameters), sequence {scale.b2_block}, "
        f"batch {scale.b2_batch}, {runs[0]['precision']}; FLOPs/token = 6N + 12*L*d*T "
        f"= {runs[0]['flops_per_token'] / 1e6:.0f}M"
    )
    figures = [
        Figure(
            "B2 MFU vs fp32 peak",
            "achieved FLOP/s / fp32 matmul peak (the meaningful denominator here)",
            fp32_mfu,
            target=0.5,
            unit="%",
            details={"setup": setup, "runs": runs, "fp32_peak_flops": [r["fp32_peak_before"] for r in runs]},
        ),
    ]
    if bf16_peak:
        figures.append(
            Figure(
                "B2 MFU vs bf16 peak",
                "achieved FLOP/s (fp32 run) / bf16 matmul peak (emulated bf16 here)",
                bf16_mfu,
                target=0.5,
                unit="%",
                details={"bf16_peak_flops": bf16_peak},
                note="on a CPU without AMX/AVX512-BF16, bf16 matmuls are emulated: this denominator is not meaningful",
            )
        )
    return figures
