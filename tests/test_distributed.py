"""Data parallelism on CPU: the recipes under `accelerate launch` with 2 processes (accelerate_configs/multi_cpu.yaml).

What has to hold for a multi-process run to be trusted: it finishes and writes its outputs once; 2 processes with a
per-device batch of b train exactly like 1 process with a batch of 2b (same examples in every step, averaged
gradients); a resume continues the same run; evaluation counts every example once although the last batch is padded
to fill both processes; a checkpoint is not resumed under another number of processes.

Every run is tiny (a 0.1M-parameter Llama on 16-token blocks, a 2-layer BERT with hidden size 32) and every
multi-process launch is shared by several tests through module-scoped fixtures. Dropout is 0 everywhere (the tiny
Llama has none; the BERT is saved without it), so two runs differ only where the number of processes matters.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, launch_two_cpu_processes, load_recipe, requires_mpirun, wait_for_group_exit
from safetensors.torch import load_file
from tiny_checkpoints import WORDS, build_classifier, causal_tokenizer

from llm_recipes.training import ResumeMismatchError

pytestmark = requires_mpirun

CHILD = Path(__file__).with_name("distributed_child.py")
PROCESSES = 2
# Files a non-main rank creates get this group (see distributed_child.py); the test itself runs as another group.
MARKER_GID = 4242 if os.getegid() != 4242 else 4243
LAUNCH_TIMEOUT_S = 600

# Pretraining: every document is BLOCK - 1 words + end-of-text = exactly one packed block, so documents count blocks.
BLOCK = 16
LM_BATCH = 2  # per device; the 1-process reference uses PROCESSES * LM_BATCH
LM_EVAL_BATCH = 2
LM_DOCUMENTS = {"train": 12, "validation": 5, "test": 3}  # 12 blocks = 3 steps an epoch: 8 steps cross 2 epochs
LM_STEPS, LM_SAVE_STEPS = 8, 4

# Classification: separable sentiment from the tiny word tokenizer's vocabulary.
GOOD = "happy good sun fast new big".split()
BAD = "sad bad rain slow old small".split()
FILLER = "the a cat dog bird sat ran on in under mat tree house".split()
CLS_BATCH = 4
CLS_EVAL_BATCH = 4
CLS_EXAMPLES = {"train": 48, "validation": 33, "test": 21}  # 48 = 6 global batches of 8: no padded training batch
CLS_STEPS = 12  # 2 epochs


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """The in-process reference runs pin torch to 1 thread (--cpu_threads 1); later test modules get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@dataclass
class Runs:
    """One recipe trained twice on the same data: by 1 process with batch 2b and by 2 processes with batch b."""

    one: Path
    two: Path
    log: Path
    args: list[str]  # the 2-process run's recipe arguments (without --output_dir)
    eval_counts: dict[str, int]  # examples (classification) or scored tokens (pretraining) per evaluation split


def run_two_processes(recipe: str, args: list[str], log: Path) -> int:
    """Launch `recipe` on 2 CPU processes and wait for the launcher, mpirun and both ranks; the exit code.

    The second process records what it writes under the output folder in `log`'s folder (distributed_child.py)."""
    process = launch_two_cpu_processes(
        CHILD,
        [recipe, *args],
        log,
        DISTRIBUTED_CHILD_GID=str(MARKER_GID),
        DISTRIBUTED_CHILD_WRITES=str(log.parent),
        OMP_NUM_THREADS="1",
    )
    try:
        wait_for_group_exit(process, LAUNCH_TIMEOUT_S)
    except BaseException:  # a hang (or an interrupted test): take the launch's session down, both ranks included
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process.returncode


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "all_results.json").read_text())


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "log_history.json").read_text())


def train_records(run_dir: Path) -> dict[int, dict]:
    return {record["step"]: record for record in history(run_dir) if "loss" in record}


def eval_records(run_dir: Path) -> dict[int, dict]:
    return {record["step"]: record for record in history(run_dir) if "eval_validation_loss" in record}


def max_loss_difference(a: Path, b: Path, after_step: int = 0) -> float:
    losses_a, losses_b = train_records(a), train_records(b)
    assert losses_a.keys() == losses_b.keys(), "the runs logged different steps"
    return max(abs(losses_a[s]["loss"] - losses_b[s]["loss"]) for s in losses_a if s > after_step)


def max_weight_difference(a: Path, b: Path) -> float:
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    return max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a)


# ---------------------------------------------------------------------------------------------------------------------
# The shared runs


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm-data")
    tokenizer = causal_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    words = [word for word in WORDS if word.isalpha()]
    rng = random.Random(0)
    files = []
    for split, count in LM_DOCUMENTS.items():
        documents = [" ".join(rng.choice(words) for _ in range(BLOCK - 1)) for _ in range(count)]
        assert all(len(tokenizer(d, add_special_tokens=False)["input_ids"]) == BLOCK - 1 for d in documents)
        files.append(f"{split}={write_jsonl(root / f'{split}.jsonl', [{'text': d} for d in documents])}")
    return {"tokenizer": root / "tokenizer", "files": files}


def lm_args(lm_data: dict, per_device_batch: int) -> list[str]:
    return [
        "--config", str(ROOT / "recipes" / "configs" / "pretrain_tiny.yaml"), "--data_files", *lm_data["files"],
        "--tokenizer_name_or_path", str(lm_data["tokenizer"]), "--block_size", str(BLOCK),
        "--per_device_train_batch_size", str(per_device_batch), "--per_device_eval_batch_size", str(LM_EVAL_BATCH),
        "--max_steps", str(LM_STEPS), "--eval_steps", str(LM_SAVE_STEPS), "--save_steps", str(LM_SAVE_STEPS),
        "--save_total_limit", "10", "--logging_steps", "1", "--load_best_model_at_end", "false",
        "--warmup_ratio", "0", "--num_samples", "1", "--sample_max_new_tokens", "4", "--cpu_threads", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lm_runs(lm_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("pretrain")
    pretrain = load_recipe("pretrain")
    pretrain.main([*lm_args(lm_data, PROCESSES * LM_BATCH), "--output_dir", str(root / "one")])
    args = lm_args(lm_data, LM_BATCH)
    code = run_two_processes("pretrain", [*args, "--output_dir", str(root / "two")], root / "two.log")
    assert code == 0, (root / "two.log").read_text(errors="replace")[-4000:]
    scored = {split: LM_DOCUMENTS[split] * (BLOCK - 1) for split in ("validation", "test")}  # next-token targets
    return Runs(root / "one", root / "two", root / "two.log", args, scored)


@pytest.fixture(scope="module")
def classification_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("classification-data")
    model = build_classifier(root / "model", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    files = []
    for seed, (split, count) in enumerate(CLS_EXAMPLES.items()):
        rng, rows = random.Random(seed), []
        for _ in range(count):
            positive = rng.random() < 0.5
            words = [rng.choice(GOOD if positive else BAD) for _ in range(rng.randint(2, 5))]
            words += [rng.choice(FILLER) for _ in range(rng.randint(0, 4))]  # lengths vary: padding and grouping
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
        files.append(f"{split}={write_jsonl(root / f'{split}.jsonl', rows)}")
    return {"model": model, "files": files}


def classification_args(data: dict, per_device_batch: int) -> list[str]:
    return [
        "--model_name_or_path", str(data["model"]), "--data_files", *data["files"], "--block_size", "32",
        "--per_device_train_batch_size", str(per_device_batch), "--per_device_eval_batch_size", str(CLS_EVAL_BATCH),
        "--group_by_length", "true", "--num_train_epochs", "2", "--learning_rate", "1e-2", "--eval_steps", "6",
        "--save_steps", "6", "--save_total_limit", "10", "--logging_steps", "1", "--load_best_model_at_end", "false",
        "--cpu_threads", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def classification_runs(classification_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("classification")
    classification = load_recipe("finetune_classification")
    classification.main(
        [*classification_args(classification_data, PROCESSES * CLS_BATCH), "--output_dir", str(root / "one")]
    )
    args = classification_args(classification_data, CLS_BATCH)
    code = run_two_processes("finetune_classification", [*args, "--output_dir", str(root / "two")], root / "two.log")
    assert code == 0, (root / "two.log").read_text(errors="replace")[-4000:]
    examples = {split: CLS_EXAMPLES[split] for split in ("validation", "test")}
    return Runs(root / "one", root / "two", root / "two.log", args, examples)


RECIPES = {
    # recipe: (fixture, per-device batch, optimizer steps, checkpoint steps, per-device eval batch)
    "pretrain": ("lm_runs", LM_BATCH, LM_STEPS, (4, 8), LM_EVAL_BATCH),
    "finetune_classification": ("classification_runs", CLS_BATCH, CLS_STEPS, (6, 12), CLS_EVAL_BATCH),
}


@pytest.fixture(params=list(RECIPES))
def recipe_runs(request: pytest.FixtureRequest) -> tuple[str, Runs]:
    return request.param, request.getfixturevalue(RECIPES[request.param][0])


# ---------------------------------------------------------------------------------------------------------------------
# 1. Both recipes finish on 2 processes, and the main process alone writes the outputs


def test_two_processes_finish_and_only_the_main_process_writes(recipe_runs) -> None:
    recipe, runs = recipe_runs
    _, batch, steps, checkpoint_steps, _ = RECIPES[recipe]
    saved = results(runs.two)
    assert saved["hardware"].startswith(f"{PROCESSES} x "), saved["hardware"]  # really 2 processes, not a fallback
    assert saved["global_batch_size"] == PROCESSES * batch and saved["global_step"] == steps
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "all_results.json",
        "log_history.json",
        "recipe.yaml",
    ):
        assert (runs.two / name).is_file(), name
    assert not list(runs.two.rglob(".tmp*")), "a temporary file or folder was left behind"
    checkpoints = sorted(p.name for p in (runs.two / "checkpoints").iterdir())
    assert checkpoints == sorted(f"checkpoint-{s}" for s in checkpoint_steps)
    # Python-level writes, renames and removals of the second process, even of files the main process rewrote later.
    assert (runs.log.parent / "rank1.log").read_text() == ""
    if os.geteuid() != 0:
        return  # only root can mark the files the second process creates (distributed_child.py)
    by_second_process = {
        p.relative_to(runs.two).as_posix() for p in runs.two.rglob("*") if p.stat().st_gid == MARKER_GID
    }
    # Accelerate saves each process's RNG state itself (natively: no audit event); all else is the main process's.
    assert by_second_process == {f"checkpoints/checkpoint-{s}/random_states_1.pkl" for s in checkpoint_steps}


# ---------------------------------------------------------------------------------------------------------------------
# 2. 2 processes x batch b == 1 process x batch 2b


def test_two_processes_train_like_one_process_with_twice_the_batch(recipe_runs) -> None:
    """Each step's global batch holds the same examples and the gradients are averaged, so the runs agree to fp32
    rounding. Without the length-grouped sampler grouping per global batch, classification differs from step 1."""
    recipe, runs = recipe_runs
    steps = RECIPES[recipe][2]
    config = json.loads((runs.two / "config.json").read_text())
    dropouts = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "classifier_dropout")
    assert all(config.get(key) in (None, 0.0) for key in dropouts)  # classifier_dropout None: hidden_dropout_prob
    one, two = train_records(runs.one), train_records(runs.two)
    assert sorted(two) == list(range(1, steps + 1)) and one.keys() == two.keys()
    assert max_loss_difference(runs.one, runs.two) <= 1e-5
    for step in two:
        assert two[step]["tokens_seen"] == one[step]["tokens_seen"], step  # the same examples, counted once
        assert two[step]["learning_rate"] == one[step]["learning_rate"], step
        # Averaged, not summed, gradients (Adam alone would hide a factor of 2 in the losses).
        assert two[step]["grad_norm"] == pytest.approx(one[step]["grad_norm"], rel=1e-4), step
    evals_one, evals_two = eval_records(runs.one), eval_records(runs.two)
    assert evals_one.keys() == evals_two.keys() and evals_two
    for step, record in evals_two.items():
        for key, value in record.items():
            if isinstance(value, float):
                assert value == pytest.approx(evals_one[step][key], rel=1e-5, abs=1e-5), (step, key)
    final_one, final_two = results(runs.one), results(runs.two)
    metrics = [k for k, v in final_one.items() if k.startswith(("validation_", "test_")) and isinstance(v, float)]
    assert any(key.endswith("_loss") for key in metrics)
    for key in metrics:
        assert final_two[key] == pytest.approx(final_one[key], rel=1e-5, abs=1e-5), key
    assert max_weight_difference(runs.one, runs.two) <= 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# 3. A resume on 2 processes continues the same run


@pytest.fixture(scope="module")
def lm_resumed(lm_runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run's mid-run checkpoint (step 4: epoch 1, one batch in) in a new output folder, resumed to
    the end with `--resume_from_checkpoint latest`: exactly what a run stopped after step 4 leaves behind."""
    root = tmp_path_factory.mktemp("pretrain-resumed")
    out = root / "run"
    shutil.copytree(
        lm_runs.two / "checkpoints" / f"checkpoint-{LM_SAVE_STEPS}",
        out / "checkpoints" / f"checkpoint-{LM_SAVE_STEPS}",
    )
    args = [*lm_runs.args, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]
    code = run_two_processes("pretrain", args, root / "run.log")
    log = (root / "run.log").read_text(errors="replace")
    assert code == 0, log[-4000:]
    assert f"checkpoint-{LM_SAVE_STEPS} at step {LM_SAVE_STEPS}" in log, log[-4000:]  # "Resumed from ... at step 4"
    return out


def test_resume_on_two_processes_matches_the_uninterrupted_run(lm_runs: Runs, lm_resumed: Path) -> None:
    resumed, uninterrupted = train_records(lm_resumed), train_records(lm_runs.two)
    assert resumed.keys() == uninterrupted.keys()
    # Steps 5-8 were trained after the resume; they cross the epoch 1 -> 2 boundary (3 steps an epoch).
    assert max_loss_difference(lm_resumed, lm_runs.two, after_step=LM_SAVE_STEPS) <= 1e-6
    for step in range(LM_SAVE_STEPS + 1, LM_STEPS + 1):
        assert resumed[step]["tokens_seen"] == uninterrupted[step]["tokens_seen"], step
    assert max_weight_difference(lm_resumed, lm_runs.two) <= 1e-6
    assert results(lm_resumed)["validation_loss"] == pytest.approx(results(lm_runs.two)["validation_loss"], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# 4. Evaluation counts each example once when the last batch is padded for the second process


def test_evaluation_on_two_processes_counts_each_example_once(recipe_runs) -> None:
    recipe, runs = recipe_runs
    eval_batch = RECIPES[recipe][4]
    count_key = "tokens" if recipe == "pretrain" else "examples"
    final_one, final_two = results(runs.one), results(runs.two)
    documents = LM_DOCUMENTS if recipe == "pretrain" else CLS_EXAMPLES
    for split, expected in runs.eval_counts.items():
        # Odd, and not a multiple of the global eval batch: the last batch is padded with repeated examples.
        assert documents[split] % 2 == 1 and documents[split] % (PROCESSES * eval_batch) != 0
        assert final_two[f"{split}_{count_key}"] == expected, split
        assert final_one[f"{split}_{count_key}"] == expected, split
        if recipe == "finetune_classification":
            assert sum(map(sum, final_two[f"{split}_confusion_matrix"])) == expected
            assert final_two[f"{split}_accuracy"] == final_one[f"{split}_accuracy"]  # same predictions, same count
        assert final_two[f"{split}_loss"] == pytest.approx(final_one[f"{split}_loss"], abs=1e-5)
    for step, record in eval_records(runs.two).items():  # the evaluations during training, too
        assert record[f"eval_validation_{count_key}"] == runs.eval_counts["validation"], step


# ---------------------------------------------------------------------------------------------------------------------
# 5. A checkpoint is resumed only under the number of processes that wrote it


def test_resume_under_another_world_size_is_refused(lm_data: dict, lm_runs: Runs, tmp_path: Path) -> None:
    """The data position counts per-process batches, so it would not carry over: the library refuses, naming both
    numbers of processes, before training anything."""
    checkpoint = f"checkpoint-{LM_SAVE_STEPS}"
    out = tmp_path / "run"  # a 2-process checkpoint resumed by 1 process, with the same per-device batch
    shutil.copytree(lm_runs.two / "checkpoints" / checkpoint, out / "checkpoints" / checkpoint)
    pretrain = load_recipe("pretrain")
    with pytest.raises(ResumeMismatchError, match=r"written by 2 process\(es\) and this run has 1.*Resume with 2"):
        pretrain.main([*lm_args(lm_data, LM_BATCH), "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert [p.name for p in (out / "checkpoints").iterdir()] == [checkpoint]
    assert not (out / "all_results.json").exists()


@pytest.mark.slow  # one more launch (~20 s) for a path the test above covers in-process
def test_two_processes_refuse_a_one_process_checkpoint_without_hanging(lm_runs: Runs, tmp_path: Path) -> None:
    """Both processes refuse (a refusal on one rank alone would leave the other waiting in a collective forever)."""
    checkpoint = f"checkpoint-{LM_SAVE_STEPS}"
    out = tmp_path / "run"
    shutil.copytree(lm_runs.one / "checkpoints" / checkpoint, out / "checkpoints" / checkpoint)
    started = time.monotonic()
    args = [*lm_runs.args, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]
    code = run_two_processes("pretrain", args, tmp_path / "run.log")
    log = (tmp_path / "run.log").read_text(errors="replace")
    assert code != 0 and time.monotonic() - started < LAUNCH_TIMEOUT_S
    # torch prefixes each rank's uncaught exception with [rankN]: both ranks raised it.
    refusal = r"\[rank(\d+)\]: \S*ResumeMismatchError: .* written by 1 process\(es\) and this run has 2"
    refused = re.findall(refusal, log)
    assert sorted(set(refused)) == ["0", "1"], log[-4000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == [checkpoint]
    assert not (out / "all_results.json").exists()
