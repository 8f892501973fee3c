"""Publish a finished output folder (a full model or a LoRA adapter) to the Hugging Face Hub.

    python recipes/push_to_hub.py --folder outputs/pretrain --hub_model_id your-name/tiny-llama
    python recipes/push_to_hub.py --folder outputs/lora --hub_model_id your-name/tiny-lora --hub_private true

The token comes from HF_TOKEN or `hf auth login`; it is never a flag. Intermediate checkpoints and optimizer states
stay local unless --include_checkpoints true; tracker logs and temporary files never leave the machine.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transformers import HfArgumentParser  # noqa: E402

from llm_recipes.hub import PushConfig, push_to_hub  # noqa: E402


def main(argv: Sequence[str] | None = None) -> str:
    (cfg,) = HfArgumentParser(PushConfig).parse_args_into_dataclasses(args=argv)
    url = push_to_hub(
        cfg.folder,
        cfg.hub_model_id,
        private=cfg.hub_private,
        include_checkpoints=cfg.include_checkpoints,
        commit_message=cfg.commit_message,
    )
    print(f"Pushed {cfg.folder} to {url}")
    return url


if __name__ == "__main__":
    main()
