"""Run one recipe as one rank under `accelerate launch`; the ranks other than 0 leave a trace of every file they touch.

    python tests/distributed_child.py RECIPE [recipe arguments...]     # RECIPE: pretrain, finetune_classification

Test-only (the recipes know nothing of it). On the ranks other than 0, before the recipe starts:

    DISTRIBUTED_CHILD_WRITES   folder: every Python-level write, rename, creation or removal under the run's
                               --output_dir is appended to rank<N>.log there (a Python audit hook), even when the
                               main process later overwrites the file
    DISTRIBUTED_CHILD_GID      run as root: switch to this effective group id, so each file the rank creates is owned
                               by it, including files written by native code (safetensors, torch.save) that no Python
                               hook sees
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")  # as Accelerate reads them
CHANGES = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree", "shutil.move"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def process_rank() -> int:
    return next((int(os.environ[name]) for name in RANK_VARIABLES if name in os.environ), 0)


def option(args: list[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def record_changes_under(folder: str, log_path: Path) -> None:
    """Append `event path` to `log_path` for each write, rename, creation or removal under `folder`."""
    prefix = os.path.abspath(folder) + os.sep
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # before the hook: not recorded

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            paths = [path] if writes else []
        elif event == "os.mkdir" and os.path.isdir(args[0]):
            return  # os.makedirs(exist_ok=True) of a folder the main process made: no change
        elif event in CHANGES:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            if isinstance(path, int):
                continue
            absolute = os.path.abspath(os.fsdecode(path))
            if absolute.startswith(prefix):
                os.write(descriptor, f"{event} {absolute[len(prefix) :]}\n".encode())

    sys.addaudithook(hook)


def main() -> None:
    recipe, args = sys.argv[1], sys.argv[2:]
    rank = process_rank()
    writes, output_dir = os.environ.get("DISTRIBUTED_CHILD_WRITES"), option(args, "--output_dir")
    if rank != 0 and writes and output_dir:
        record_changes_under(output_dir, Path(writes) / f"rank{rank}.log")
    marker_gid = os.environ.get("DISTRIBUTED_CHILD_GID")
    if rank != 0 and marker_gid and os.geteuid() == 0:
        os.setegid(int(marker_gid))
    spec = importlib.util.spec_from_file_location(f"recipe_{recipe}", ROOT / "recipes" / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args)


if __name__ == "__main__":
    main()
