"""The one training loop every recipe uses: Accelerate handles devices, processes, precision and accumulation.

A recipe hands the loop a `Task` (model, datasets, collator, evaluator); the loop never asks which task it runs.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from .checkpoint import (
    all_finite,
    checkpoint_dir,
    load_trainer_state,
    resolve_resume_path,
    rotate_checkpoints,
    save_checkpoint,
)
from .config import TrainConfig
from .evaluation import Evaluator, measure_matmul_peak
from .hub import scrub_secrets

logger = logging.getLogger(__name__)


@dataclass
class Task:
    """Everything task-specific the loop needs."""

    model: torch.nn.Module
    train_dataset: Any
    eval_datasets: dict[str, Any]
    collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]]
    make_evaluator: Callable[[], Evaluator]
    flops_per_token: float | None = None
    count_tokens: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
    on_evaluate: Callable[[torch.nn.Module, Accelerator], dict[str, Any] | None] | None = None
    data_fingerprint: str | None = None
    # Order of training examples; it must have `set_epoch(epoch)` and depend only on its seed and the epoch (for
    # exact resumes). Default: `EpochShuffleSampler` (a length-grouped sampler suits padded classification batches).
    train_sampler: Sampler[int] | None = None


@dataclass
class LoopState:
    """Where the run stands; saved in every checkpoint so a resume continues exactly."""

    global_step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    skipped_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    global_step: int
    tokens_seen: int
    train_runtime_s: float
    metrics: dict[str, dict[str, float]]  # split -> metrics of the exported model
    best_step: int | None
    best_metric: float | None
    log_history: list[dict[str, Any]]
    extras: dict[str, Any] = field(default_factory=dict)


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation per epoch from `seed + epoch`: the data order depends on nothing but the epoch number."""

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16 matmul units, where bf16 autocast beats fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched != "no":
        return launched
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "no"


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """One Accelerator per run, configured from the recipe (precision, accumulation, trackers)."""
    AcceleratorState._reset_state()  # lets one process run several recipes (tests, notebooks)
    trackers = None if cfg.report_to in ("none", "") else cfg.report_to.split(",")
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=f"{cfg.output_dir}/runs"),
        dataloader_config=DataLoaderConfiguration(even_batches=True),
        dynamo_backend="inductor" if cfg.torch_compile else None,
    )
    set_seed(cfg.seed)
    return accelerator


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW without decay on biases, norms and embeddings; fused kernels where the device has them."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "embed" in name or "norm" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        fused=device.type in ("cuda", "cpu"),
    )


def default_count_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask.sum() if mask is not None else torch.tensor(batch["input_ids"].numel())


def evaluate(model, dataloader, evaluator: Evaluator, accelerator: Accelerator, desc: str) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        for batch in tqdm(dataloader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
            evaluator.update(batch, model(**batch), accelerator)
    model.train()
    return evaluator.compute()


def train(task: Task, cfg: TrainConfig, accelerator: Accelerator) -> TrainResult:
    """Train `task.model`, evaluating, logging and checkpointing as configured; return the final metrics."""
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    map_style = hasattr(task.train_dataset, "__len__")
    sampler = task.train_sampler or (EpochShuffleSampler(len(task.train_dataset), cfg.seed) if map_style else None)
    loader_kwargs = {"collate_fn": task.collate_fn, "num_workers": cfg.dataloader_num_workers}
    train_loader = DataLoader(task.train_dataset, cfg.per_device_train_batch_size, sampler=sampler, **loader_kwargs)
    eval_loaders = {
        split: DataLoader(dataset, cfg.per_device_eval_batch_size, **loader_kwargs)
        for split, dataset in task.eval_datasets.items()
    }
    optimizer = build_optimizer(task.model, cfg, accelerator.device)
    model, optimizer, train_loader, *prepared_eval = accelerator.prepare(
        task.model, optimizer, train_loader, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, prepared_eval))
    if cfg.max_steps > 0:
        max_steps = cfg.max_steps
    elif map_style:
        max_steps = math.ceil(cfg.num_train_epochs * math.ceil(len(train_loader) / cfg.gradient_accumulation_steps))
    else:
        raise ValueError("a streaming dataset has no length: set --max_steps")
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * max_steps)
    # Not passed to prepare(): stepped once per optimizer step, whatever the number of processes.
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
    accelerator.register_for_checkpointing(scheduler)

    state = LoopState()
    resume_path = resolve_resume_path(cfg.resume_from_checkpoint, output_dir)
    if resume_path is not None:
        saved = load_trainer_state(resume_path)
        _check_resume_compatible(saved, accelerator, task, resume_path)
        accelerator.load_state(str(resume_path))
        state = LoopState(**saved["loop"])
        accelerator.print(f"Resumed from {resume_path} at step {state.global_step}")

    global_batch = cfg.per_device_train_batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    if accelerator.log_with:
        hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(cfg).items()}
        accelerator.init_trackers("llm-recipes", config=scrub_secrets(hyperparameters))
    if accelerator.is_main_process:
        accelerator.print(
            f"Training {max_steps} steps | global batch {global_batch} = {cfg.per_device_train_batch_size} per device "
            f"x {accelerator.num_processes} processes x {cfg.gradient_accumulation_steps} accumulation | "
            f"precision {accelerator.mixed_precision} | device {accelerator.device}"
        )
    peak_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    peak_flops = measure_matmul_peak(accelerator.device, peak_dtype) if task.flops_per_token else None
    count_tokens = task.count_tokens or default_count_tokens
    parameters = [p for p in model.parameters() if p.requires_grad]
    window_loss = torch.zeros((), device=accelerator.device)
    window_tokens = torch.zeros((), device=accelerator.device, dtype=torch.long)
    window_micro, window_started = 0, time.perf_counter()
    last_grad_norm = torch.zeros((), device=accelerator.device)
    progress = tqdm(
        total=max_steps, initial=state.global_step, desc="Training", disable=not accelerator.is_local_main_process
    )
    stop = state.global_step >= max_steps
    model.train()
    while not stop:
        loader = train_loader
        if state.micro_batches_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, state.micro_batches_in_epoch)
        # Accelerate's loaders count their own passes and re-seed the sampler with that count; a resumed run's
        # count starts at 0, so name the epoch explicitly (it reaches our sampler or a streaming dataset).
        loader.set_epoch(state.epoch)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                window_loss += loss.detach()
                window_tokens += count_tokens(batch).to(window_tokens.device)
                window_micro += 1
                if accelerator.sync_gradients:
                    last_grad_norm = accelerator.clip_grad_norm_(parameters, cfg.max_grad_norm or float("inf"))
                    if last_grad_norm is not None and not torch.isfinite(last_grad_norm):
                        state.skipped_steps += 1  # a non-finite loss or gradient: skip this update
                        logger.warning("step %d: non-finite gradient norm, update skipped", state.global_step + 1)
                    else:
                        optimizer.step()
                        if not accelerator.optimizer_step_was_skipped:
                            scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            state.micro_batches_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            step = state.global_step
            last = step >= max_steps
            if step % cfg.logging_steps == 0 or last:
                elapsed = time.perf_counter() - window_started
                tokens = int(accelerator.reduce(window_tokens, "sum").item())
                state.tokens_seen += tokens
                state.train_seconds += elapsed
                record = {
                    "step": step,
                    "epoch": round(state.epoch + state.micro_batches_in_epoch / max(len(train_loader), 1), 4)
                    if map_style
                    else state.epoch,
                    "loss": accelerator.reduce(window_loss, "mean").item() / max(window_micro, 1),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "grad_norm": float(last_grad_norm) if last_grad_norm is not None else None,
                    "tokens_per_second": tokens / elapsed,
                    "tokens_seen": state.tokens_seen,
                }
                if peak_flops:
                    record["mfu"] = tokens / elapsed * task.flops_per_token / (peak_flops * accelerator.num_processes)
                if state.skipped_steps:
                    record["skipped_steps"] = state.skipped_steps
                _log(accelerator, state, record, progress)
                window_loss.zero_()
                window_tokens.zero_()
                window_micro, window_started = 0, time.perf_counter()
            paused = time.perf_counter()
            if step % cfg.eval_steps == 0 or last:
                stop = _evaluate_and_track(model, task, cfg, accelerator, eval_loaders, state, progress) or last
            if (cfg.save_steps and step % cfg.save_steps == 0) or last:
                _save(accelerator, model, output_dir, state, cfg, task)
            window_started += time.perf_counter() - paused  # evaluating and saving is not training throughput
            if stop:
                break
        else:
            state.epoch += 1
            state.micro_batches_in_epoch = 0
            continue
        break
    progress.close()
    train_runtime = time.perf_counter() - started

    if cfg.load_best_model_at_end and state.best_step is not None and state.best_step != state.global_step:
        best = checkpoint_dir(output_dir) / f"checkpoint-{state.best_step}"
        accelerator.print(f"Loading the best checkpoint ({cfg.metric_for_best_model}={state.best_metric:.4f}): {best}")
        accelerator.load_state(str(best))
    final = {
        split: evaluate(model, loader, task.make_evaluator(), accelerator, f"Evaluating {split}")
        for split, loader in eval_loaders.items()
    }
    accelerator.end_training()
    return TrainResult(
        global_step=state.global_step,
        tokens_seen=state.tokens_seen,
        train_runtime_s=train_runtime,
        metrics=final,
        best_step=state.best_step,
        best_metric=state.best_metric,
        log_history=state.log_history,
        extras={"model": model, "train_seconds": state.train_seconds, "peak_flops": peak_flops, "global_batch": global_batch, "max_steps": max_steps},
    )


def _log(accelerator: Accelerator, state: LoopState, record: dict[str, Any], progress: tqdm) -> None:
    state.log_history.append(record)
    accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
    if accelerator.is_local_main_process:
        progress.set_postfix(
            loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}", tok_s=f"{record['tokens_per_second']:.0f}"
        )


def _evaluate_and_track(model, task, cfg, accelerator, eval_loaders, state, progress) -> bool:
    """Evaluate on validation, remember the best step, and say whether early stopping should end the run."""
    if "validation" not in eval_loaders:
        return False
    metrics = evaluate(model, eval_loaders["validation"], task.make_evaluator(), accelerator, "Evaluating validation")
    record = {"step": state.global_step, **{f"eval_validation_{k}": v for k, v in metrics.items()}}
    if task.on_evaluate is not None:
        record.update(task.on_evaluate(model, accelerator) or {})
    state.log_history.append(record)
    accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                    step=state.global_step)
    if accelerator.is_local_main_process:
        progress.write(
            f"step {state.global_step}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k != "tokens")
        )
    value = metrics.get(cfg.metric_for_best_model)
    if value is None:
        raise KeyError(
            f"metric_for_best_model={cfg.metric_for_best_model!r} is not among the validation metrics "
            f"({', '.join(metrics)})"
        )
    improved = state.best_metric is None or (
        value > state.best_metric if cfg.greater_is_better else value < state.best_metric
    )
    if improved:
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.global_step, 0
        return False
    state.evals_without_improvement += 1
    patience = cfg.early_stopping_patience
    if patience is not None and state.evals_without_improvement >= patience:
        accelerator.print(f"Early stopping: no improvement of {cfg.metric_for_best_model} in {patience} evaluations")
        return True
    return False


def _save(accelerator: Accelerator, model, output_dir: Path, state: LoopState, cfg: TrainConfig, task: Task) -> None:
    if not all_finite(model):
        raise FloatingPointError(f"step {state.global_step}: the weights hold NaN/inf values; no checkpoint written")
    payload = {
        "loop": state.__dict__,
        "world_size": accelerator.num_processes,
        "data_fingerprint": task.data_fingerprint,
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
    }
    save_checkpoint(accelerator, output_dir, state.global_step, payload)
    if accelerator.is_main_process:
        best = checkpoint_dir(output_dir) / f"checkpoint-{state.best_step}" if state.best_step else None
        rotate_checkpoints(output_dir, cfg.save_total_limit, protect=best)
        for stale in checkpoint_dir(output_dir).glob(".tmp-checkpoint-*"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()


def _check_resume_compatible(saved: dict[str, Any], accelerator: Accelerator, task: Task, path: Path) -> None:
    if saved.get("world_size") != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {saved.get('world_size')} process(es) and this run has "
            f"{accelerator.num_processes}: the data position would not carry over exactly. Resume with "
            f"{saved.get('world_size')} processes, or start a new run from the exported model."
        )
    if task.data_fingerprint and saved.get("data_fingerprint") not in (None, task.data_fingerprint):
        raise ValueError(
            f"{path} was trained on different data (fingerprint {saved['data_fingerprint']}, now "
            f"{task.data_fingerprint}); resuming would not continue the same run"
        )
