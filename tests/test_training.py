"""The shared loop: learning, exact resume, and save/load fidelity, on tiny models in seconds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_PRETRAIN, load_recipe
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

pretrain = load_recipe("pretrain")


def run_pretrain(corpus: Path, output_dir: Path, *extra: str) -> dict:
    return pretrain.main(["--config", str(Path(pretrain.__file__).parent / "configs" / "pretrain_tiny.yaml"),
                          "--data_files", str(corpus), "--output_dir", str(output_dir), *TINY_PRETRAIN, *extra])


def train_losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "log_history.json").read_text())
    return {record["step"]: record["loss"] for record in history if "loss" in record}


def test_loss_goes_down_and_beats_the_unigram_baseline(text_corpus: Path, tmp_path: Path) -> None:
    results = run_pretrain(text_corpus, tmp_path / "run", "--max_steps", "40", "--eval_steps", "20")
    losses = train_losses(tmp_path / "run")
    first, last = losses[1], sum(losses[s] for s in (38, 39, 40)) / 3
    assert last < first - 1.0, losses
    assert results["validation_perplexity"] < results["validation_unigram_perplexity"]
    assert results["tokens_seen"] == 40 * 4 * 32


def test_resume_reproduces_the_uninterrupted_run(text_corpus: Path, tmp_path: Path) -> None:
    # 2-step accumulation groups (11 micro-batches an epoch, so each epoch ends on a short group), a checkpoint
    # mid-epoch at step 4, and epoch boundaries after steps 6 and 12.
    args = ["--max_steps", "14", "--gradient_accumulation_steps", "2", "--eval_steps", "2", "--save_steps", "4",
            "--save_total_limit", "10", "--max_train_documents", "12", "--learning_rate", "1e-2"]
    full = tmp_path / "full"
    run_pretrain(text_corpus, full, *args)
    micro_batches_per_epoch = json.loads((full / "all_results.json").read_text())["train_blocks"] / 4
    assert micro_batches_per_epoch == 11, "the data no longer gives the epoch layout this test is built on"

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-4", resumed / "checkpoints" / "checkpoint-4")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(full / name, resumed / name)
    run_pretrain(text_corpus, resumed, *args, "--resume_from_checkpoint", "latest")

    expected, got = train_losses(full), train_losses(resumed)
    assert sorted(got) == list(range(1, 15))
    for step in range(5, 15):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), (step, got[step], expected[step])
    final_full, final_resumed = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, tensor in final_full.items():
        torch.testing.assert_close(final_resumed[name], tensor, atol=1e-6, rtol=0)


def test_saved_model_reloads_with_identical_logits_and_generates(text_corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    run_pretrain(text_corpus, output, "--max_steps", "3")
    # The checkpoint of the last step holds the weights the loop ended with; the export must equal them.
    last_checkpoint = load_file(output / "checkpoints" / "checkpoint-3" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    for name, tensor in last_checkpoint.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    inputs = tokenizer("Every module has", return_tensors="pt")
    again = AutoModelForCausalLM.from_pretrained(output)
    assert torch.equal(model(**inputs).logits, again(**inputs).logits)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 5


@pytest.mark.parametrize(("cpu_threads", "local_processes", "share"), [(0, "1", 1.0), (0, "2", 0.5), (1, "1", None)])
def test_cpu_threads_use_the_cores_accelerate_launch_leaves_idle(
    cpu_threads: int, local_processes: str, share: float | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`accelerate launch` without a config pins OMP_NUM_THREADS=1; the loop gives each process its share of cores."""
    from llm_recipes.config import TrainConfig
    from llm_recipes.training import build_accelerator

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs at least 2 usable cores to tell the settings apart")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # what OMP_NUM_THREADS=1 leaves
    try:
        build_accelerator(TrainConfig(output_dir=str(tmp_path), cpu_threads=cpu_threads, report_to="none"))
        assert torch.get_num_threads() == (int(cores * share) if share else cpu_threads)
    finally:
        torch.set_num_threads(previous)


def test_gradient_checkpointing_changes_memory_not_the_losses(text_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """Recomputed activations give the same updates; the flag really turns checkpointing on in the model."""
    from llm_recipes import training

    enabled = []
    original = training.enable_gradient_checkpointing
    monkeypatch.setattr(training, "enable_gradient_checkpointing", lambda m: (original(m), enabled.append(m))[0])
    args = ["--max_steps", "6", "--eval_steps", "6", "--max_train_documents", "12"]
    run_pretrain(text_corpus, tmp_path / "plain", *args)
    run_pretrain(text_corpus, tmp_path / "checkpointed", *args, "--gradient_checkpointing", "true")
    assert len(enabled) == 1 and enabled[0].is_activation_checkpointing
    plain, checkpointed = train_losses(tmp_path / "plain"), train_losses(tmp_path / "checkpointed")
    assert plain.keys() == checkpointed.keys()
    for step, loss in plain.items():
        assert checkpointed[step] == pytest.approx(loss, abs=1e-5), step
