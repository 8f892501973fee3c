"""Fine-tune a causal LM: continued pretraining on plain text, or supervised fine-tuning on instruction/chat data.

    accelerate launch recipes/finetune_causal.py        # continue pretraining outputs/pretrain on the embedded corpus
    accelerate launch recipes/finetune_causal.py --config recipes/configs/finetune_causal_tiny.yaml      # seconds
    accelerate launch recipes/finetune_causal.py --config recipes/configs/finetune_causal_gsm8k.yaml     # SFT
    accelerate launch recipes/finetune_causal.py --config recipes/configs/finetune_causal_gsm8k_lora.yaml
    accelerate launch recipes/finetune_causal.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct \\
        --data_files train=chats.jsonl --packing true --use_lora true --output_dir outputs/my-sft

Data with a `messages` column (lists of {role, content}) or `prompt`/`response` columns is chat data: rendered with
the checkpoint's chat template (a built-in one is installed when it has none), loss on assistant tokens only. Any other
data is plain text, packed into blocks as in pretraining.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llm_recipes.config import DataConfig, ModelConfig, TrainConfig, parse_config  # noqa: E402
from llm_recipes.generation import sample_completions  # noqa: E402
from llm_recipes.lora import LoraConfigArgs, apply_lora  # noqa: E402
from llm_recipes.modeling import count_parameters  # noqa: E402
from llm_recipes.outputs import prepare_output_dir  # noqa: E402
from llm_recipes.reporting import finish_run, save_fine_tuned  # noqa: E402
from llm_recipes.tasks.causal import (  # noqa: E402
    causal_lm_task,
    data_fingerprint,
    language_report,
    packed_causal_datasets,
    sample_prompts_from,
)
from llm_recipes.tasks.sft import (  # noqa: E402
    SFTConfig,
    apply_causal_lora,
    chat_datasets,
    check_packing_isolation,
    ensure_stops_at_end_of_text,
    evaluate_before_training,
    evaluation_conversations,
    generate_answers,
    load_causal_checkpoint,
    load_finetuning_data,
    prepare_chat_template,
    sft_task,
)
from llm_recipes.training import build_accelerator, train  # noqa: E402

CONFIG_TYPES = (DataConfig, ModelConfig, SFTConfig, LoraConfigArgs, TrainConfig)
DEFAULT_RECIPE = Path(__file__).parent / "configs" / "finetune_causal_cpu.yaml"


def main(argv: Sequence[str] | None = None) -> dict:
    configs = parse_config(CONFIG_TYPES, argv, default_config=DEFAULT_RECIPE)
    data_cfg, model_cfg, sft_cfg, lora_cfg, train_cfg = configs
    accelerator = build_accelerator(train_cfg)
    output_dir = prepare_output_dir(train_cfg, accelerator)

    with accelerator.main_process_first():
        data_format, raw = load_finetuning_data(data_cfg, sft_cfg, train_cfg.seed)
    model, tokenizer = load_causal_checkpoint(model_cfg)
    chat = data_format != "text"
    results: dict = {"data_format": data_format}
    if chat:
        new_token_ids = prepare_chat_template(tokenizer, model, sft_cfg.chat_template)
        with accelerator.main_process_first():
            datasets, data_report = chat_datasets(raw, tokenizer, data_format, sft_cfg, data_cfg)
        results.update(data_report, added_tokens=tokenizer.convert_ids_to_tokens(new_token_ids))
        conversations = evaluation_conversations(raw["validation"], data_format, sft_cfg, train_cfg.num_samples)
        if sft_cfg.packing:
            check_packing_isolation(model, len(tokenizer))
    else:
        new_token_ids = []
        datasets = packed_causal_datasets(raw, tokenizer, data_cfg, accelerator)
        prompts = sample_prompts_from(raw["validation"], data_cfg.text_column, train_cfg.num_samples)
    ensure_stops_at_end_of_text(model, tokenizer, data_cfg.block_size)
    if lora_cfg.use_lora:
        model = apply_causal_lora(model, lora_cfg, new_token_ids) if chat else apply_lora(model, lora_cfg, "CAUSAL_LM")
    accelerator.print(
        f"Model: {count_parameters(model) / 1e6:.2f}M parameters, {count_parameters(model, True) / 1e6:.2f}M "
        f"trainable | data: {data_format}{' (packed)' if chat and sft_cfg.packing else ''}"
    )

    fingerprint = data_fingerprint(
        raw["train"], tokenizer, data_format, data_cfg.block_size, sft_cfg.packing, tokenizer.chat_template
    )
    if chat:
        task = sft_task(
            model, tokenizer, datasets, sft_cfg.packing, data_cfg.block_size, conversations,
            train_cfg.sample_max_new_tokens, fingerprint,
        )  # fmt: skip
    else:
        task = causal_lm_task(model, tokenizer, datasets, prompts, train_cfg.sample_max_new_tokens, fingerprint)
    if sft_cfg.eval_before_training and not train_cfg.resume_from_checkpoint:
        before = evaluate_before_training(task, train_cfg, accelerator)
        results.update({f"validation_{k}_before_training": v for k, v in before.items() if k != "tokens"})
    result = train(task, train_cfg, accelerator)

    trained = result.extras["model"]
    results.update(save_fine_tuned(accelerator, result, tokenizer, output_dir, lora_cfg.merge_lora))
    if not chat:
        results.update(language_report(tokenizer, raw, datasets, len(tokenizer), data_cfg.text_column))
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(trained)
        if chat:
            results["samples"] = generate_answers(unwrapped, tokenizer, conversations, train_cfg.sample_max_new_tokens)
        else:
            results["samples"] = sample_completions(
                unwrapped, tokenizer, prompts, train_cfg.sample_max_new_tokens, train_cfg.seed
            )
    card = {
        "model_name": output_dir.name,
        "pipeline_tag": "text-generation",
        "task_name": "Supervised fine-tuning (chat)" if chat else "Continued pretraining",
        "base_model": model_cfg.model_name_or_path,
        "datasets": [data_cfg.dataset_name] if data_cfg.dataset_name else None,
        "dataset_fingerprint": task.data_fingerprint,
    }
    return finish_run(accelerator, result, results, train_cfg, configs, card)


if __name__ == "__main__":
    main()
