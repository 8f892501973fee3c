"""Evaluate checkpoints on a dataset split, alone or side by side: causal LMs, masked LMs and classifiers.

    python recipes/evaluate_checkpoint.py --model outputs/pretrain --run_config outputs/pretrain --split test
    python recipes/evaluate_checkpoint.py --model outputs/pretrain --compare outputs/finetune-causal \\
        --data_files notes/ --split validation --output_file comparison.json
    accelerate launch recipes/evaluate_checkpoint.py --model outputs/pretrain --run_config outputs/pretrain \\
        --stride 128
    python recipes/evaluate_checkpoint.py --model outputs/finetune-mlm --run_config outputs/finetune-mlm
    python recipes/evaluate_checkpoint.py --model outputs/classification --run_config outputs/classification \\
        --split test
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llm_recipes.checkpoint_evaluation import (  # noqa: E402
    CONFIG_TYPES,
    evaluate_checkpoints,
    run_config_args,
)
from llm_recipes.config import parse_config  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_config(CONFIG_TYPES, argv)[0]
    return evaluate_checkpoints(*parse_config(CONFIG_TYPES, run_config_args(args.run_config, argv)))


if __name__ == "__main__":
    main()
