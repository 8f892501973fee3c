"""The end of every recipe: summary numbers, results and logs on disk, plot, model card, optional Hub push."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .config import TrainConfig
from .hub import scrub_secrets
from .lora import save_adapter_or_model
from .modeling import count_parameters
from .outputs import launch_command, write_run_files
from .training import TrainResult

logger = logging.getLogger(__name__)


def hardware_description(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        device = torch.cuda.get_device_name(accelerator.device)
    else:
        device = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    precision = "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision
    return f"{accelerator.num_processes} x {device} ({precision})"


def save_fine_tuned(
    accelerator: Accelerator, result: TrainResult, processing_class: Any, output_dir: Path, merge_lora: bool
) -> dict[str, Any]:
    """Save a fine-tuning run's model (full, or the LoRA adapter and optionally a merged copy) and return what every
    fine-tuning recipe reports about it: final metrics by split, parameter counts, the folders written."""
    trained = result.extras["model"]
    saved = save_adapter_or_model(accelerator, trained, processing_class, output_dir, merge_lora)
    return {
        **{f"{split}_{k}": v for split, metrics in result.metrics.items() for k, v in metrics.items()},
        "num_parameters": count_parameters(trained),
        "trainable_parameters": count_parameters(trained, trainable_only=True),
        "saved": {kind: str(path) for kind, path in saved.items()},
    }


def finish_run(
    accelerator: Accelerator,
    result: TrainResult,
    results: dict[str, Any],
    train_cfg: TrainConfig,
    config_instances: tuple[Any, ...],
    card: dict[str, Any],
) -> dict[str, Any]:
    """Add the run's bookkeeping to `results`, write every output file, and print a summary."""
    output_dir = Path(train_cfg.output_dir)
    results = {
        **results,
        "global_step": result.global_step,
        "best_step": result.best_step,
        "tokens_seen": result.tokens_seen,
        "train_runtime_s": round(result.train_runtime_s, 2),
        "train_tokens_per_second": result.tokens_seen / max(result.extras["train_seconds"], 1e-9),
        "global_batch_size": result.extras.get("global_batch"),
        "hardware": hardware_description(accelerator),
        "launch_command": scrub_secrets(launch_command()),
    }
    train_logs = [r for r in result.log_history if "mfu" in r]
    if train_logs:
        results["mfu"] = sum(r["mfu"] for r in train_logs) / len(train_logs)
    write_run_files(accelerator, output_dir, results, result.log_history, config_instances)
    if accelerator.is_main_process:
        _publish(output_dir, results, result, train_cfg, card)
        print_summary(results)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and the process group: nothing collective may follow
    return results


def _publish(output_dir: Path, results: dict, result: TrainResult, train_cfg: TrainConfig, card: dict) -> None:
    from . import hub

    plot = hub.plot_training_curves(result.log_history, output_dir / "training_curves.png")
    metrics = {
        k: v for k, v in results.items() if isinstance(v, (int, float)) and k.startswith(("validation_", "test_"))
    }
    hub.write_model_card(
        output_dir,
        results=metrics,
        recipe_yaml_path=output_dir / "recipe.yaml",
        launch_command=results["launch_command"],
        tokens_seen=result.tokens_seen,
        wall_time_s=result.train_runtime_s,
        hardware=results["hardware"],
        plot_path=plot,
        repo_id=train_cfg.hub_model_id,
        **card,
    )
    if train_cfg.push_to_hub:
        url = hub.push_to_hub(output_dir, train_cfg.hub_model_id or output_dir.name, private=train_cfg.hub_private)
        print(f"Pushed to {url}")


def print_summary(results: dict[str, Any]) -> None:
    """A short, aligned table of the numbers a person looks at first."""
    rows = [(k, v) for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    width = max(len(k) for k, _ in rows) if rows else 0
    print("\n===== results =====")
    for key, value in rows:
        shown = f"{value:,.4f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown}")
    for sample in results.get("samples", []):
        print(f"\n--- sample ---\n{sample['prompt']}{sample['completion']}")
