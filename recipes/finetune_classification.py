"""Fine-tune a checkpoint for sequence classification: single-label, multi-label or regression, full or LoRA.

    accelerate launch recipes/finetune_classification.py    # offline: all-MiniLM-L6-v2 on stdlib docstrings, ~4 min
    accelerate launch recipes/finetune_classification.py --config recipes/configs/finetune_classification_sst2.yaml
    accelerate launch recipes/finetune_classification.py \
        --config recipes/configs/finetune_classification_sst2_lora.yaml
    accelerate launch recipes/finetune_classification.py --data_files train=train.csv validation=dev.csv \\
        --text_column sentence --label_column label --model_name_or_path bert-base-uncased --output_dir outputs/mine
    python recipes/finetune_classification.py --do_train false --model_name_or_path outputs/mine \\
        --predict_file unlabeled.txt --sample_by line --output_dir outputs/mine      # predictions only
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from peft import TaskType  # noqa: E402

from llm_recipes.config import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, parse_config  # noqa: E402
from llm_recipes.data.tokenizer import load_tokenizer  # noqa: E402
from llm_recipes.lora import LoraConfigArgs, apply_lora  # noqa: E402
from llm_recipes.modeling import count_parameters  # noqa: E402
from llm_recipes.outputs import prepare_output_dir  # noqa: E402
from llm_recipes.reporting import finish_run, save_fine_tuned  # noqa: E402
from llm_recipes.tasks.causal import data_fingerprint  # noqa: E402
from llm_recipes.tasks.classification import (  # noqa: E402
    ClassificationConfig,
    build_classifier,
    build_label_space,
    classification_task,
    default_encoder_path,
    load_classification_data,
    load_trained_classifier,
    load_unlabeled,
    max_sequence_length,
    predict,
    tokenize_for_classification,
    write_predictions,
)
from llm_recipes.training import build_accelerator, train  # noqa: E402

CONFIG_TYPES = (DataConfig, ClassificationConfig, TokenizerConfig, ModelConfig, LoraConfigArgs, TrainConfig)
DEFAULT_RECIPE = Path(__file__).parent / "configs" / "finetune_classification_cpu.yaml"


def main(argv: Sequence[str] | None = None) -> dict:
    configs = parse_config(CONFIG_TYPES, argv, default_config=DEFAULT_RECIPE)
    data_cfg, cls_cfg, tok_cfg, model_cfg, lora_cfg, train_cfg = configs
    if not model_cfg.model_name_or_path and not model_cfg.model_config:
        model_cfg.model_name_or_path = default_encoder_path()
    if not cls_cfg.do_train:
        return predict_only(data_cfg, cls_cfg, tok_cfg, model_cfg, train_cfg)

    accelerator = build_accelerator(train_cfg)
    output_dir = prepare_output_dir(train_cfg, accelerator)
    with accelerator.main_process_first():
        raw = load_classification_data(data_cfg, cls_cfg, train_cfg.seed)
    labels = build_label_space(raw, cls_cfg)
    tokenizer = load_tokenizer(tok_cfg.tokenizer_name_or_path or model_cfg.model_name_or_path)
    model = build_classifier(
        model_cfg.model_name_or_path,
        labels,
        tokenizer,
        model_cfg.model_config,
        model_cfg.attn_implementation,
        model_cfg.trust_remote_code,
    )
    max_length = max_sequence_length(tokenizer, model.config, data_cfg.block_size)
    with accelerator.main_process_first():
        tokenized = tokenize_for_classification(
            raw,
            tokenizer,
            data_cfg.text_column,
            cls_cfg.text_pair_column,
            max_length,
            labels,
            cls_cfg.label_column,
            data_cfg.preprocessing_num_workers,
        )
    if lora_cfg.use_lora:
        model = apply_lora(model, lora_cfg, TaskType.SEQ_CLS)  # the head trains in full (modules_to_save)
    accelerator.print(
        f"Model: {count_parameters(model) / 1e6:.2f}M parameters, {count_parameters(model, True) / 1e6:.2f}M "
        f"trainable | {labels.problem_type}, {labels.num_labels} label(s) | max length {max_length}"
    )
    fingerprint = data_fingerprint(raw["train"], tokenizer, max_length, labels.names, cls_cfg.text_pair_column)
    task = classification_task(
        model,
        tokenized,
        tokenizer,
        labels,
        cls_cfg,
        train_cfg.per_device_train_batch_size * accelerator.num_processes,  # grouped per global batch: see there
        train_cfg.seed,
        fingerprint,
    )
    result = train(task, train_cfg, accelerator)

    trained = result.extras["model"]
    results = {
        **save_fine_tuned(accelerator, result, tokenizer, output_dir, lora_cfg.merge_lora),
        "problem_type": labels.problem_type,
        "label_names": labels.names,
        "train_examples": len(tokenized["train"]),
    }
    if cls_cfg.predict_file and accelerator.is_main_process:
        records = predict(
            accelerator.unwrap_model(trained),
            tokenizer,
            load_unlabeled(cls_cfg.predict_file, data_cfg, cls_cfg),
            data_cfg.text_column,
            cls_cfg.text_pair_column,
            max_length,
            train_cfg.per_device_eval_batch_size,
            cls_cfg.threshold,
        )
        results["predictions_file"] = str(
            write_predictions(records, cls_cfg.predictions_file or output_dir / "predictions.jsonl")
        )
    card = {
        "model_name": output_dir.name,
        "pipeline_tag": "text-classification",
        "task_name": "Text classification" + (" (LoRA adapter)" if lora_cfg.use_lora else ""),
        "datasets": [data_cfg.dataset_name] if data_cfg.dataset_name else None,
        "dataset_fingerprint": task.data_fingerprint,
    }
    return finish_run(accelerator, result, results, train_cfg, configs, card)


def predict_only(data_cfg, cls_cfg, tok_cfg, model_cfg, train_cfg) -> dict:
    """Label --predict_file with an already fine-tuned classifier (full model or LoRA adapter folder)."""
    model = load_trained_classifier(model_cfg.model_name_or_path)
    tokenizer = load_tokenizer(tok_cfg.tokenizer_name_or_path or model_cfg.model_name_or_path)
    max_length = max_sequence_length(tokenizer, model.config, data_cfg.block_size)
    records = predict(
        model,
        tokenizer,
        load_unlabeled(cls_cfg.predict_file, data_cfg, cls_cfg),
        data_cfg.text_column,
        cls_cfg.text_pair_column,
        max_length,
        train_cfg.per_device_eval_batch_size,
        cls_cfg.threshold,
    )
    path = write_predictions(records, cls_cfg.predictions_file or Path(train_cfg.output_dir) / "predictions.jsonl")
    print(f"Wrote {len(records)} predictions to {path}")
    return {"predictions_file": str(path), "num_predictions": len(records)}


if __name__ == "__main__":
    main()
