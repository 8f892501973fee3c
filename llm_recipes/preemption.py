"""Stop cleanly when the machine is taken away: SIGTERM/SIGINT set a flag, every process agrees at a step boundary.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM and allow a grace period before SIGKILL; a user presses
Ctrl-C (SIGINT). The handler only sets a flag. At each optimizer step the loop all-reduces that flag together with
the non-finite-update flag (one small collective per optimizer step), so every process stops after the same step,
saves one checkpoint together and exits with `EXIT_PREEMPTED`. A second signal restores the default behaviour:
pressing Ctrl-C twice, or a second SIGTERM, ends the process at once.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from types import FrameType

import torch
from accelerate import Accelerator

# os.EX_TEMPFAIL ("temporary failure; the user is invited to retry"): the run saved a checkpoint and stopped because
# it was asked to. Rerun the same command with `--resume_from_checkpoint latest` to continue.
EXIT_PREEMPTED = 75
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingPreempted(SystemExit):
    """Raised by the loop after the preemption checkpoint is on disk; exits the interpreter with EXIT_PREEMPTED."""

    def __init__(self, step: int, signal_name: str, checkpoint: str) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint

    def __str__(self) -> str:
        return (
            f"{self.signal_name} received: stopped after step {self.step} and saved {self.checkpoint}; resume with "
            f"--resume_from_checkpoint latest (exit code {EXIT_PREEMPTED})"
        )


class PreemptionHandler:
    """Installs the flag-setting handlers for the duration of a `with` block and restores the previous ones after."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal acts at once

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals to the main thread
            for signum in HANDLED_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


@dataclass
class StepFlags:
    nonfinite: bool  # some process saw a NaN/inf loss or gradient norm in this optimizer step
    stop_requested: bool  # some process received SIGTERM/SIGINT


def agree_on_step(accelerator: Accelerator, nonfinite: torch.Tensor, stop_requested: bool) -> StepFlags:
    """One all-reduce (and one host sync) per optimizer step, so every process takes the same decisions."""
    flags = torch.stack([nonfinite.float().reshape(()), torch.tensor(float(stop_requested), device=nonfinite.device)])
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, "sum")
    nonfinite_count, stop_count = flags.tolist()
    return StepFlags(nonfinite=nonfinite_count > 0, stop_requested=stop_count > 0)
