"""Publishing a finished run: the training-curve plot, a reproducible model card, and the push to the Hub.

Secrets: the Hub token is never a recipe setting. `push_to_hub` lets `huggingface_hub` resolve it (HF_TOKEN or
`hf auth login`), every text written here passes through `scrub_secrets`, and a push refuses a folder whose text files
contain a token.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.utils import filter_repo_objects

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PLOT_FILE = "training_curves.png"
CARD_FILE = "README.md"
REDACTED = "[REDACTED]"
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{10,}")
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
TRAIN_LOSS_KEY = "loss"
VALIDATION_LOSS_KEY = "eval_validation_loss"
LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "peft", "tokenizers", "huggingface_hub")
RESULT_SPLITS = ("validation", "test", "train")
# Facts about the data or tokenizer, not the model: shown in the results table, kept out of the model-index.
DATA_STATISTICS = ("tokens", "examples", "bytes_per_token", "unigram_perplexity")
# Checked for leaked tokens before a push; weights and other binary files are not text and are skipped.
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".jinja", ".csv", ".tsv", ".log", ".py", ".toml",
                 ".cfg", ".ini"}

# Never published: tracker logs, temporary files (atomic writes, half-finished exports and checkpoints).
ALWAYS_IGNORED = ["runs/", "logs/", "tensorboard/", "wandb/", "trackio/", "*events.out.tfevents*", "*.tmp", ".tmp*",
                  "*/.tmp*"]
# Published only with include_checkpoints: intermediate checkpoints and optimizer/scheduler/RNG state.
TRAINING_STATE = ["checkpoints/", "checkpoint-*/", "optimizer.*", "scheduler.*", "scaler.pt", "random_states_*",
                  "rng_state*", "custom_checkpoint_*"]

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------- secrets


def _known_tokens() -> list[str]:
    return [token for name in TOKEN_ENV_VARS if (token := os.environ.get(name, "").strip())]


def scrub_secrets(value: T) -> T:
    """Replace Hub tokens (the current HF_TOKEN and anything shaped like `hf_...`) with [REDACTED].

    Takes a string, or a dict/list/tuple of them (a tracker config, a resolved recipe), and returns the same shape.
    """
    if isinstance(value, str):
        for token in _known_tokens():
            value = value.replace(token, REDACTED)
        return TOKEN_PATTERN.sub(REDACTED, value)
    if isinstance(value, dict):
        return {key: scrub_secrets(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_secrets(item) for item in value)
    return value


def contains_secret(text: str) -> bool:
    return scrub_secrets(text) != text


def files_with_secrets(folder: str | os.PathLike, relative_paths: Iterable[str]) -> list[str]:
    """The text files among `relative_paths` (inside `folder`) that contain a token."""
    leaked = []
    for relative in relative_paths:
        path = Path(folder) / relative
        if path.suffix.lower() in TEXT_SUFFIXES and contains_secret(path.read_text(encoding="utf-8", errors="ignore")):
            leaked.append(relative)
    return leaked


# ------------------------------------------------------------------------------------------------------------- plot


def loss_curves(log_history: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) for the training and the validation loss; a curve with no finite point is left out."""
    curves = {}
    for label, key in (("training loss", TRAIN_LOSS_KEY), ("validation loss", VALIDATION_LOSS_KEY)):
        points = [(int(r["step"]), float(r[key])) for r in log_history
                  if "step" in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            steps, values = zip(*points)
            curves[label] = (list(steps), list(values))
    return curves


def training_curves_figure(log_history: Sequence[dict[str, Any]]):
    """A matplotlib Figure of the loss curves (None when there is nothing to plot); no pyplot global state."""
    from matplotlib.figure import Figure

    curves = loss_curves(log_history)
    if not curves:
        return None
    figure = Figure(figsize=(7, 4.2), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    styles = {"training loss": {"color": "#1f77b4", "linewidth": 1.4},
              "validation loss": {"color": "#d62728", "linewidth": 2.0, "marker": "o", "markersize": 4}}
    for label, (steps, values) in curves.items():
        axes.plot(steps, values, label=label, **styles[label])
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title("Training and validation loss")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return figure


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Save the training and validation loss against step as a PNG; None when the log has no loss."""
    figure = training_curves_figure(log_history)
    if figure is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", metadata={"Software": None})
    os.replace(temporary, path)
    return path


# ------------------------------------------------------------------------------------------------------- model card


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """The project's commit (with a note when the checkout has uncommitted changes); None outside a checkout."""
    if not (root / ".git").exists():  # installed as a package: never report an unrelated enclosing repository
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    commit = head.stdout.strip()
    return f"{commit} (with uncommitted changes)" if dirty.returncode == 0 and dirty.stdout.strip() else commit


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _split_metric(key: str) -> tuple[str | None, str]:
    for split in RESULT_SPLITS:
        if key.startswith(split + "_"):
            return split, key[len(split) + 1:]
    return None, key


def _sorted_results(results: dict[str, Any]) -> list[tuple[str, float]]:
    """Finite numbers only, grouped by split (validation, test, train, others) in their given order."""
    finite = [(key, value) for key, value in results.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]
    rank = {split: index for index, split in enumerate(RESULT_SPLITS)}
    return sorted(finite, key=lambda item: rank.get(_split_metric(item[0])[0], len(rank)))


def _format_number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def _is_hub_id(name: str) -> bool:
    return not Path(name).exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

## How to use

```python
from transformers import pipeline

model = pipeline("{{ pipeline_tag }}", model="{{ model_ref }}")
```
{% if results_rows %}
## Results

| split | metric | value |
| --- | --- | ---: |
{% for split, metric, value in results_rows -%}
| {{ split }} | {{ metric }} | {{ value }} |
{% endfor %}{% endif %}{% if plot_file %}
## Training curves

![Training and validation loss against optimizer step]({{ plot_file }})
{% endif %}
## How it was made

| item | value |
| --- | --- |
{% for name, value in provenance -%}
| {{ name }} | {{ value }} |
{% endfor %}
Library versions: {{ versions }}.
{% if launch_command %}
Launch command:

```bash
{{ launch_command }}
```
{% endif %}{% if recipe_yaml %}
The resolved recipe (every setting of the run; rerun it with `--config` pointing to this file):

```yaml
{{ recipe_yaml }}
```
{% endif %}
## Limitations

{{ limitations }}
{% for title, body in extra_sections %}
## {{ title }}

{{ body }}
{% endfor %}"""


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    model_name: str,
    pipeline_tag: str,
    task_name: str,
    results: dict[str, float] | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] | None = None,
    recipe_yaml_path: str | os.PathLike | None = None,
    launch_command: str | None = None,
    tokens_seen: int | None = None,
    wall_time_s: float | None = None,
    dataset_fingerprint: str | None = None,
    hardware: str | None = None,
    plot_path: str | os.PathLike | None = None,
    extra_sections: dict[str, str] | None = None,
    repo_id: str | None = None,
    is_adapter: bool | None = None,
    num_parameters: int | None = None,
    dataset_label: str | None = None,
) -> Path:
    """Write README.md in `output_dir`: Hub metadata + model-index, usage, results, plot, provenance, limitations.

    `results` maps `<split>_<metric>` (e.g. validation_perplexity) to a number; the split goes into the model-index.
    `is_adapter` defaults to whether `output_dir` holds adapter_config.json (then library_name is peft).
    `dataset_label` names the evaluation data when `datasets` holds no Hub id (local files, the embedded corpus).
    """
    output_dir = Path(output_dir)
    if is_adapter is None:
        is_adapter = (output_dir / "adapter_config.json").is_file()
    hub_base = base_model if base_model and _is_hub_id(base_model) else None
    hub_datasets = [name for name in datasets or [] if _is_hub_id(name)]
    local_datasets = [f"local dataset `{Path(name).name}`" for name in datasets or [] if not _is_hub_id(name)]
    data_label = ", ".join(hub_datasets + local_datasets) or dataset_label or "local data"
    # model-index wants a dataset id; for local data a slug of the label stands in for it.
    eval_dataset = hub_datasets[0] if hub_datasets else re.sub(r"[^\w.]+", "-", data_label).strip("-").lower()

    eval_results, results_rows = [], []
    for key, value in _sorted_results(results or {}):
        split, metric = _split_metric(key)
        results_rows.append((split or "", metric.replace("_", " "), _format_number(value)))
        if metric in DATA_STATISTICS:
            continue
        eval_results.append(EvalResult(
            task_type=pipeline_tag, task_name=task_name, dataset_type=eval_dataset,
            dataset_name=dataset_label or data_label, dataset_split=split, metric_type=metric,
            metric_name=metric.replace("_", " "), metric_value=float(value),
        ))

    card_data = ModelCardData(
        model_name=model_name,
        base_model=hub_base,
        datasets=hub_datasets or None,
        license=license,
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag=pipeline_tag,
        tags=["llm-recipes", pipeline_tag, *(["lora"] if is_adapter else []), *(tags or [])],
        eval_results=eval_results or None,
    )

    origin = "trained from scratch"
    base_label = None  # a local checkpoint is named by its folder, not by a path on this machine
    if base_model:
        base_label = f"[{base_model}](https://huggingface.co/{base_model})" if hub_base else (
            f"the local checkpoint `{Path(base_model).name}`")
        origin = f"fine-tuned from {base_label}"
    kind = "a LoRA adapter (load it on top of its base model)" if is_adapter else "a model"
    size = f" with {num_parameters / 1e6:,.1f}M parameters" if num_parameters else ""
    summary = f"**{task_name}**: {kind}{size}, {origin} with llm-recipes on {data_label}."

    provenance = [
        ("base model", base_label or "none (trained from scratch)"),
        ("data", data_label),
        ("dataset fingerprint", f"`{dataset_fingerprint}`" if dataset_fingerprint else "not recorded"),
        ("tokens seen", f"{tokens_seen:,}" if tokens_seen is not None else "not recorded"),
        ("hardware", hardware or "not recorded"),
        ("wall time", f"{format_duration(wall_time_s)} ({wall_time_s:,.1f} s)" if wall_time_s is not None
         else "not recorded"),
        ("llm-recipes commit", f"`{commit}`" if (commit := git_commit()) else "unknown (not run from a git checkout)"),
    ]
    recipe_yaml = None
    if recipe_yaml_path is not None and Path(recipe_yaml_path).is_file():
        recipe_yaml = Path(recipe_yaml_path).read_text(encoding="utf-8").rstrip()
    plot_file = None
    if plot_path is not None:
        plot_path = Path(plot_path)
        plot_file = plot_path.name if plot_path.resolve().parent == output_dir.resolve() else os.path.relpath(
            plot_path, output_dir)
    limitations = (
        f"This is a small model trained briefly{f' ({tokens_seen:,} tokens)' if tokens_seen else ''}, made to "
        "demonstrate and test a training recipe. Expect fluent-looking but often wrong or incoherent output; it "
        "inherits the biases of its training data and has had no safety tuning or evaluation beyond the numbers "
        "above. Do not use it for decisions about people or in production."
    )
    card = ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        model_name=model_name,
        pipeline_tag=pipeline_tag,
        summary=summary,
        model_ref=repo_id or model_name,
        results_rows=results_rows,
        plot_file=plot_file,
        provenance=provenance,
        versions=", ".join(f"{name} {version}" for name, version in library_versions().items()),
        launch_command=launch_command,
        recipe_yaml=recipe_yaml,
        limitations=limitations,
        extra_sections=list((extra_sections or {}).items()),
    )
    path = output_dir / CARD_FILE
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(scrub_secrets(str(card)), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------------- push


@dataclass
class PushConfig:
    """Publish an existing output folder (model or LoRA adapter) to the Hugging Face Hub."""

    folder: str = field(metadata={"help": "The run's output folder (holding config.json or adapter_config.json)."})
    hub_model_id: str = field(
        metadata={"help": "Hub repository id, `user/name` or `name` (then under your own account)."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    include_checkpoints: bool = field(
        default=False,
        metadata={"help": "Also upload checkpoints/ (intermediate checkpoints with optimizer states)."},
    )
    commit_message: str = field(
        default="Upload model trained with llm-recipes", metadata={"help": "The Hub commit's message."}
    )


def upload_ignore_patterns(include_checkpoints: bool = False) -> list[str]:
    return ALWAYS_IGNORED + ([] if include_checkpoints else TRAINING_STATE)


def files_to_upload(folder: str | os.PathLike, include_checkpoints: bool = False) -> list[str]:
    """The folder's files, relative and sorted, that a push publishes (the same filter `upload_folder` applies)."""
    folder = Path(folder)
    every_file = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(every_file, ignore_patterns=upload_ignore_patterns(include_checkpoints)))


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    include_checkpoints: bool = False,
    commit_message: str = "Upload model trained with llm-recipes",
) -> str:
    """Create the repository if needed and upload the final model folder; return the commit URL.

    `token=None` lets huggingface_hub resolve it (HF_TOKEN, then the `hf auth login` token). An adapter folder is
    pushed as it is: the adapter, its tokenizer and card, never merged weights.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such output folder")
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise ValueError(f"{folder}: holds neither config.json nor adapter_config.json; is it a finished run?")
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    if token is None and get_token() is None:
        raise RuntimeError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (write access needed)")
    uploads = files_to_upload(folder, include_checkpoints)
    leaked = files_with_secrets(folder, uploads)
    if leaked:
        raise ValueError(f"refusing to push {folder}: a Hub token appears in {', '.join(leaked)}; "
                         "remove it (llm_recipes.hub.scrub_secrets) and push again")
    if not (folder / CARD_FILE).is_file():
        logger.warning("%s has no %s: the Hub page will have no model card", folder, CARD_FILE)

    api = HfApi()
    repo_url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    logger.info("Uploading %d files from %s to %s", len(uploads), folder, repo_url.repo_id)
    commit = api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        token=token,
        commit_message=commit_message,
        ignore_patterns=upload_ignore_patterns(include_checkpoints),
    )
    return commit.commit_url
