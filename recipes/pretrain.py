"""Pretrain a small Llama-style causal LM from scratch: raw text -> BPE tokenizer -> packed blocks -> trained model.

    accelerate launch recipes/pretrain.py                                   # CPU default, offline, ~8 minutes
    accelerate launch recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml       # seconds (smoke test)
    accelerate launch recipes/pretrain.py --data_files my_corpus/ --output_dir outputs/mine
    accelerate launch --config_file accelerate_configs/multi_gpu_ddp.yaml recipes/pretrain.py \\
        --config recipes/configs/pretrain_125m.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llm_recipes.config import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, parse_config  # noqa: E402
from llm_recipes.data.sources import load_raw_datasets  # noqa: E402
from llm_recipes.generation import default_generation_config, sample_completions  # noqa: E402
from llm_recipes.modeling import build_causal_lm, causal_lm_config, count_parameters  # noqa: E402
from llm_recipes.outputs import prepare_output_dir, save_pretrained_atomic  # noqa: E402
from llm_recipes.reporting import finish_run  # noqa: E402
from llm_recipes.tasks.causal import (  # noqa: E402
    causal_lm_task,
    data_fingerprint,
    language_report,
    obtain_tokenizer,
    packed_causal_datasets,
    sample_prompts_from,
)
from llm_recipes.training import build_accelerator, train  # noqa: E402

CONFIG_TYPES = (DataConfig, TokenizerConfig, ModelConfig, TrainConfig)
DEFAULT_RECIPE = Path(__file__).parent / "configs" / "pretrain_cpu.yaml"


def main(argv: Sequence[str] | None = None) -> dict:
    data_cfg, tok_cfg, model_cfg, train_cfg = parse_config(CONFIG_TYPES, argv, default_config=DEFAULT_RECIPE)
    accelerator = build_accelerator(train_cfg)
    output_dir = prepare_output_dir(train_cfg, accelerator)

    with accelerator.main_process_first():
        raw = load_raw_datasets(data_cfg, seed=train_cfg.seed)
    resuming = bool(train_cfg.resume_from_checkpoint)
    tokenizer = obtain_tokenizer(raw, data_cfg, tok_cfg, accelerator, output_dir, resuming)
    packed = packed_causal_datasets(raw, tokenizer, data_cfg, accelerator)

    special_ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
    config = causal_lm_config(model_cfg, len(tokenizer), data_cfg.block_size, special_ids)
    model = build_causal_lm(config, model_cfg.attn_implementation)
    model.generation_config = default_generation_config(tokenizer, train_cfg.sample_max_new_tokens)
    accelerator.print(f"Model: {count_parameters(model) / 1e6:.2f}M parameters ({model_cfg.model_preset} preset)")

    prompts = sample_prompts_from(raw["validation"], data_cfg.text_column, train_cfg.num_samples)
    fingerprint = data_fingerprint(raw["train"], tokenizer, data_cfg.block_size)
    task = causal_lm_task(model, tokenizer, packed, prompts, train_cfg.sample_max_new_tokens, fingerprint)
    result = train(task, train_cfg, accelerator)

    trained = result.extras["model"]
    save_pretrained_atomic(accelerator, trained, tokenizer, output_dir)
    results = {
        **{f"{split}_{k}": v for split, metrics in result.metrics.items() for k, v in metrics.items()},
        **language_report(tokenizer, raw, packed, len(tokenizer), data_cfg.text_column),
        "num_parameters": count_parameters(trained),
        "train_blocks": len(packed["train"]) if hasattr(packed["train"], "__len__") else None,
    }
    if accelerator.is_main_process:
        results["samples"] = sample_completions(
            accelerator.unwrap_model(trained), tokenizer, prompts, train_cfg.sample_max_new_tokens, train_cfg.seed
        )
    card = {
        "model_name": output_dir.name,
        "pipeline_tag": "text-generation",
        "task_name": "Causal language modelling",
        "datasets": [data_cfg.dataset_name] if data_cfg.dataset_name else None,
        "dataset_fingerprint": task.data_fingerprint,
        "dataset_label": data_cfg.dataset_name or ("local files" if data_cfg.data_files else
                                                   "the embedded Python documentation corpus"),
        "num_parameters": results["num_parameters"],
    }
    return finish_run(accelerator, result, results, train_cfg, (data_cfg, tok_cfg, model_cfg, train_cfg), card)


if __name__ == "__main__":
    main()
