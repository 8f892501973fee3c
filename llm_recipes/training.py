"""The one training loop every recipe uses: Accelerate handles devices, processes, precision and accumulation.

A recipe hands the loop a `Task` (model, datasets, collator, evaluator); the loop never asks which task it runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
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
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    model_signature,
    remove_stale_temporaries,
    resolve_resume_path,
    rotate_checkpoints,
    save_checkpoint,
)
from .config import TrainConfig
from .evaluation import Evaluator, measure_matmul_peak
from .hub import scrub_secrets
from .preemption import PreemptionHandler, TrainingPreempted, agree_on_step

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
    consecutive_nonfinite: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)


class NonFiniteTrainingError(FloatingPointError):
    """Too many optimizer steps in a row had a NaN/inf loss or gradient; the message says what to try."""


class ResumeMismatchError(ValueError):
    """The checkpoint belongs to a run this one cannot continue exactly (other data, model or world size)."""


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
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads or cpu_threads_per_process(accelerator.num_processes))
    set_seed(cfg.seed)
    return accelerator


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant checkpointing, which also works when the inputs need no grad (LoRA's frozen embeddings)."""
    if not getattr(model, "supports_gradient_checkpointing", True) or not hasattr(
        model, "activation_checkpointing_enable"
    ):
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def cpu_threads_per_process(num_processes: int) -> int:
    """This machine's usable cores shared among the processes running on it (at least one each)."""
    local_processes = int(
        os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or num_processes
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, usable // max(1, local_processes))


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
    """Train `task.model`, evaluating, logging and checkpointing as configured; return the final metrics.

    On SIGTERM/SIGINT every process stops after the same optimizer step, saves a checkpoint and raises
    `TrainingPreempted` (a SystemExit with code EXIT_PREEMPTED). After `max_consecutive_nonfinite_steps` skipped
    (NaN/inf) updates in a row it raises `NonFiniteTrainingError`.
    """
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    map_style = hasattr(task.train_dataset, "__len__")
    sampler = task.train_sampler or (EpochShuffleSampler(len(task.train_dataset), cfg.seed) if map_style else None)
    if hasattr(task.train_dataset, "history"):  # a resumable stream must remember as far back as the loader reads
        read_ahead = 4 * cfg.per_device_train_batch_size * accelerator.num_processes
        task.train_dataset.history = max(task.train_dataset.history, read_ahead)
    loader_kwargs = {"collate_fn": task.collate_fn, "num_workers": cfg.dataloader_num_workers}
    train_loader = DataLoader(task.train_dataset, cfg.per_device_train_batch_size, sampler=sampler, **loader_kwargs)
    eval_loaders = {
        split: DataLoader(dataset, cfg.per_device_eval_batch_size, **loader_kwargs)
        for split, dataset in task.eval_datasets.items()
    }
    identity = _run_identity(task, cfg, accelerator)  # before prepare(): names and shapes of the plain model
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(task.model)
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
    identity["max_steps"] = max_steps
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * max_steps)
    # Not passed to prepare(): stepped once per optimizer step, whatever the number of processes. Its state is saved
    # as JSON in trainer_state.json (registered with Accelerate, it would be unpickled with no weights_only guard).
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)

    if accelerator.is_main_process:
        remove_stale_temporaries(output_dir)  # left by a process killed mid-save; `latest` never picks them
    state, stream_position = _resume(accelerator, cfg, scheduler, identity)
    global_batch = cfg.per_device_train_batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    if accelerator.log_with:
        hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(cfg).items()}
        accelerator.init_trackers("llm-recipes", config=scrub_secrets(hyperparameters))
    if accelerator.is_main_process:
        accelerator.print(
            f"Training {max_steps} steps | global batch {global_batch} = {cfg.per_device_train_batch_size} per device "
            f"x {accelerator.num_processes} processes x {cfg.gradient_accumulation_steps} accumulation | "
            f"precision {accelerator.mixed_precision} | device {accelerator.device}"
            + (f" ({torch.get_num_threads()} threads)" if accelerator.device.type == "cpu" else "")
        )
    peak_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    peak_flops = measure_matmul_peak(accelerator.device, peak_dtype) if task.flops_per_token else None
    count_tokens = task.count_tokens or default_count_tokens
    parameters = [p for p in model.parameters() if p.requires_grad]
    window = TrainWindow(accelerator.device)
    progress = tqdm(
        total=max_steps, initial=state.global_step, desc="Training", disable=not accelerator.is_local_main_process
    )
    stop = state.global_step >= max_steps
    model.train()
    with PreemptionHandler() as preemption:
        while not stop:
            loader = _epoch_loader(accelerator, train_loader, task.train_dataset, sampler, state, stream_position)
            stream_position = None  # only the resumed epoch starts mid-way
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    window.add(loss.detach(), count_tokens(batch))
                    if accelerator.sync_gradients:
                        flags = _apply_update(accelerator, optimizer, scheduler, parameters, cfg, state, window,
                                              stop_requested=preemption.received is not None)
                state.micro_batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                state.global_step += 1
                progress.update(1)
                step = state.global_step
                last = step >= max_steps
                if state.consecutive_nonfinite >= cfg.max_consecutive_nonfinite_steps:
                    progress.close()
                    accelerator.end_training()
                    raise NonFiniteTrainingError(_nonfinite_message(state, cfg, output_dir))
                if step % cfg.logging_steps == 0 or last:
                    epoch = state.epoch + (state.micro_batches_in_epoch / len(train_loader) if map_style else 0)
                    record = window.record(accelerator, state, scheduler, epoch, task.flops_per_token, peak_flops)
                    _log(accelerator, state, record, progress)
                with window.paused():  # evaluating and saving is not training throughput
                    if step % cfg.eval_steps == 0 or last:
                        stop = _evaluate_and_track(model, task, cfg, accelerator, eval_loaders, state, progress)
                        stop = stop or last
                    scheduled_save = (cfg.save_steps and step % cfg.save_steps == 0) or last
                    if scheduled_save or flags.stop_requested:
                        _save(accelerator, model, scheduler, state, cfg, task, identity)
                if flags.stop_requested:  # every process got the same flags, so they all stop after this step
                    progress.close()
                    accelerator.end_training()
                    _raise_preempted(accelerator, preemption.received, step, output_dir)
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
        load_checkpoint(accelerator, best)
    final = {
        split: evaluate(model, loader, task.make_evaluator(), accelerator, f"Evaluating {split}")
        for split, loader in eval_loaders.items()
    }
    # Trackers stay open (and, in Accelerate 1.15, the process group too) until the recipe ends: `finish_run`.
    return TrainResult(
        global_step=state.global_step,
        tokens_seen=state.tokens_seen,
        train_runtime_s=train_runtime,
        metrics=final,
        best_step=state.best_step,
        best_metric=state.best_metric,
        log_history=state.log_history,
        extras={
            "model": model,
            "train_seconds": state.train_seconds,
            "peak_flops": peak_flops,
            "global_batch": global_batch,
            "max_steps": max_steps,
            "skipped_steps": state.skipped_steps,
        },
    )


class TrainWindow:
    """Loss, tokens and training time since the last log line.

    The current accumulation group's loss is held apart until its update is applied, so the loss of a skipped
    (non-finite) update never reaches the logged average.
    """

    def __init__(self, device: torch.device) -> None:
        self.group_loss = torch.zeros((), device=device)
        self.group_micro = 0
        self.loss = torch.zeros((), device=device)
        self.tokens = torch.zeros((), device=device, dtype=torch.long)
        self.micro = 0
        self.grad_norm: torch.Tensor | None = None  # of the last optimizer step
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, tokens: torch.Tensor) -> None:
        self.group_loss += loss
        self.group_micro += 1
        self.tokens += tokens.to(self.tokens.device)

    def close_group(self, applied: bool) -> None:
        if applied:
            self.loss += self.group_loss
            self.micro += self.group_micro
        self.group_loss.zero_()
        self.group_micro = 0

    @contextmanager
    def paused(self):
        paused = time.perf_counter()
        try:
            yield
        finally:
            self.started += time.perf_counter() - paused

    def record(self, accelerator: Accelerator, state: LoopState, scheduler, epoch, flops_per_token, peak_flops):
        """The log record of this window (one reduce across processes), then start a new window."""
        elapsed = time.perf_counter() - self.started
        tokens = int(accelerator.reduce(self.tokens, "sum").item())
        loss_sum = accelerator.reduce(self.loss, "mean").item()
        state.tokens_seen += tokens
        state.train_seconds += elapsed
        record = {
            "step": state.global_step,
            "epoch": round(epoch, 4),
            "loss": loss_sum / self.micro if self.micro else float("nan"),  # nan: every update was skipped
            "learning_rate": scheduler.get_last_lr()[0],
            "grad_norm": float(self.grad_norm) if self.grad_norm is not None else None,
            "tokens_per_second": tokens / elapsed,
            "tokens_seen": state.tokens_seen,
        }
        if peak_flops:
            record["mfu"] = tokens / elapsed * flops_per_token / (peak_flops * accelerator.num_processes)
        if state.skipped_steps:
            record["skipped_steps"] = state.skipped_steps
        self.loss.zero_()
        self.tokens.zero_()
        self.micro, self.started = 0, time.perf_counter()
        return record


def _apply_update(accelerator, optimizer, scheduler, parameters, cfg, state, window, stop_requested: bool):
    """Clip, agree across processes, then step, or skip the update when any process saw a NaN/inf loss or gradient."""
    grad_norm = accelerator.clip_grad_norm_(parameters, cfg.max_grad_norm or float("inf"))
    finite = torch.isfinite(window.group_loss)
    if grad_norm is not None:
        finite &= torch.isfinite(grad_norm)
    flags = agree_on_step(accelerator, ~finite, stop_requested)
    if flags.nonfinite:
        state.skipped_steps += 1
        state.consecutive_nonfinite += 1
        logger.warning(
            "step %d: NaN/inf loss or gradient (loss %s, grad norm %s): update skipped (%d in a row, %d in all)",
            state.global_step + 1, window.group_loss.item(), grad_norm, state.consecutive_nonfinite,
            state.skipped_steps,
        )
        if accelerator.scaler is not None:
            optimizer.step()  # fp16: the GradScaler skips the update itself and lowers its loss scale
    else:
        state.consecutive_nonfinite = 0
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    window.close_group(applied=not flags.nonfinite)
    window.grad_norm = grad_norm
    return flags


def _epoch_loader(accelerator: Accelerator, train_loader, dataset, sampler, state: LoopState, stream_position):
    """The loader for the current epoch, starting at the saved data position.

    A map-style dataset skips the consumed batches through Accelerate's `SkipBatchSampler`, which drops index lists
    without loading any example. A resumable stream (`stream_position`/`resume_from`, e.g. `PackedStream`) restarts
    from its saved position. Any other stream has to be replayed up to the position (exact, but it reads the data).
    """
    loader = train_loader
    if state.micro_batches_in_epoch and stream_position is not None:
        dataset.resume_from(stream_position)
    elif state.micro_batches_in_epoch:
        if not hasattr(dataset, "__len__"):
            logger.warning("the stream has no saved position: replaying %d batches", state.micro_batches_in_epoch)
        loader = accelerator.skip_first_batches(train_loader, state.micro_batches_in_epoch)
    # Accelerate's loaders count their own passes and re-seed the sampler with that count; a resumed run's count
    # starts at 0, so name the epoch explicitly (it reaches a streaming dataset). Our sampler is told directly: with
    # several processes the skipping loader nests it one level deeper than Accelerate's set_epoch looks.
    loader.set_epoch(state.epoch)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(state.epoch)
    return loader


def _resume(accelerator: Accelerator, cfg: TrainConfig, scheduler, identity: dict[str, Any]):
    """The loop state (and stream position) of the checkpoint named by resume_from_checkpoint; fresh when none."""
    path = resolve_resume_path(cfg.resume_from_checkpoint, cfg.output_dir)
    if path is None:
        return LoopState(), None
    saved = load_trainer_state(path)
    _check_resume_compatible(saved, identity, path)
    load_checkpoint(accelerator, path)
    if "scheduler" in saved:
        scheduler.load_state_dict(saved["scheduler"])
    state = LoopState(**saved["loop"])
    accelerator.print(f"Resumed from {path} at step {state.global_step}")
    return state, saved.get("train_stream")


def _raise_preempted(accelerator: Accelerator, signal_name: str | None, step: int, output_dir: Path) -> None:
    signal_name = signal_name or "a signal to another process"
    checkpoint = checkpoint_dir(output_dir) / f"checkpoint-{step}"
    error = TrainingPreempted(step, signal_name, str(checkpoint))
    # Every process says where it stopped (one line each), so a launcher's log shows they agreed.
    print(f"[process {accelerator.process_index}] {error}", file=sys.stderr, flush=True)
    raise error


def _nonfinite_message(state: LoopState, cfg: TrainConfig, output_dir: Path) -> str:
    first = state.global_step - state.consecutive_nonfinite + 1
    checkpoints = list_checkpoints(output_dir)
    newest = f"the newest checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written yet"
    return (
        f"{state.consecutive_nonfinite} optimizer steps in a row (steps {first}-{state.global_step}) had a NaN/inf "
        f"loss or gradient, so their updates were skipped; stopping (max_consecutive_nonfinite_steps="
        f"{cfg.max_consecutive_nonfinite_steps}). The weights are those after step {first - 1}; {newest}. Lower the "
        "learning rate, check the data these steps read, or train in bf16/fp32 instead of fp16."
    )


def _log(accelerator: Accelerator, state: LoopState, record: dict[str, Any], progress: tqdm) -> None:
    state.log_history.append(record)
    accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
    if accelerator.is_local_main_process:
        loss, lr, tokens_per_second = record["loss"], record["learning_rate"], record["tokens_per_second"]
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:.0f}")


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


def _save(
    accelerator: Accelerator, model, scheduler, state: LoopState, cfg: TrainConfig, task: Task, identity: dict
) -> None:
    """Weights, optimizer and RNG states through Accelerate; loop state, schedule and data position as JSON."""
    output_dir = Path(cfg.output_dir)
    payload = {
        **identity,
        "loop": state.__dict__,
        "scheduler": scheduler.state_dict(),
        "train_stream": _stream_position(accelerator, task, state, cfg) if accelerator.is_main_process else None,
    }
    save_checkpoint(accelerator, output_dir, state.global_step, payload, model)
    if accelerator.is_main_process:
        best = checkpoint_dir(output_dir) / f"checkpoint-{state.best_step}" if state.best_step else None
        rotate_checkpoints(output_dir, cfg.save_total_limit, protect=best)
        remove_stale_temporaries(output_dir)
    accelerator.wait_for_everyone()


def _stream_position(accelerator: Accelerator, task: Task, state: LoopState, cfg: TrainConfig) -> Any:
    """Where a resumable stream stands after the examples training consumed (the loader itself reads ahead)."""
    dataset = task.train_dataset
    if not hasattr(dataset, "stream_position") or not state.micro_batches_in_epoch:
        return None
    consumed = state.micro_batches_in_epoch * cfg.per_device_train_batch_size * accelerator.num_processes
    try:
        return dataset.stream_position(consumed)
    except LookupError as error:
        logger.warning("no stream position in this checkpoint (a resume will replay the stream): %s", error)
        return None


def _run_identity(task: Task, cfg: TrainConfig, accelerator: Accelerator) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (compared by `_check_resume_compatible`)."""
    return {
        "world_size": accelerator.num_processes,
        "data_fingerprint": task.data_fingerprint,
        "model_signature": model_signature(task.model),
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
    }


def _check_resume_compatible(saved: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    """Refuse a resume that could not continue the same run exactly; warn where it can but the run changes."""
    if saved.get("world_size") != identity["world_size"]:
        raise ResumeMismatchError(
            f"{path} was written by {saved.get('world_size')} process(es) and this run has "
            f"{identity['world_size']}: the data position would not carry over exactly. Resume with "
            f"{saved.get('world_size')} processes, or start a new run from the exported model."
        )
    if saved.get("per_device_train_batch_size") != identity["per_device_train_batch_size"]:
        raise ResumeMismatchError(
            f"{path} was written with per_device_train_batch_size={saved.get('per_device_train_batch_size')}, this "
            f"run has {identity['per_device_train_batch_size']}: its data position counts batches of the old size"
        )
    for key, what in (("data_fingerprint", "data"), ("model_signature", "model (weight names or shapes)")):
        if identity[key] and saved.get(key) not in (None, identity[key]):
            raise ResumeMismatchError(
                f"{path} was trained with a different {what}: {key} {saved[key]}, this run {identity[key]}; "
                "resuming would not continue the same run. Use the original settings, or start a new output_dir."
            )
    for key in ("gradient_accumulation_steps", "max_steps"):
        if key in saved and saved[key] != identity[key]:
            logger.warning(
                "%s: %s was %s and is now %s; resuming anyway (the data order carries over, but the run from here "
                "on differs from the original one)", path, key, saved[key], identity[key]
            )
