"""Shared fixtures: tiny corpora made on the spot, the recipes as importable modules, the optional real data."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "no")  # fp32 everywhere in tests: exact comparisons

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A function returns a value to its caller.",
    "Lists keep their items in order; sets do not.",
    "Every module has a name and a docstring.",
    "Errors should never pass silently unless explicitly silenced.",
    "Readability counts, and simple is better than complex.",
]


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (the recipes folder is not a package)."""
    path = ROOT / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A folder of small .txt documents (paragraphs separated by blank lines)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for index in range(4):
        paragraphs = [" ".join(SENTENCES[(index + j) % len(SENTENCES)] for j in range(k + 3)) for k in range(12)]
        (folder / f"part{index}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not on this machine")
    return SHARED_DATA


TINY_PRETRAIN = [
    "--model_preset", "tiny", "--vocab_size", "400", "--block_size", "32", "--per_device_train_batch_size", "4",
    "--eval_steps", "4", "--logging_steps", "1", "--num_samples", "1", "--sample_max_new_tokens", "8",
    "--learning_rate", "3e-3", "--warmup_ratio", "0",
]


# --- several processes: `accelerate launch` with accelerate_configs/multi_cpu.yaml (2 CPU processes through MPI) ---

MULTI_CPU_CONFIG = ROOT / "accelerate_configs" / "multi_cpu.yaml"
requires_mpirun = pytest.mark.skipif(
    shutil.which("mpirun") is None or not MULTI_CPU_CONFIG.is_file(),
    reason="2 CPU processes under accelerate launch need MPI (apt-get install openmpi-bin) and multi_cpu.yaml",
)


def free_port() -> int:
    """A free TCP port for the rendezvous of process 0 (multi_cpu.yaml cannot pick one itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child run: this checkout importable, no GPU, Open MPI allowed to run as root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", **extra}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (code {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def launch_two_cpu_processes(script: Path, args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """`accelerate launch --config_file multi_cpu.yaml script args` in its own session (so a test can signal or kill
    the launcher, mpirun and both ranks at once); stdout and stderr go to `log`."""
    command = [
        "accelerate", "launch", "--config_file", str(MULTI_CPU_CONFIG), "--main_process_port", str(free_port()),
        str(script), *args,
    ]  # fmt: skip
    with open(log, "wb") as handle:
        return subprocess.Popen(
            command, cwd=ROOT, env=child_env(**env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_group_exit(process: subprocess.Popen, timeout: float) -> None:
    """The launcher, mpirun and the ranks have all exited."""
    process.wait(timeout=timeout)

    def group_gone() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(group_gone, timeout, "mpirun to exit")
