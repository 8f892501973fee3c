"""Run recipes/pretrain.py (one process, or one rank under `accelerate launch`) with hooks that let a test kill or
signal it at an exact point. Test-only: the shipped recipe and configs know nothing of these variables.

    RELIABILITY_MARKER             file written (with the process id) when a pause below is reached
    RELIABILITY_PAUSE_AT_MICRO     before training micro-batch N (1-based, counted in this process): wait to be killed
    RELIABILITY_PAUSE_IN_SAVE      inside the save of checkpoint-N, after Accelerate wrote the weights, optimizer and
                                   RNG files and before trainer_state.json: wait to be killed
    RELIABILITY_STEP_DELAY         sleep this many seconds before each training micro-batch (a run slow enough to
                                   signal mid-way; sleeping changes no number)
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import accelerate
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def wait_to_be_killed(what: str) -> None:
    Path(os.environ["RELIABILITY_MARKER"]).write_text(f"{os.getpid()} {what}\n", encoding="utf-8")
    while True:
        time.sleep(0.1)


def install_hooks() -> None:
    pause_at_micro = int(os.environ.get("RELIABILITY_PAUSE_AT_MICRO", "0"))
    pause_in_save = os.environ.get("RELIABILITY_PAUSE_IN_SAVE")
    delay = float(os.environ.get("RELIABILITY_STEP_DELAY", "0"))
    forward, save_state = LlamaForCausalLM.forward, accelerate.Accelerator.save_state
    calls = {"train": 0}

    def hooked_forward(self, *args, **kwargs):
        if self.training:
            calls["train"] += 1
            if calls["train"] == pause_at_micro:
                wait_to_be_killed(f"before micro-batch {pause_at_micro}")
            if delay:
                time.sleep(delay)
        return forward(self, *args, **kwargs)

    def hooked_save_state(self, output_dir=None, **kwargs):
        result = save_state(self, output_dir, **kwargs)
        if pause_in_save and Path(output_dir).name == f".tmp-checkpoint-{pause_in_save}":
            wait_to_be_killed(f"inside the save of checkpoint-{pause_in_save}")
        return result

    LlamaForCausalLM.forward = hooked_forward
    accelerate.Accelerator.save_state = hooked_save_state


def main() -> None:
    install_hooks()
    spec = importlib.util.spec_from_file_location("recipe_pretrain", ROOT / "recipes" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    pretrain.main(sys.argv[1:])


if __name__ == "__main__":
    main()
