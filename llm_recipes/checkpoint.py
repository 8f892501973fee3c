"""Crash-safe, resumable checkpoints on top of `Accelerator.save_state`, and a safe way to read them back.

A checkpoint is written into a hidden temporary folder, flushed to disk, and renamed to `checkpoint-<step>` only when
every process has finished writing and `trainer_state.json` (written last) is on disk: a folder with that name is
always complete. A process killed mid-save leaves a `.tmp-checkpoint-*` folder that `latest` ignores and the next
save deletes. Before a resume, every file of the checkpoint is checked: weights must be safetensors and every other
file must unpickle with `weights_only=True`, so a planted pickle can never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils.other import TORCH_SAFE_GLOBALS

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".tmp-checkpoint-"
STATE_FILE = "trainer_state.json"
PICKLED_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file could execute code when loaded (or is not in a format this project writes)."""


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders and folders without trainer_state.json are skipped)."""
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
    flags = [torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def model_signature(model: torch.nn.Module) -> str:
    """Names, shapes and dtypes of the weights: two runs of the same architecture share it, whatever the values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any], model: torch.nn.Module
) -> Path:
    """Every process calls this; the folder appears under its final name only once complete.

    Refuses (FloatingPointError, nothing written) when any process holds a NaN/inf weight.
    """
    finite = torch.tensor(float(all_finite(model)), device=accelerator.device)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, "sum") / accelerator.num_processes
    if finite.item() < 1:
        raise FloatingPointError(f"step {step}: the weights hold NaN/inf values; no checkpoint written")
    root = checkpoint_dir(output_dir)
    final = root / f"checkpoint-{step}"
    temporary = root / f"{TEMPORARY_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_synced(temporary / STATE_FILE, json.dumps(state, indent=2))
        _fsync_tree(temporary)  # data on disk before the rename makes it visible: safe against power loss too
        if final.exists():  # a re-run of the same step after a resume: move the old copy aside, never delete first
            previous = root / f"{TEMPORARY_PREFIX}{step}-previous"
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(final, previous)
            os.replace(temporary, final)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(temporary, final)
        _fsync_path(root)
    accelerator.wait_for_everyone()
    return final


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Delete `.tmp-checkpoint-*` folders left by a process killed mid-save (main process, between saves)."""
    root = checkpoint_dir(output_dir)
    stale = sorted(root.glob(f"{TEMPORARY_PREFIX}*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    with open(Path(path) / STATE_FILE, encoding="utf-8") as handle:
        return json.load(handle)


def verify_checkpoint_files(path: str | os.PathLike, world_size: int) -> None:
    """Refuse a checkpoint that could run code when loaded, before `Accelerator.load_state` opens any file.

    Model weights must be safetensors. Every pickle-based file (optimizer, sampler, RNG states) must load with
    `torch.load(weights_only=True)`; that unpickler only builds tensors and plain containers, so a crafted
    `__reduce__` raises instead of running. `mmap=True` reads only the small pickle, not the tensor data.
    """
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise UnsafeCheckpointError(f"{path}: no model.safetensors; this project only loads weights from safetensors")
    rng_files = [f"random_states_{rank}.pkl" for rank in range(world_size)]
    missing_rng = [name for name in rng_files if not (path / name).is_file()]
    if missing_rng:
        raise FileNotFoundError(f"{path}: incomplete checkpoint, missing {', '.join(missing_rng)}")
    for file in sorted(path.iterdir()):
        if file.suffix in PICKLED_SUFFIXES:
            try:
                with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
                    torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # UnpicklingError for a forbidden global; RuntimeError for a non-torch file
                raise UnsafeCheckpointError(
                    f"{file}: refused to load: it is not a plain tensor/number pickle ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:200]}). Only load checkpoints you wrote yourself."
                ) from None


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


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; its entries are still written by the rename
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync_path(path)
    _fsync_path(folder)


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike) -> None:
    """`Accelerator.load_state`, after `verify_checkpoint_files` has checked that no file can run code."""
    verify_checkpoint_files(path, accelerator.num_processes)
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})
