"""Publishing: the push at the HTTP level against a fake Hub, the model card round trip, the plot, secret scrubbing."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
from pathlib import Path

import httpx2
import numpy as np
import pytest
from conftest import load_recipe
from huggingface_hub import ModelCard, constants, set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook
from PIL import Image

from llm_recipes import hub

SENTINEL = "hf_SENTINELsentinel1234567890"
ENDPOINT = "https://hub.invalid"
USER = "someuser"

push_recipe = load_recipe("push_to_hub")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """Answers the Hub API calls a push makes, keeps the committed files, and records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/api/repos/create":
            payload = json.loads(request.content)
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            if repo_id in self.repos:
                return httpx2.Response(409, json={"error": "You already created this model repo",
                                                  "url": f"{ENDPOINT}/{repo_id}"})
            self.repos[repo_id] = {}
            return httpx2.Response(200, json={"url": f"{ENDPOINT}/{repo_id}", "name": repo_id})
        if request.method == "POST" and path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/main", path):
            stored = self.repos[match.group(1)]
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                      "oid": git_blob_oid(stored[f["path"]]) if f["path"] in stored else None}
                     for f in json.loads(request.content)["files"]]
            return httpx2.Response(200, json={"files": files, "commitOid": "0" * 40})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/main", path):
            repo_id = match.group(1)
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            added = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                     for item in lines if item["key"] == "file"}
            self.repos[repo_id].update(added)
            oid = hashlib.sha1(request.content).hexdigest()
            self.commits.append({"repo_id": repo_id, "header": lines[0]["value"], "files": added})
            return httpx2.Response(200, json={"commitUrl": f"{ENDPOINT}/{repo_id}/commit/{oid}", "commitOid": oid,
                                              "pullRequestUrl": None})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(/revision/main)?", path):
            return httpx2.Response(200, json={"id": match.group(1), "sha": "1" * 40, "siblings": []})
        return httpx2.Response(404, json={"error": f"fake hub: unexpected {request.method} {path}"})


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """Route huggingface_hub's HTTP client to a FakeHub; online mode, a fake endpoint, the sentinel token in env."""
    server = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", ENDPOINT)
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub then logs every request as a curl command
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(server.handle),
                                             event_hooks={"request": [hf_request_event_hook]}))
    yield server
    set_client_factory(default_client_factory)


def make_run_folder(root: Path) -> Path:
    """An output folder as a recipe leaves it, with the things that must not be published."""
    out = root / "run"
    files = {
        "model.safetensors": bytes(range(256)) * 8,
        "config.json": b'{"model_type": "llama"}',
        "generation_config.json": b'{"max_new_tokens": 8}',
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"model_max_length": 32}',
        "all_results.json": b'{"validation_loss": 2.5}',
        "recipe.yaml": b"learning_rate: 0.001\n",
        "checkpoints/checkpoint-4/model.safetensors": b"old weights",
        "checkpoints/checkpoint-4/optimizer.bin": b"adam moments",
        "checkpoints/checkpoint-4/trainer_state.json": b"{}",
        "runs/Jan01/events.out.tfevents.123.host": b"tensorboard",
        "logs/train.log": b"step 1 loss 3.0",
        ".tmp-export/model.safetensors": b"half written",
        ".all_results.json.tmp": b"{",
    }
    for name, content in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    log = [{"step": s, "loss": 4.0 - 0.2 * s} for s in range(1, 9)] + [{"step": 8, "eval_validation_loss": 2.5}]
    plot = hub.plot_training_curves(log, out / hub.PLOT_FILE)
    hub.write_model_card(out, model_name="run", pipeline_tag="text-generation", task_name="Causal LM",
                         results={"validation_loss": 2.5}, recipe_yaml_path=out / "recipe.yaml", plot_path=plot)
    return out


PUBLISHED = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "all_results.json", "recipe.yaml", "README.md", "training_curves.png"}


def test_push_commits_exactly_the_model_folder_and_the_token_only_in_the_auth_header(
    fake_hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    out = make_run_folder(tmp_path)

    url = hub.push_to_hub(out, "tiny-model", private=True)

    # create-repo, preupload and commit calls, all to the configured endpoint and all authenticated.
    calls = [(r.method, r.url.path) for r in fake_hub.requests]
    assert ("POST", "/api/repos/create") in calls
    assert ("POST", f"/api/models/{USER}/tiny-model/preupload/main") in calls
    assert ("POST", f"/api/models/{USER}/tiny-model/commit/main") in calls
    assert json.loads(fake_hub.requests[calls.index(("POST", "/api/repos/create"))].content)["visibility"] == "private"
    assert {r.url.host for r in fake_hub.requests} == {"hub.invalid"}
    # Every call but huggingface_hub's read of its public agent registry is authenticated with the token.
    api_calls = [r for r in fake_hub.requests if r.url.path != "/api/agent-harnesses"]
    assert all(r.headers.get("authorization") == f"Bearer {SENTINEL}" for r in api_calls)
    assert url.startswith(f"{ENDPOINT}/{USER}/tiny-model/commit/")

    # The commit holds exactly the final model folder, byte for byte.
    assert len(fake_hub.commits) == 1
    committed = fake_hub.commits[0]["files"]
    assert set(committed) == PUBLISHED == set(hub.files_to_upload(out))
    assert all(committed[name] == (out / name).read_bytes() for name in PUBLISHED)

    # The token appears only in the Authorization header: no URL, no body, no log line, no output file.
    assert all(SENTINEL not in str(r.url) and SENTINEL.encode() not in r.content for r in fake_hub.requests)
    printed = capfd.readouterr()
    assert "preupload" in caplog.text  # the debug log of every request was captured ...
    assert SENTINEL not in caplog.text + printed.out + printed.err  # ... without the token
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]


def test_second_push_uploads_only_the_changed_file(fake_hub: FakeHub, tmp_path: Path) -> None:
    out = make_run_folder(tmp_path)
    hub.push_to_hub(out, f"{USER}/tiny-model")
    (out / "all_results.json").write_text('{"validation_loss": 2.25}')

    hub.push_to_hub(out, f"{USER}/tiny-model")

    assert [c["repo_id"] for c in fake_hub.commits] == [f"{USER}/tiny-model"] * 2
    assert fake_hub.commits[1]["files"] == {"all_results.json": b'{"validation_loss": 2.25}'}
    assert fake_hub.repos[f"{USER}/tiny-model"]["all_results.json"] == b'{"validation_loss": 2.25}'


def test_cli_include_checkpoints_uploads_them_but_never_tracker_logs(fake_hub: FakeHub, tmp_path: Path) -> None:
    out = make_run_folder(tmp_path)
    push_recipe.main(["--folder", str(out), "--hub_model_id", f"{USER}/with-ckpt", "--include_checkpoints", "true"])
    committed = set(fake_hub.commits[0]["files"])
    checkpoint = {"checkpoints/checkpoint-4/model.safetensors", "checkpoints/checkpoint-4/optimizer.bin",
                  "checkpoints/checkpoint-4/trainer_state.json"}
    assert committed == PUBLISHED | checkpoint


def test_push_refuses_a_folder_with_a_leaked_token(fake_hub: FakeHub, tmp_path: Path) -> None:
    out = make_run_folder(tmp_path)
    (out / "recipe.yaml").write_text(f"learning_rate: 0.001\nnote: {SENTINEL}\n")
    with pytest.raises(ValueError, match=r"token appears in recipe\.yaml"):
        hub.push_to_hub(out, f"{USER}/leaky")
    assert fake_hub.requests == []


def test_push_needs_a_token_and_online_mode(fake_hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    out = make_run_folder(tmp_path)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(RuntimeError, match="hf auth login"):
        hub.push_to_hub(out, f"{USER}/x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        hub.push_to_hub(out, f"{USER}/x", token="hf_explicitTokenValue123")
    assert fake_hub.requests == []


def test_scrub_secrets_redacts_env_token_and_token_shaped_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "oauth-token-value-without-prefix")
    config = {"cmd": "train --note oauth-token-value-without-prefix", "list": ["hf_abcdefghijKLMNOP123"], "n": 3}
    assert hub.scrub_secrets(config) == {"cmd": "train --note [REDACTED]", "list": ["[REDACTED]"], "n": 3}
    assert hub.scrub_secrets("hf_short stays") == "hf_short stays"


def test_model_card_round_trips_with_metadata_and_no_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    recipe = out / "recipe.yaml"
    recipe.write_text(f"learning_rate: 0.0002\nlora_r: 8\nsecret_note: {SENTINEL}\n")
    log = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_validation_loss": 2.4}]
    plot = hub.plot_training_curves(log, out / hub.PLOT_FILE)

    path = hub.write_model_card(
        out, model_name="tiny-lora", base_model="someorg/tiny-base", datasets=["someorg/chat-data"],
        license="mit", tags=["sft"], pipeline_tag="text-generation", task_name="Supervised fine-tuning",
        results={"validation_loss": 2.4, "validation_perplexity": 11.02, "validation_tokens": 512.0,
                 "test_perplexity": 11.5, "train_nan": float("nan")},
        recipe_yaml_path=recipe, launch_command=f"accelerate launch recipes/sft.py --note {SENTINEL}",
        tokens_seen=12345, wall_time_s=3725.0, dataset_fingerprint="fp-1234", hardware="1 x test CPU (fp32)",
        plot_path=plot, extra_sections={"Chat template": "role : content ."},
    )

    text = path.read_text()
    assert SENTINEL not in text and "[REDACTED]" in text
    card = ModelCard.load(path)
    data = card.data
    assert data.base_model == "someorg/tiny-base" and data.datasets == ["someorg/chat-data"]
    assert data.license == "mit" and data.pipeline_tag == "text-generation" and data.library_name == "peft"
    assert set(data.tags) == {"llm-recipes", "text-generation", "lora", "sft"}
    assert data.model_name == "tiny-lora"
    reported = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert reported == {("validation", "loss"): 2.4, ("validation", "perplexity"): 11.02, ("test", "perplexity"): 11.5}
    assert {r.dataset_type for r in data.eval_results} == {"someorg/chat-data"}
    assert {r.task_type for r in data.eval_results} == {"text-generation"}
    for expected in ("](training_curves.png)", "lora_r: 8", "fp-1234", "12,345", "1 h 02 min 05 s",
                     "1 x test CPU (fp32)", "transformers ", "peft ", "## Limitations", "## Chat template",
                     "| validation | perplexity | 11.0200 |"):
        assert expected in card.text, expected
    assert "nan" not in text.lower().replace("nats", "")
    # The card's own text parses back identically (metadata intact through a second save).
    card.save(tmp_path / "again.md")
    assert ModelCard.load(tmp_path / "again.md").data.to_dict() == data.to_dict()


def test_plot_is_a_png_of_the_logged_curves(tmp_path: Path) -> None:
    train = [{"step": s, "loss": 5.0 * 0.9**s, "learning_rate": 1e-3} for s in range(1, 41)]
    evals = [{"step": s, "eval_validation_loss": 4.0 * 0.93**s, "eval_validation_perplexity": 9.0}
             for s in range(10, 41, 10)]
    log = sorted(train + evals, key=lambda r: r["step"])

    figure = hub.training_curves_figure(log)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert list(lines["training loss"].get_xdata()) == [r["step"] for r in train]
    assert list(lines["training loss"].get_ydata()) == [r["loss"] for r in train]
    assert list(lines["validation loss"].get_xdata()) == [10, 20, 30, 40]
    assert list(lines["validation loss"].get_ydata()) == [r["eval_validation_loss"] for r in evals]

    path = hub.plot_training_curves(log, tmp_path / "curves.png")
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 300
    pixels = np.asarray(image.convert("RGB")).astype(int)

    def pixels_of(hex_colour: str) -> int:
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).sum(axis=-1) < 40).sum())

    assert pixels_of("#1f77b4") > 300 and pixels_of("#d62728") > 300  # both curves are drawn
    assert hub.plot_training_curves([{"step": 1, "learning_rate": 1e-3}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_card_keeps_local_paths_out_of_hub_metadata(tmp_path: Path) -> None:
    """Local data and a local base checkpoint are named in the text, never as Hub ids nor by their full path."""
    corpus, base = tmp_path / "my_corpus", tmp_path / "outputs" / "pretrain"
    corpus.mkdir()
    base.mkdir(parents=True)
    path = hub.write_model_card(tmp_path / "out", model_name="m", base_model=str(base), datasets=[str(corpus)],
                                pipeline_tag="fill-mask", task_name="Masked LM", results={"validation_accuracy": 0.5})
    data = ModelCard.load(path).data
    assert data.base_model is None and data.datasets is None and data.library_name == "transformers"
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in data.eval_results] == [
        ("local-dataset-my_corpus", "accuracy", 0.5)]
    assert "`my_corpus`" in path.read_text() and str(tmp_path) not in path.read_text()
