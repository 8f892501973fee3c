"""Masked-LM training: adapt an encoder (BERT, RoBERTa, ...) to domain text, or pretrain a small one from scratch.

    accelerate launch recipes/finetune_mlm.py        # offline: a ~6M BERT-style encoder from scratch, embedded corpus
    accelerate launch recipes/finetune_mlm.py --config recipes/configs/finetune_mlm_tiny.yaml           # seconds
    accelerate launch recipes/finetune_mlm.py --config recipes/configs/finetune_mlm_minilm.yaml   # a real encoder
    accelerate launch recipes/finetune_mlm.py --model_name_or_path bert-base-uncased --data_files my_texts/ \\
        --whole_word_mask true --output_dir outputs/bert-domain

Metrics on fixed (seeded) evaluation masks: masked-LM loss, perplexity and masked-token accuracy.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llm_recipes.config import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, parse_config  # noqa: E402
from llm_recipes.data.sources import load_raw_datasets  # noqa: E402
from llm_recipes.lora import LoraConfigArgs, apply_lora  # noqa: E402
from llm_recipes.modeling import count_parameters  # noqa: E402
from llm_recipes.outputs import prepare_output_dir  # noqa: E402
from llm_recipes.reporting import finish_run, save_fine_tuned  # noqa: E402
from llm_recipes.tasks.causal import data_fingerprint  # noqa: E402
from llm_recipes.tasks.mlm import (  # noqa: E402
    MLMConfig,
    build_masked_lm,
    mlm_datasets,
    mlm_task,
    obtain_encoder_tokenizer,
    usable_block_size,
)
from llm_recipes.tasks.sft import evaluate_before_training  # noqa: E402
from llm_recipes.training import build_accelerator, train  # noqa: E402

CONFIG_TYPES = (DataConfig, TokenizerConfig, ModelConfig, MLMConfig, LoraConfigArgs, TrainConfig)
DEFAULT_RECIPE = Path(__file__).parent / "configs" / "finetune_mlm_cpu.yaml"


def main(argv: Sequence[str] | None = None) -> dict:
    configs = parse_config(CONFIG_TYPES, argv, default_config=DEFAULT_RECIPE)
    data_cfg, tok_cfg, model_cfg, mlm_cfg, lora_cfg, train_cfg = configs
    accelerator = build_accelerator(train_cfg)
    output_dir = prepare_output_dir(train_cfg, accelerator)

    with accelerator.main_process_first():
        raw = load_raw_datasets(data_cfg, seed=train_cfg.seed)
    tokenizer = obtain_encoder_tokenizer(raw, data_cfg, tok_cfg, model_cfg, accelerator, output_dir)
    model, new_weights = build_masked_lm(model_cfg, tokenizer, data_cfg.block_size)
    block_size = usable_block_size(tokenizer, model, data_cfg.block_size)
    with accelerator.main_process_first():
        datasets = mlm_datasets(raw, tokenizer, data_cfg, mlm_cfg, block_size)
    if lora_cfg.use_lora:
        model = apply_lora(model, lora_cfg, task_type=None)  # the MLM head trains only through its adapters
    accelerator.print(
        f"Model: {count_parameters(model) / 1e6:.2f}M parameters, {count_parameters(model, True) / 1e6:.2f}M "
        f"trainable | {'from scratch' if not model_cfg.model_name_or_path else model_cfg.model_name_or_path}"
    )

    fingerprint = data_fingerprint(
        raw["train"], tokenizer, block_size, mlm_cfg.mlm_probability, mlm_cfg.whole_word_mask
    )
    task = mlm_task(model, tokenizer, datasets, mlm_cfg, block_size, fingerprint)
    results: dict = {}
    if mlm_cfg.eval_before_training and not train_cfg.resume_from_checkpoint:
        before = evaluate_before_training(task, train_cfg, accelerator)
        results.update({f"validation_{k}_before_training": v for k, v in before.items() if k != "masked_tokens"})
    result = train(task, train_cfg, accelerator)

    results.update(
        save_fine_tuned(accelerator, result, tokenizer, output_dir, lora_cfg.merge_lora),
        newly_initialised_weights=new_weights,
        block_size=block_size,
        train_blocks=len(datasets["train"]),
    )
    card = {
        "model_name": output_dir.name,
        "pipeline_tag": "fill-mask",
        "task_name": "Masked language modelling",
        "base_model": model_cfg.model_name_or_path,
        "datasets": [data_cfg.dataset_name] if data_cfg.dataset_name else None,
        "dataset_fingerprint": task.data_fingerprint,
    }
    return finish_run(accelerator, result, results, train_cfg, configs, card)


if __name__ == "__main__":
    main()
