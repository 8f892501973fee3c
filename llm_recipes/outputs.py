"""The output folder: guarded against accidental overwrites, filled atomically, loadable without this project."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .checkpoint import list_checkpoints
from .config import TrainConfig, save_resolved_config
from .hub import scrub_secrets

RESULTS_FILE = "all_results.json"
RECIPE_FILE = "recipe.yaml"
LOG_FILE = "log_history.json"


def prepare_output_dir(cfg: TrainConfig, accelerator: Accelerator) -> Path:
    """Refuse to train over a finished run or its checkpoints unless asked to overwrite or resume."""
    output_dir = Path(cfg.output_dir)
    finished = (output_dir / RESULTS_FILE).is_file()
    checkpoints = list_checkpoints(output_dir)
    if (finished or checkpoints) and not (cfg.overwrite_output_dir or cfg.resume_from_checkpoint):
        what = "a finished run" if finished else f"{len(checkpoints)} checkpoint(s)"
        raise FileExistsError(
            f"{output_dir} already holds {what}. Pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir true to start afresh there, or choose another --output_dir."
        )
    if accelerator.is_main_process:
        if cfg.overwrite_output_dir and not cfg.resume_from_checkpoint and output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return output_dir


def save_pretrained_atomic(accelerator: Accelerator, model, processing_class, output_dir: str | os.PathLike) -> None:
    """Write the final model (+ tokenizer) beside a temporary folder, then move each file into place."""
    output_dir = Path(output_dir)
    staging = output_dir / ".tmp-export"
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP/ZeRO-3 shards; every process must call it
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        if processing_class is not None:
            processing_class.save_pretrained(staging)
        for path in sorted(staging.iterdir()):
            os.replace(path, output_dir / path.name)
        staging.rmdir()
    accelerator.wait_for_everyone()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """JSON written to a temporary file and renamed, so a reader never sees half a file; Hub tokens are scrubbed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    text = json.dumps(_finite(payload), indent=2, default=str) + "\n"
    temporary.write_text(scrub_secrets(text), encoding="utf-8")
    os.replace(temporary, path)


def write_run_files(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    results: dict[str, Any],
    log_history: list[dict[str, Any]],
    config_instances: tuple[Any, ...],
) -> None:
    """all_results.json, the training log and the resolved recipe (which reruns the run with --config)."""
    if not accelerator.is_main_process:
        return
    output_dir = Path(output_dir)
    write_json(output_dir / RESULTS_FILE, results)
    write_json(output_dir / LOG_FILE, log_history)
    save_resolved_config(output_dir / RECIPE_FILE, *config_instances)


def launch_command() -> str:
    """The command line that started this process, as a user would retype it."""
    return " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
