"""Recipe configuration: YAML defaults, command-line overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, load_recipe

from llm_recipes.config import ConfigError, DataConfig, TrainConfig, parse_config

RECIPE_YAMLS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))


def recipe_for(yaml_path: Path) -> str:
    """Each YAML's recipe is named by its file name prefix (pretrain_*, finetune_causal_*, ...)."""
    recipes = sorted((p.stem for p in (ROOT / "recipes").glob("*.py")), key=len, reverse=True)
    return next(name for name in recipes if yaml_path.stem.startswith(name))


@pytest.mark.parametrize("yaml_path", RECIPE_YAMLS, ids=[p.name for p in RECIPE_YAMLS])
def test_every_shipped_recipe_yaml_parses(yaml_path: Path) -> None:
    recipe = load_recipe(recipe_for(yaml_path))
    instances = parse_config(recipe.CONFIG_TYPES, ["--config", str(yaml_path)])
    assert len(instances) == len(recipe.CONFIG_TYPES)
    first_line = yaml_path.read_text().splitlines()[0]
    assert first_line.startswith("#"), f"{yaml_path.name} should open with a comment saying what it is"
    assert "recipes/" in yaml_path.read_text(), f"{yaml_path.name} should show its launch command"


def test_yaml_sets_defaults_and_command_line_wins(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 3e-4\nseed: 7\ndata_files: [a.txt, b.txt]\nstreaming: true\n")
    data, train = parse_config([DataConfig, TrainConfig], ["--config", str(recipe), "--seed", "11"])
    assert train.learning_rate == pytest.approx(3e-4)  # '3e-4' is a string to PyYAML; argparse converts it
    assert train.seed == 11
    assert data.data_files == ["a.txt", "b.txt"] and data.streaming is True


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rate: 1e-3\nlearnig_rate_typo: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*learnig_rate_typo"):
        parse_config([DataConfig, TrainConfig], ["--config", str(recipe)])


def test_unknown_command_line_flag_is_named() -> None:
    with pytest.raises(ConfigError, match="--no_such_flag"):
        parse_config([DataConfig, TrainConfig], ["--no_such_flag", "1"])


def test_invalid_values_are_named() -> None:
    with pytest.raises(ConfigError, match="block_size=1"):
        parse_config([DataConfig, TrainConfig], ["--block_size", "1"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        parse_config([DataConfig, TrainConfig], ["--mixed_precision", "fp8"])
    with pytest.raises(ConfigError, match="save_steps=30 must be a multiple of eval_steps=20"):
        parse_config([DataConfig, TrainConfig], ["--eval_steps", "20", "--save_steps", "30"])


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        parse_config([DataConfig, TrainConfig], ["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("script", sorted((ROOT / "recipes").glob("*.py")), ids=lambda p: p.name)
def test_no_recipe_script_shadows_a_library_it_imports(script: Path) -> None:
    """`python recipes/x.py` puts recipes/ first on sys.path: recipes/evaluate.py would hide the `evaluate` library."""
    import importlib.util

    assert importlib.util.find_spec(script.stem) is None, f"{script} shadows the installed module {script.stem!r}"
