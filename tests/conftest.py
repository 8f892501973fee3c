"""Shared fixtures: tiny corpora made on the spot, the recipes as importable modules, the optional real data."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "no")  # fp32 everywhere in tests: exact comparisons

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A function returns a value to its caller.",
    "Lists keep their items in order; sets do not.",
    "Every module has a name and a docstring.",
    "Errors should never pass silently unless explicitly silenced.",
    "Readability counts, and simple is better than complex.",
]


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (the recipes folder is not a package)."""
    path = ROOT / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A folder of small .txt documents (paragraphs separated by blank lines)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for index in range(4):
        paragraphs = [" ".join(SENTENCES[(index + j) % len(SENTENCES)] for j in range(k + 3)) for k in range(12)]
        (folder / f"part{index}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not on this machine")
    return SHARED_DATA


TINY_PRETRAIN = [
    "--model_preset", "tiny", "--vocab_size", "400", "--block_size", "32", "--per_device_train_batch_size", "4",
    "--eval_steps", "4", "--logging_steps", "1", "--num_samples", "1", "--sample_max_new_tokens", "8",
    "--learning_rate", "3e-3", "--warmup_ratio", "0",
]
