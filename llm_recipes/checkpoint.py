"""Crash-safe, resumable checkpoints on top of `Accelerator.save_state`.

A checkpoint is written into a hidden temporary folder and renamed to `checkpoint-<step>` only when every process has
finished writing and `trainer_state.json` (written last) is on disk: a folder with that name is always complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / STATE_FILE).is_file()
    ]
    return [path for _, path in sorted(found)]


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`latest` means the newest complete checkpoint in output_dir (None when there is none yet)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {STATE_FILE}); pick a checkpoint-N folder")
    return path


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Every process calls this; the folder appears under its final name only once complete."""
    root = checkpoint_dir(output_dir)
    final = root / f"checkpoint-{step}"
    temporary = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state_path = temporary / STATE_FILE
        with open(state_path, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # a re-run of the same step after a resume: replace the old copy
            shutil.rmtree(final)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    with open(Path(path) / STATE_FILE, encoding="utf-8") as handle:
        return json.load(handle)


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete the oldest checkpoints beyond `keep`, never the newest nor the protected (best) one."""
    checkpoints = list_checkpoints(output_dir)
    if keep <= 0 or len(checkpoints) <= keep:
        return []
    newest = checkpoints[-1]
    removable = [p for p in checkpoints if p != newest and (protect is None or p.resolve() != protect.resolve())]
    surplus = len(checkpoints) - keep
    deleted = removable[:surplus]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted
