"""Merge a saved LoRA adapter into its base model and export a plain model that loads without PEFT.

    python recipes/merge_lora.py --adapter_dir outputs/classification-sst2-lora          # -> <adapter_dir>/merged
    python recipes/merge_lora.py --adapter_dir outputs/my-adapter --output_dir outputs/my-merged \\
        --base_model_name_or_path path/to/base      # when the base moved since training
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llm_recipes.config import parse_config  # noqa: E402
from llm_recipes.lora import MergeLoraArgs, merge_adapter  # noqa: E402

CONFIG_TYPES = (MergeLoraArgs,)


def main(argv: Sequence[str] | None = None) -> dict:
    (args,) = parse_config(CONFIG_TYPES, argv)
    merged = merge_adapter(args.adapter_dir, args.output_dir, args.base_model_name_or_path)
    print(f"Merged model written to {merged}")
    return {"merged_dir": str(merged)}


if __name__ == "__main__":
    main()
