"""The classification recipe and LoRA: learning on separable synthetic data, every label type, adapters, prediction.

Models are tiny random BERTs (hidden size 128, 2 layers) with a BPE tokenizer trained on the synthetic words, saved to
a folder once per session; each run takes seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import load_recipe
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from llm_recipes.config import ConfigError, TokenizerConfig, parse_config
from llm_recipes.data.sources import DataError
from llm_recipes.data.tokenizer import ENCODER_SPECIAL_TOKENS, train_bpe_tokenizer
from llm_recipes.lora import LoraConfigArgs, apply_lora, head_module_names, load_adapter_model
from llm_recipes.tasks.classification import LengthGroupedEpochSampler

classification = load_recipe("finetune_classification")
merge_lora = load_recipe("merge_lora")

GOOD = "wonderful superb delightful brilliant charming moving gorgeous splendid".split()
BAD = "dreadful boring clumsy tedious awful bland lifeless dull".split()
TOPICS = {
    "sport": "goal match team score coach league".split(),
    "food": "bread soup cheese apple spice dinner".split(),
    "music": "song guitar chorus piano melody drum".split(),
}
FILLER = "the a film story it was and very quite".split()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and OpenMP threads that spin-wait on a machine shared with
    other jobs make each step up to 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentence(rng: random.Random, words: list[str], count: int) -> str:
    tokens = [rng.choice(words) for _ in range(count)] + rng.sample(FILLER, 2)
    rng.shuffle(tokens)
    return " ".join(tokens)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (no head) and a BPE tokenizer trained on every synthetic word."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    words = GOOD + BAD + FILLER + [w for topic in TOPICS.values() for w in topic]
    texts = [" ".join(random.Random(i).sample(words, 12)) for i in range(300)]
    tokenizer = train_bpe_tokenizer(
        texts, TokenizerConfig(vocab_size=400, min_frequency=1), ENCODER_SPECIAL_TOKENS, model_max_length=64
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_sentiment_txt(folder: Path, sizes: dict[str, int]) -> list[str]:
    """SST-2-style `LABEL SENTENCE` lines; returns data_files entries."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (split, size) in enumerate(sizes.items()):
        rng = random.Random(index)
        lines = []
        for _ in range(size):
            label = rng.randint(0, 1)
            lines.append(f"{label} {sentence(rng, GOOD if label else BAD, rng.randint(2, 8))}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        entries.append(f"{split}={folder / f'{split}.txt'}")
    return entries


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def tiny_args(encoder: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(encoder), "--output_dir", str(output_dir), "--block_size", "32",
        "--per_device_train_batch_size", "16", "--learning_rate", "2e-3", "--warmup_ratio", "0",
        "--eval_steps", "10", "--logging_steps", "5", "--mixed_precision", "no", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sentiment_run(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """One full fine-tuning run on separable sentiment lines, with a predict file, shared by several tests."""
    root = tmp_path_factory.mktemp("sentiment")
    files = write_sentiment_txt(root / "data", {"train": 320, "validation": 64, "test": 100})
    unlabeled = root / "unlabeled.txt"
    unlabeled.write_text("wonderful superb film\nawful dull boring story\n", encoding="utf-8")
    out = root / "run"
    results = classification.main(
        tiny_args(tiny_encoder, out, "--data_files", *files, "--sample_by", "line", "--labels_in_text", "true",
                  "--label_names", "negative", "positive", "--num_train_epochs", "3",
                  "--metric_for_best_model", "accuracy", "--predict_file", str(unlabeled))
    )  # fmt: skip
    return out, results, unlabeled


def test_single_label_learns_separable_data_and_saves_labels(sentiment_run) -> None:
    out, results, _ = sentiment_run
    assert results["test_accuracy"] >= 0.95, results
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(results["test_accuracy"])
    matrix = saved["test_confusion_matrix"]
    assert saved["test_confusion_matrix_labels"] == ["negative", "positive"]
    assert sum(map(sum, matrix)) == 100 and matrix[0][0] + matrix[1][1] >= 95
    for key in ("validation_f1_macro", "validation_matthews_correlation", "test_precision_macro", "best_step"):
        assert key in saved, key
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.problem_type == "single_label_classification"


def test_predictions_for_an_unlabeled_file(sentiment_run, tmp_path: Path) -> None:
    out, results, unlabeled = sentiment_run
    records = [json.loads(line) for line in Path(results["predictions_file"]).read_text().splitlines()]
    assert [r["text"] for r in records] == ["wonderful superb film", "awful dull boring story"]
    assert [r["label"] for r in records] == ["positive", "negative"]
    # Predict-only mode with the exported model gives the same predictions.
    again = classification.main(["--do_train", "false", "--model_name_or_path", str(out), "--predict_file",
                                 str(unlabeled), "--sample_by", "line", "--output_dir", str(tmp_path)])
    assert [json.loads(line) for line in Path(again["predictions_file"]).read_text().splitlines()] == records


def test_regression_error_falls(tiny_encoder: Path, tmp_path: Path) -> None:
    # Target: the share of positive words, a number the text determines.
    def rows(seed: int, size: int) -> list[dict]:
        rng, result = random.Random(seed), []
        for _ in range(size):
            good = rng.randint(0, 6)
            words = [rng.choice(GOOD) for _ in range(good)] + [rng.choice(BAD) for _ in range(6 - good)]
            rng.shuffle(words)
            result.append({"text": " ".join(words), "score": good / 6 + 0.01})
        return result

    for split, seed, size in (("train", 0, 320), ("validation", 1, 64), ("test", 2, 64)):
        write_jsonl(tmp_path / f"{split}.jsonl", rows(seed, size))
    files = [f"{s}={tmp_path / f'{s}.jsonl'}" for s in ("train", "validation", "test")]
    results = classification.main(
        tiny_args(tiny_encoder, tmp_path / "run", "--data_files", *files, "--label_column", "score",
                  "--num_train_epochs", "4", "--metric_for_best_model", "mse", "--learning_rate", "1e-3")
    )  # fmt: skip
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    first_eval = next(r for r in history if "eval_validation_mse" in r)["eval_validation_mse"]
    targets = torch.tensor([r["score"] for r in rows(2, 64)])
    assert results["problem_type"] == "regression"
    assert results["validation_mse"] < first_eval / 2, (first_eval, results["validation_mse"])
    assert results["test_mse"] < 0.5 * targets.var().item()  # well below predicting the mean
    assert results["test_pearson"] > 0.8


def test_multi_label_lists_become_multi_hot(tiny_encoder: Path, tmp_path: Path) -> None:
    def rows(seed: int, size: int) -> list[dict]:
        rng, result = random.Random(seed), []
        for _ in range(size):
            topics = rng.sample(sorted(TOPICS), rng.randint(1, 2))
            words = [w for t in topics for w in rng.sample(TOPICS[t], 3)]
            rng.shuffle(words)
            result.append({"text": " ".join(words), "topics": topics})
        return result

    for split, seed, size in (("train", 0, 320), ("validation", 1, 64), ("test", 2, 64)):
        write_jsonl(tmp_path / f"{split}.jsonl", rows(seed, size))
    unlabeled = tmp_path / "unlabeled.jsonl"
    write_jsonl(unlabeled, [{"text": "goal team coach song piano"}])
    files = [f"{s}={tmp_path / f'{s}.jsonl'}" for s in ("train", "validation", "test")]
    results = classification.main(
        tiny_args(tiny_encoder, tmp_path / "run", "--data_files", *files, "--label_column", "topics",
                  "--num_train_epochs", "4", "--metric_for_best_model", "f1_micro", "--predict_file", str(unlabeled))
    )  # fmt: skip
    assert results["problem_type"] == "multi_label_classification"
    assert results["label_names"] == ["food", "music", "sport"]
    assert results["test_f1_micro"] >= 0.9, results
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    assert model.config.problem_type == "multi_label_classification"
    (record,) = [json.loads(line) for line in Path(results["predictions_file"]).read_text().splitlines()]
    assert sorted(record["labels"]) == ["music", "sport"]


def test_lora_adapter_is_small_reloads_exactly_and_merges(tiny_encoder: Path, sentiment_run, tmp_path: Path) -> None:
    data = sentiment_run[0].parent / "data"
    files = [f"{s}={data / f'{s}.txt'}" for s in ("train", "validation", "test")]
    unlabeled = sentiment_run[2]
    out = tmp_path / "lora"
    results = classification.main(
        tiny_args(tiny_encoder, out, "--data_files", *files, "--sample_by", "line", "--labels_in_text", "true",
                  "--max_steps", "20", "--use_lora", "true", "--lora_r", "4", "--merge_lora", "true",
                  "--predict_file", str(unlabeled))
    )  # fmt: skip
    assert results["trainable_parameters"] < 0.1 * results["num_parameters"]
    # The run saved the adapter only, a small fraction of the full model.
    assert not (out / "model.safetensors").exists()
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    full_bytes = (out / "merged" / "model.safetensors").stat().st_size
    assert adapter_bytes <= 0.05 * full_bytes, (adapter_bytes, full_bytes)
    # The head was trained in full and saved with the adapter.
    assert any("classifier" in key for key in load_file(out / "adapter_model.safetensors"))

    # Predictions from the reloaded adapter equal the in-memory ones written at the end of the run.
    before = Path(results["predictions_file"]).read_text()
    again = classification.main(["--do_train", "false", "--model_name_or_path", str(out), "--predict_file",
                                 str(unlabeled), "--sample_by", "line", "--output_dir", str(tmp_path / "p")])
    assert Path(again["predictions_file"]).read_text() == before

    # The merged model (plain transformers) matches the adapter model; so does the standalone merge command.
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer(["wonderful superb film", "the dull story was awful"], padding=True, return_tensors="pt")
    adapter_model = load_adapter_model(out).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        expected = adapter_model(**inputs).logits
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=0)
        merge_lora.main(["--adapter_dir", str(out), "--output_dir", str(tmp_path / "merged2")])
        again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged2").eval()
        torch.testing.assert_close(again(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_lora_targets_all_linear_layers_except_the_head(tiny_encoder: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=3)
    assert head_module_names(model) == ["classifier"]
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "classifier" not in n}
    peft_model = apply_lora(model, LoraConfigArgs(use_lora=True, lora_r=4), "SEQ_CLS")
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in peft_model.named_parameters() if ".lora_A." in name}
    assert {n.removeprefix("base_model.model.") for n in adapted} == linear
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable and all("classifier" in n for n in trainable)


def test_different_label_sets_in_train_and_validation_are_an_error(tiny_encoder: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "good film", "label": x} for x in ("pos", "neg", "pos")])
    write_jsonl(tmp_path / "dev.jsonl", [{"text": "a film", "label": x} for x in ("pos", "meh", "so-so")])
    files = [f"train={tmp_path / 'train.jsonl'}", f"validation={tmp_path / 'dev.jsonl'}"]
    with pytest.raises(DataError, match=r"validation has label\(s\) 'meh', 'so-so'.*train labels: neg, pos"):
        classification.main(tiny_args(tiny_encoder, tmp_path / "run", "--data_files", *files, "--test_fraction", "0"))


def test_bad_label_lines_and_settings_are_named(tiny_encoder: Path, tmp_path: Path) -> None:
    lines = ["1 good film", "nolabel", *(f"{i % 2} film number {i}" for i in range(10))]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row \d+: expected `LABEL TEXT`, got 'nolabel'"):
        classification.main(tiny_args(tiny_encoder, tmp_path / "run", "--data_files", str(tmp_path / "train.txt"),
                                      "--sample_by", "line", "--labels_in_text", "true"))
    with pytest.raises(ConfigError, match="problem_type='binary'"):
        parse_config(classification.CONFIG_TYPES, ["--problem_type", "binary"])
    with pytest.raises(ConfigError, match="merge_lora needs use_lora"):
        parse_config(classification.CONFIG_TYPES, ["--merge_lora", "true"])


def test_length_grouped_sampler_depends_only_on_seed_and_epoch() -> None:
    lengths = [random.Random(i).randint(1, 60) for i in range(400)]
    sampler = LengthGroupedEpochSampler(lengths, batch_size=16, seed=3)
    sampler.set_epoch(2)
    epoch_two = list(sampler)
    assert sorted(epoch_two) == list(range(400))
    fresh = LengthGroupedEpochSampler(lengths, batch_size=16, seed=3)
    fresh.set_epoch(2)
    assert list(fresh) == epoch_two  # a resumed run sees the same order
    sampler.set_epoch(3)
    assert list(sampler) != epoch_two

    def padded_tokens(order: list[int]) -> int:
        return sum(16 * max(lengths[i] for i in order[k : k + 16]) for k in range(0, len(order), 16))

    shuffled = torch.randperm(400, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded_tokens(epoch_two) < 0.7 * padded_tokens(shuffled)


@pytest.mark.parametrize("seed", range(6))
def test_every_loader_batch_is_one_length_group_when_the_data_does_not_divide(seed: int) -> None:
    """The short remainder group must not land mid-epoch: it would shift every later batch across two groups."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [random.Random(1000 + i).randint(4, 80) for i in range(1000)]  # 1000 = 31 x 32 + 8
    order = list(LengthGroupedEpochSampler(lengths, batch_size=32, seed=seed))
    loader_batches = [frozenset(order[k : k + 32]) for k in range(0, len(order), 32)]
    grouped = get_length_grouped_indices(lengths, 32, generator=torch.Generator().manual_seed(seed))
    groups = {frozenset(grouped[k : k + 32]) for k in range(0, len(grouped), 32)}
    assert set(loader_batches) == groups
    assert len(loader_batches[-1]) == 8
