"""Never lose a run: preemption, exact resume (map-style and streaming), NaN guards, bad input, safe loading, secrets.

Most tests drive `train()` directly on a ~10k-parameter Llama and random token blocks (seconds each). The tests that
kill or signal real processes (`kill -9`, SIGTERM through `accelerate launch`) are marked slow.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    TINY_PRETRAIN,
    child_env,
    launch_two_cpu_processes,
    load_recipe,
    requires_mpirun,
    wait_for,
    wait_for_group_exit,
)
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from llm_recipes.checkpoint import (
    UnsafeCheckpointError,
    list_checkpoints,
    load_trainer_state,
    resolve_resume_path,
    save_checkpoint,
)
from llm_recipes.config import ConfigError, DataConfig, ModelConfig, TrainConfig, parse_config
from llm_recipes.data.lengths import enforce_max_length
from llm_recipes.data.sources import DataError, load_raw_datasets
from llm_recipes.data.text import PackedStream, collate_blocks, prepare_lm_datasets
from llm_recipes.evaluation import CausalLMEvaluator
from llm_recipes.preemption import EXIT_PREEMPTED, TrainingPreempted
from llm_recipes.training import (
    EpochShuffleSampler,
    NonFiniteTrainingError,
    ResumeMismatchError,
    Task,
    build_accelerator,
    train,
)

VOCAB, BLOCK = 64, 8
CHILD = Path(__file__).with_name("reliability_child.py")


# ---------------------------------------------------------------------------------------------------------------------
# A tiny task driven through train() directly


class HookedLlama(LlamaForCausalLM):
    """A Llama whose training forward calls (1-based, counted per instance) can misbehave on purpose."""

    def setup_hooks(self, nan_loss_at=(), inf_grad_at=(), signal_at: dict[int, int] | None = None) -> HookedLlama:
        self.calls, self.nan_loss_at, self.inf_grad_at = 0, set(nan_loss_at), set(inf_grad_at)
        self.signal_at = signal_at or {}
        return self

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        if not self.training:
            return outputs
        self.calls += 1
        if self.calls in self.nan_loss_at:
            outputs.loss = outputs.loss * float("nan")
        if self.calls in self.inf_grad_at:  # a finite loss whose gradient overflows
            weight = self.model.embed_tokens.weight
            handle = weight.register_hook(lambda grad: (handle.remove(), torch.full_like(grad, float("inf")))[1])
        if self.calls in self.signal_at:
            os.kill(os.getpid(), self.signal_at[self.calls])  # a real signal, delivered to this process
        return outputs


def tiny_model(cls=LlamaForCausalLM) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=BLOCK, tie_word_embeddings=True,
    )
    return cls(config)


def token_blocks(count: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"input_ids": torch.randint(0, VOCAB, (count, BLOCK), generator=generator).tolist()})


def run(output_dir: Path, model=None, train_dataset=None, fingerprint="blocks-v1", **overrides):
    """train() on the tiny task; 10 examples in batches of 2 = 5 micro-batches an epoch."""
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=8, eval_steps=2, logging_steps=1,
        learning_rate=1e-2, warmup_ratio=0.0, save_total_limit=20, load_best_model_at_end=False,
    )
    settings.update(overrides)
    cfg = TrainConfig(**settings)
    accelerator = build_accelerator(cfg)
    task = Task(
        model=model if model is not None else tiny_model(),
        train_dataset=train_dataset if train_dataset is not None else token_blocks(10, seed=1).with_format("torch"),
        eval_datasets={"validation": token_blocks(4, seed=2).with_format("torch")},
        collate_fn=collate_blocks,
        make_evaluator=CausalLMEvaluator,
        data_fingerprint=fingerprint,
    )
    return train(task, cfg, accelerator)


def final_weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.extras["model"].state_dict().items()}


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name  # bitwise: CPU fp32 is deterministic


def losses(result) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in result.log_history if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    """Reference runs that never stop: map-style with 2-step accumulation, and a stream."""
    root = tmp_path_factory.mktemp("uninterrupted")
    accumulated = run(root / "map", gradient_accumulation_steps=2)
    reads: list = []
    streamed = run(root / "stream", train_dataset=token_stream(reads=reads), max_steps=10)
    return {
        "map": {"weights": final_weights(accumulated), "losses": losses(accumulated)},
        "stream": {"weights": final_weights(streamed), "losses": losses(streamed), "documents_read": len(reads)},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Preemption and exact resume


@pytest.mark.parametrize(
    ("signum", "signal_at_micro", "stops_after_step"),
    [
        (signal.SIGTERM, 3, 2),  # mid-epoch, inside an accumulation group: the group finishes, then the run stops
        (signal.SIGINT, 5, 3),  # the last micro-batch of epoch 0 (a short group of one): stops at the epoch boundary
        (signal.SIGTERM, 6, 4),  # the first micro-batch of epoch 1
    ],
)
def test_signal_stops_at_a_step_boundary_saves_and_resumes_exactly(
    tmp_path, uninterrupted, signum, signal_at_micro, stops_after_step
) -> None:
    handler_before = signal.getsignal(signum)
    model = tiny_model(HookedLlama).setup_hooks(signal_at={signal_at_micro: signum})
    with pytest.raises(TrainingPreempted) as stopped:
        run(tmp_path, model=model, gradient_accumulation_steps=2)
    assert stopped.value.code == EXIT_PREEMPTED
    assert stopped.value.step == stops_after_step and signal.Signals(signum).name in str(stopped.value)
    assert signal.getsignal(signum) is handler_before  # the loop's handler is gone once train() returns
    latest = resolve_resume_path("latest", tmp_path)
    assert latest.name == f"checkpoint-{stops_after_step}"
    assert load_trainer_state(latest)["loop"]["global_step"] == stops_after_step

    resumed = run(tmp_path, gradient_accumulation_steps=2, resume_from_checkpoint="latest")
    expected = uninterrupted["map"]
    assert_same_weights(final_weights(resumed), expected["weights"])
    after = {s: v for s, v in losses(resumed).items() if s > stops_after_step}
    assert after == {s: v for s, v in expected["losses"].items() if s > stops_after_step}


def test_skipping_consumed_batches_loads_no_data() -> None:
    """The resume position skips index lists (Accelerate's SkipBatchSampler): no skipped example is ever loaded."""

    class CountingDataset(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.loaded: list[int] = []

        def __len__(self) -> int:
            return 12

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            self.loaded.append(index)
            return {"input_ids": torch.full((BLOCK,), index)}

    accelerator = build_accelerator(TrainConfig(output_dir="unused", per_device_train_batch_size=2))
    dataset = CountingDataset()
    loader = accelerator.prepare(
        torch.utils.data.DataLoader(dataset, 2, sampler=EpochShuffleSampler(12, seed=3), collate_fn=collate_blocks)
    )
    loader.set_epoch(1)
    full_order = [int(i) for batch in loader for i in batch["input_ids"][:, 0]]
    dataset.loaded.clear()
    skipping = accelerator.skip_first_batches(loader, 4)
    skipping.set_epoch(1)
    resumed_order = [int(i) for batch in skipping for i in batch["input_ids"][:, 0]]
    assert type(skipping.batch_sampler).__name__ == "SkipBatchSampler"
    assert resumed_order == full_order[8:]  # the same order, continued from the saved position
    assert sorted(dataset.loaded) == sorted(full_order[8:])  # the 8 skipped examples were never read


def token_stream(documents: int = 13, seed: int = 4, reads: list | None = None) -> PackedStream:
    """Documents of 3..17 tokens as a `datasets` stream in 2 shards, through a batched map like real tokenization.

    `reads` (if given) gets one entry per document the packer pulls from the stream.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 18, (documents,), generator=generator).tolist()
    docs = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    stream = Dataset.from_dict({"input_ids": docs}).to_iterable_dataset(num_shards=2)
    stream = stream.map(lambda batch: batch, batched=True, batch_size=4)
    if reads is not None:
        stream = stream.map(lambda example: reads.append(1) or example)
    return PackedStream(stream, BLOCK)


@pytest.mark.parametrize("consumed", [0, 1, 5, 9, 13])
def test_packed_stream_continues_from_a_saved_position(consumed: int) -> None:
    stream = token_stream()
    stream.set_epoch(0)
    everything = [block["input_ids"].tolist() for block in stream]
    stream.set_epoch(0)
    iterator = iter(stream)
    for _ in range(min(consumed + 3, len(everything))):  # a data loader reads ahead of what training consumed
        next(iterator)
    position = json.loads(json.dumps(stream.stream_position(consumed)))  # it is stored as JSON in trainer_state

    fresh = token_stream()
    fresh.set_epoch(0)
    fresh.resume_from(position)
    assert [block["input_ids"].tolist() for block in fresh] == everything[consumed:]
    fresh.set_epoch(1)
    assert [block["input_ids"].tolist() for block in fresh] == everything  # the next pass starts at the beginning


def test_packed_stream_remembers_a_bounded_window_of_positions() -> None:
    """A long stream must not keep a position for every block it ever yielded (memory would grow with the corpus)."""
    stream = token_stream(documents=400, seed=1)
    stream.history = 6
    stream.set_epoch(0)
    everything = [block["input_ids"].tolist() for block in stream]
    assert len(everything) > 100
    assert len(stream._documents) <= stream.history + 2  # at least one block per remembered document
    consumed = len(everything) - 5  # within the window: still exact
    fresh = token_stream(documents=400, seed=1)
    fresh.set_epoch(0)
    fresh.resume_from(json.loads(json.dumps(stream.stream_position(consumed))))
    assert [block["input_ids"].tolist() for block in fresh] == everything[consumed:]
    with pytest.raises(LookupError, match="no longer remembers block 3 .*history=6"):
        stream.stream_position(3)


def test_streaming_run_resumes_exactly_without_replaying(tmp_path, uninterrupted) -> None:
    model = tiny_model(HookedLlama).setup_hooks(signal_at={7: signal.SIGTERM})
    reads_before, reads_after = [], []
    with pytest.raises(TrainingPreempted):
        run(tmp_path, model=model, train_dataset=token_stream(reads=reads_before), max_steps=10)
    saved = load_trainer_state(resolve_resume_path("latest", tmp_path))
    assert saved["loop"]["global_step"] == 7
    assert saved["train_stream"]["blocks"] == saved["loop"]["micro_batches_in_epoch"] * 2  # batch 2, 1 process
    assert saved["train_stream"]["source"] is not None  # a position inside the stream, not its start

    resumed = run(
        tmp_path, train_dataset=token_stream(reads=reads_after), max_steps=10, resume_from_checkpoint="latest"
    )
    assert_same_weights(final_weights(resumed), uninterrupted["stream"]["weights"])
    # Not a replay (that would read all 17 documents again): together the two runs read at most 3 documents twice,
    # the one holding the saved position and the loader's read-ahead of one batch.
    assert len(reads_before) + len(reads_after) <= uninterrupted["stream"]["documents_read"] + 3
    assert {s: v for s, v in losses(resumed).items() if s > 7} == {
        s: v for s, v in uninterrupted["stream"]["losses"].items() if s > 7
    }


# ---------------------------------------------------------------------------------------------------------------------
# Non-finite values


def saved_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: the safetensors weights and the optimizer's moments."""
    tensors = dict(load_file(checkpoint / "model.safetensors"))
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    for index, moments in optimizer["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v for k, v in moments.items() if torch.is_tensor(v)})
    return tensors


@pytest.mark.parametrize("poison", ["nan_loss_at", "inf_grad_at"])
def test_a_nonfinite_step_is_skipped_counted_and_never_saved(tmp_path, caplog, poison) -> None:
    model = tiny_model(HookedLlama).setup_hooks(**{poison: [3]})
    result = run(tmp_path / "run", model=model, max_steps=6, save_steps=1, eval_steps=1)
    assert result.extras["skipped_steps"] == 1
    assert [r["skipped_steps"] for r in result.log_history if "skipped_steps" in r][0] == 1
    assert any("step 3: NaN/inf loss or gradient" in message for message in caplog.messages)
    # Step 3 changed nothing: its checkpoint holds exactly the weights after step 2 (and step 4 changed them).
    weights_after = {s: load_file(tmp_path / "run" / "checkpoints" / f"checkpoint-{s}" / "model.safetensors")
                     for s in (2, 3, 4)}
    assert_same_weights(weights_after[3], weights_after[2])
    assert not torch.equal(weights_after[4]["model.norm.weight"], weights_after[3]["model.norm.weight"])
    for checkpoint in list_checkpoints(tmp_path / "run"):
        for name, tensor in saved_tensors(checkpoint).items():
            assert torch.isfinite(tensor).all(), (checkpoint.name, name)
    assert all(torch.isfinite(p).all() for p in result.extras["model"].parameters())


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path) -> None:
    model = tiny_model(HookedLlama).setup_hooks(nan_loss_at=range(3, 100))
    with pytest.raises(NonFiniteTrainingError, match=r"3 optimizer steps in a row \(steps 3-5\)") as stopped:
        run(tmp_path, model=model, max_steps=20, max_consecutive_nonfinite_steps=3)
    message = str(stopped.value)
    assert "max_consecutive_nonfinite_steps=3" in message and "weights are those after step 2" in message
    assert "checkpoint-4" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]  # 4 = weights of step 2


def test_a_checkpoint_with_nonfinite_weights_is_never_written(tmp_path) -> None:
    model = tiny_model()
    accelerator = build_accelerator(TrainConfig(output_dir=str(tmp_path)))
    prepared = accelerator.prepare(model)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        save_checkpoint(accelerator, tmp_path, 7, {"loop": {}}, prepared)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one table, every case names what is wrong


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A finished tiny run with checkpoints, for the resume rows (copied per row)."""
    output = tmp_path_factory.mktemp("saved_run") / "run"
    run(output, max_steps=2)
    return output


def _resume_copy(saved_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "resume"
    shutil.copytree(saved_run, copy)
    return copy


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _unreadable(tmp_path: Path, monkeypatch) -> Exception:
    path = _write(tmp_path / "secret.txt", b"some text\n")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the open fail the way it does for everyone else
        import llm_recipes.data.sources as sources

        def refuse(file, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(file))

        monkeypatch.setattr(sources, "open", refuse, raising=False)
    return load_raw_datasets(DataConfig(data_files=[str(path)]))


def _label_sets_differ(tmp_path: Path, monkeypatch):
    classification = pytest.importorskip("llm_recipes.tasks.classification")
    raw = DatasetDict({
        "train": Dataset.from_dict({"text": ["a", "b", "c"], "label": ["pos", "neg", "pos"]}),
        "validation": Dataset.from_dict({"text": ["d", "e"], "label": ["pos", "meh"]}),
    })
    return classification.build_label_space(raw, classification.ClassificationConfig())


def _zero_examples_left(tmp_path: Path, monkeypatch):
    """Every document is blank, so tokenization filters them all out."""
    from llm_recipes.config import TokenizerConfig
    from llm_recipes.data.tokenizer import train_bpe_tokenizer

    raw = DatasetDict({"train": Dataset.from_dict({"text": ["   ", "\n", ""]})})
    tokenizer = train_bpe_tokenizer(["some words to learn from"] * 20, TokenizerConfig(vocab_size=300))
    return prepare_lm_datasets(raw, tokenizer, "text", block_size=8)


def _too_long(tmp_path: Path, monkeypatch):
    lengths = [5, 12, 3]
    rows = [[1] * n for n in lengths]
    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": rows})
    return enforce_max_length(dataset, max_length=8, policy="error", split="validation")


def _yaml_unknown_key(tmp_path: Path, monkeypatch):
    recipe = _write(tmp_path / "recipe.yaml", b"learning_rate: 0.001\nlearning_rat: 0.1\n")
    return parse_config((TrainConfig,), ["--config", str(recipe)])


def _resume_other_world_size(saved_run: Path, tmp_path: Path):
    copy = _resume_copy(saved_run, tmp_path)
    state_file = list_checkpoints(copy)[-1] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["world_size"] = 2
    state_file.write_text(json.dumps(state))
    return run(copy, max_steps=4, resume_from_checkpoint="latest")


def _resume_other_model(saved_run: Path, tmp_path: Path):
    torch.manual_seed(0)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=BLOCK))
    return run(_resume_copy(saved_run, tmp_path), model=wider, max_steps=4, resume_from_checkpoint="latest")


BAD_INPUTS = {
    # case: (make the error, exception type, fragments the message must contain)
    "missing file": (lambda t, m: load_raw_datasets(DataConfig(data_files=[str(t / "nope.txt")])), DataError,
                     ["nope.txt", "file not found"]),
    "empty file": (lambda t, m: load_raw_datasets(DataConfig(data_files=[str(_write(t / "empty.txt", b""))])),
                   DataError, ["empty.txt", "file is empty"]),
    "unreadable file": (_unreadable, DataError, ["secret.txt", "not readable"]),
    "non-UTF-8 bytes": (
        lambda t, m: load_raw_datasets(DataConfig(data_files=[str(_write(t / "latin1.txt", b"fine\n\ncaf\xe9\n"))])),
        DataError, ["latin1.txt", "not valid UTF-8 at byte offset 9", "0xe9"],
    ),
    "missing column": (
        lambda t, m: load_raw_datasets(
            DataConfig(data_files=[str(_write(t / "rows.jsonl", b'{"body": "x", "title": "y"}\n' * 6))])
        ),
        DataError, ["column 'text' not found", "available columns: body, title"],
    ),
    "zero examples left after filtering": (
        _zero_examples_left, DataError, ["train split", "no document left", "all 3"]
    ),
    "label sets differ between splits": (_label_sets_differ, DataError, ["label sets differ", "'meh'"]),
    "sequence longer than the maximum": (
        _too_long, DataError, ["[validation] row 1: 12 tokens", "maximum of 8", "--on_long_sequence truncate"]
    ),
    "unknown config key (YAML)": (_yaml_unknown_key, ConfigError, ["recipe.yaml", "unknown key(s) learning_rat"]),
    "unknown config key (CLI)": (
        lambda t, m: parse_config((TrainConfig,), ["--learning_rat", "0.1"]), ConfigError, ["--learning_rat"]
    ),
    "invalid config value": (
        lambda t, m: parse_config((DataConfig,), ["--on_long_sequence", "drop"]), ConfigError, ["on_long_sequence"]
    ),
}
RESUME_MISMATCHES = {
    "resume with a different world size": (_resume_other_world_size, ["2 process(es)", "this run has 1"]),
    "resume with different data": (
        lambda s, t: run(_resume_copy(s, t), fingerprint="other-data", max_steps=4, resume_from_checkpoint="latest"),
        ["different data", "other-data"],
    ),
    "resume with a different model": (_resume_other_model, ["different model (weight names or shapes)"]),
    "resume with another batch size": (
        lambda s, t: run(_resume_copy(s, t), per_device_train_batch_size=1, max_steps=4,
                         resume_from_checkpoint="latest"),
        ["per_device_train_batch_size=2", "this run has 1"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS) + list(RESUME_MISMATCHES))
def test_bad_input_gets_a_clear_early_error(case, tmp_path, monkeypatch, saved_run) -> None:
    if case in RESUME_MISMATCHES:
        make_error, fragments = RESUME_MISMATCHES[case]
        with pytest.raises(ResumeMismatchError) as error:
            make_error(saved_run, tmp_path)
    else:
        make_error, error_type, fragments = BAD_INPUTS[case]
        with pytest.raises(error_type) as error:
            make_error(tmp_path, monkeypatch)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_long_sequences_are_truncated_with_a_warning_when_configured(caplog) -> None:
    assert DataConfig().on_long_sequence == "truncate"
    dataset = Dataset.from_dict({"input_ids": [[1] * 5, [2] * 12], "attention_mask": [[1] * 5, [1] * 12],
                                 "label": [0, 1]})
    truncated = enforce_max_length(dataset, max_length=8, policy="truncate", split="train")
    assert [len(ids) for ids in truncated["input_ids"]] == [5, 8]
    assert [len(mask) for mask in truncated["attention_mask"]] == [5, 8] and truncated["label"] == [0, 1]
    assert any("1 of 2 examples are longer than 8 tokens and were truncated" in m for m in caplog.messages)


def test_resume_with_a_longer_schedule_warns_but_continues(saved_run, tmp_path, caplog) -> None:
    result = run(_resume_copy(saved_run, tmp_path), max_steps=3, resume_from_checkpoint="latest")
    assert result.global_step == 3
    assert any("max_steps was 2 and is now 3" in message for message in caplog.messages)


# ---------------------------------------------------------------------------------------------------------------------
# Safe loading


class PlantedPayload:
    """A pickle that, when unpickled with weights_only=False, would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("target", "writer"),
    [
        ("optimizer.bin", "pickle"),  # a plain pickle where Accelerate's optimizer state goes
        ("optimizer.bin", "torch.save"),  # the zip format Accelerate writes, with a payload inside
        ("random_states_0.pkl", "torch.save"),  # Accelerate would swallow this failure and resume with other RNG
        ("pytorch_model.bin", "torch.save"),  # weights as a pickle instead of model.safetensors
    ],
)
def test_a_planted_pickle_is_refused_and_never_runs(saved_run, tmp_path, target, writer) -> None:
    copy = _resume_copy(saved_run, tmp_path)
    checkpoint = list_checkpoints(copy)[-1]
    marker = tmp_path / "payload-ran"
    payload = {"state": PlantedPayload(marker)}
    if target == "pytorch_model.bin":
        (checkpoint / "model.safetensors").unlink()
    if writer == "pickle":
        (checkpoint / target).write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, checkpoint / target)
    with pytest.raises(UnsafeCheckpointError, match="refused to load|only loads weights from safetensors"):
        run(copy, max_steps=4, resume_from_checkpoint="latest")
    assert not marker.exists()
    # The payload is live: loaded the unsafe way, it runs.
    if writer == "pickle":
        pickle.loads((checkpoint / target).read_bytes())
    else:
        torch.load(checkpoint / target, weights_only=False)
    assert marker.exists()


def test_no_unsafe_loading_in_the_code() -> None:
    """No pickle load without weights_only=True, no remote code by default, no pickled scheduler in checkpoints."""
    sources = [p for folder in ("llm_recipes", "recipes", "app") for p in (ROOT / folder).rglob("*.py")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"
        assert "weights_only=False" not in text, path
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        assert "register_for_checkpointing" not in text, path  # Accelerate unpickles those with weights_only=False
    assert ModelConfig().trust_remote_code is False


# ---------------------------------------------------------------------------------------------------------------------
# Secrets


def test_a_hub_token_reaches_no_output_file_or_log(text_corpus, tmp_path, monkeypatch, capfd) -> None:
    pytest.importorskip("tensorboard")
    sentinel = "hf_SentinelTokenForLeakTests0123456789"
    monkeypatch.setenv("HF_TOKEN", sentinel)
    output = tmp_path / "run"
    pretrain = load_recipe("pretrain")
    pretrain.main([
        "--config", str(ROOT / "recipes" / "configs" / "pretrain_tiny.yaml"), "--data_files", str(text_corpus),
        "--output_dir", str(output), *TINY_PRETRAIN, "--max_steps", "2", "--report_to", "tensorboard",
    ])
    captured = capfd.readouterr()
    files = [p for p in output.rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in files), "the tracker wrote nothing: the check would prove little"
    leaked = [str(p.relative_to(output)) for p in files if sentinel.encode() in p.read_bytes()]
    assert leaked == []
    assert sentinel not in captured.out + captured.err


# ---------------------------------------------------------------------------------------------------------------------
# Real processes: kill -9 mid-run and mid-save; SIGTERM through `accelerate launch` with 2 CPU processes


def pretrain_args(corpus: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "recipes" / "configs" / "pretrain_tiny.yaml"), "--data_files", str(corpus),
        "--output_dir", str(output_dir), *TINY_PRETRAIN, "--max_steps", "12", "--gradient_accumulation_steps", "2",
        "--eval_steps", "2", "--save_steps", "2", "--save_total_limit", "3", "--max_train_documents", "12",
        "--load_best_model_at_end", "false", *extra,
    ]


def kill_when_paused(args: list[str], tmp_path: Path, **hooks: str) -> None:
    """Start the recipe in a child process, wait for it to reach the hook's pause point, then `kill -9` it."""
    marker = tmp_path / "paused"
    marker.unlink(missing_ok=True)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), *args], env=child_env(RELIABILITY_MARKER=str(marker), **hooks),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(marker.exists, 600, f"the pause point {hooks}", child)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.slow
def test_kill_9_mid_run_and_mid_save_then_latest_reaches_the_same_weights(text_corpus, tmp_path) -> None:
    pretrain = load_recipe("pretrain")
    reference = tmp_path / "reference"
    pretrain.main(pretrain_args(text_corpus, reference))
    run_dir = tmp_path / "run"
    args = pretrain_args(text_corpus, run_dir)

    # 1. Killed before micro-batch 7: inside the accumulation group of step 4, after checkpoint-2.
    kill_when_paused(args, tmp_path, RELIABILITY_PAUSE_AT_MICRO="7")
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-2"]

    # 2. Resumed from latest, then killed inside the save of checkpoint-6 (weights written, state not yet).
    kill_when_paused([*args, "--resume_from_checkpoint", "latest"], tmp_path, RELIABILITY_PAUSE_IN_SAVE="6")
    temporary = run_dir / "checkpoints" / ".tmp-checkpoint-6"
    assert (temporary / "model.safetensors").is_file() and not (temporary / "trainer_state.json").exists()
    assert resolve_resume_path("latest", run_dir).name == "checkpoint-4"  # the half-written one is ignored

    # 3. Resumed from latest (checkpoint-4) to the end.
    pretrain.main([*args, "--resume_from_checkpoint", "latest"])
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the stale temporary folder was cleaned
    assert_same_weights(load_file(run_dir / "model.safetensors"), load_file(reference / "model.safetensors"))
    history = json.loads((run_dir / "log_history.json").read_text())
    expected = json.loads((reference / "log_history.json").read_text())
    loss_of = lambda records: {r["step"]: r["loss"] for r in records if "loss" in r}  # noqa: E731
    assert {s: v for s, v in loss_of(history).items() if s > 4} == {
        s: v for s, v in loss_of(expected).items() if s > 4
    }


@pytest.mark.slow
@requires_mpirun
def test_sigterm_through_accelerate_launch_stops_both_processes_at_the_same_step(text_corpus, tmp_path) -> None:
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    launcher = launch_two_cpu_processes(CHILD, pretrain_args(text_corpus, reference), tmp_path / "reference.log")
    wait_for_group_exit(launcher, 900)
    assert (reference / "model.safetensors").is_file(), (tmp_path / "reference.log").read_text()[-3000:]

    log = tmp_path / "run.log"
    launcher = launch_two_cpu_processes(CHILD, pretrain_args(text_corpus, run_dir), log, RELIABILITY_STEP_DELAY="0.3")
    wait_for(lambda: (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file(), 900,
             "checkpoint-2", launcher)
    os.killpg(launcher.pid, signal.SIGTERM)  # what a scheduler does: the whole job gets SIGTERM (mpirun forwards it)
    wait_for_group_exit(launcher, 300)
    output = log.read_text(errors="replace")
    stops = dict(re.findall(r"\[process (\d)\] SIGTERM received: stopped after step (\d+)", output))
    assert set(stops) == {"0", "1"}, output[-3000:]
    assert stops["0"] == stops["1"], stops  # both processes stopped after the same step
    step = int(stops["0"])
    assert 2 <= step < 12
    checkpoint = resolve_resume_path("latest", run_dir)
    assert checkpoint.name == f"checkpoint-{step}"
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl",
            "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}  # each process wrote its part
    assert load_trainer_state(checkpoint)["world_size"] == 2

    resume_args = [*pretrain_args(text_corpus, run_dir), "--resume_from_checkpoint", "latest"]
    launcher = launch_two_cpu_processes(CHILD, resume_args, tmp_path / "resume.log")
    wait_for_group_exit(launcher, 900)
    assert launcher.returncode == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert_same_weights(load_file(run_dir / "model.safetensors"), load_file(reference / "model.safetensors"))
