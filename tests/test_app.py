"""The Gradio app on tiny random checkpoints of every task, served on localhost and driven through gradio_client."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `app` is a folder at the project root, next to `tests`

from tiny_checkpoints import (  # noqa: E402
    build_causal_lm,
    build_classifier,
    build_lora_adapter,
    build_masked_lm,
)

from app.app import (  # noqa: E402
    CAUSAL_LM,
    CLASSIFICATION,
    MASKED_LM,
    GenerationSettings,
    Limits,
    build_demo,
    classify,
    complete,
    create_app,
    encode_prompt,
    find_newest_output,
    launch_options,
    load_checkpoint,
    parse_args,
    stream_generation,
)

# Small caps so that a test can exceed each one cheaply.
LIMITS = Limits(max_input_chars=300, max_input_tokens=48, max_new_tokens=40, generation_timeout_s=60)
GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(url: str, **kwargs) -> gradio_client.Client:
    """A client that never phones home and waits for a busy CI machine instead of httpx's 5 s default."""
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 60}, **kwargs)


def new_tokens(status: str) -> int:
    match = re.search(r"(\d+) new tokens", status)
    assert match, f"no token count in status {status!r}"
    return int(match.group(1))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    causal = build_causal_lm(root / "pretrained")
    return {
        "causal": causal,
        "lora": build_lora_adapter(causal, root / "sft-lora"),
        "mlm": build_masked_lm(root / "mlm"),
        "classifier": build_classifier(root / "sentiment"),
    }


@pytest.fixture(scope="module")
def checkpoints(folders):
    return {name: load_checkpoint(str(folder)) for name, folder in folders.items()}


def serve_in_process(checkpoint_list, limits: Limits = LIMITS, extra_args: tuple[str, ...] = ()):
    args = parse_args(["--port", str(free_port()), *extra_args])
    demo = build_demo(checkpoint_list, limits)
    demo.launch(**launch_options(args), prevent_thread_lock=True, quiet=True)
    return demo


@pytest.fixture(scope="module")
def causal_app(checkpoints):
    """--model a pretrained causal LM (completion) --compare its LoRA chat fine-tune."""
    demo = serve_in_process([checkpoints["causal"], checkpoints["lora"]])
    yield connect(demo.local_url)
    demo.close()


@pytest.fixture(scope="module")
def encoder_app(checkpoints):
    """--model a masked LM --compare a sentiment classifier."""
    demo = serve_in_process([checkpoints["mlm"], checkpoints["classifier"]])
    yield connect(demo.local_url)
    demo.close()


def test_task_is_detected_from_each_checkpoint(checkpoints, folders):
    assert checkpoints["causal"].task == CAUSAL_LM and not checkpoints["causal"].is_chat
    assert checkpoints["mlm"].task == MASKED_LM
    assert checkpoints["classifier"].task == CLASSIFICATION
    lora = checkpoints["lora"]
    assert lora.task == CAUSAL_LM and lora.is_chat  # the adapter folder's tokenizer brings a chat template
    assert lora.base_model == str(folders["causal"])


def test_lora_adapter_is_merged_into_its_base(checkpoints):
    base, merged = checkpoints["causal"].model, checkpoints["lora"].model
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not any("lora" in key for key in merged.state_dict())
    assert not base.state_dict()[name].equal(merged.state_dict()[name])


def test_completion_streams_tokens_and_caps_them(causal_app):
    job = causal_app.submit("the cat sat on", **GREEDY, max_new_tokens=40, api_name="/generate")
    updates = [text for text, _ in job]
    text, status = job.result()
    assert len(set(updates)) > 5, "tokens should arrive as many streamed updates, not one block"
    assert all(text.startswith(update) for update in updates)
    assert new_tokens(status) == 40  # the model has no end-of-text token, so it stops only at the cap


def test_chat_checkpoint_streams_a_reply(causal_app):
    job = causal_app.submit("the dog ran", **GREEDY, max_new_tokens=12, api_name="/chat_2")
    updates = list(job)
    reply, status = job.result()
    assert len(updates) > 1 and reply
    assert new_tokens(status) == 12


def test_compare_streams_both_checkpoints_side_by_side(causal_app, checkpoints):
    job = causal_app.submit("the cat", **GREEDY, max_new_tokens=20, api_name="/compare")
    updates = list(job)
    pretrained, finetuned = job.result()
    assert len(updates) > 2
    assert pretrained and finetuned and pretrained != finetuned
    # Greedy, so each side must equal what its checkpoint writes alone: neither was cut short by the other.
    alone = complete(checkpoints["causal"], LIMITS, "the cat", **GREEDY, max_new_tokens=20)
    assert pretrained == list(alone)[-1][0]


def test_one_compare_side_finishing_does_not_stop_the_other(checkpoints):
    checkpoint, shared_cancel = checkpoints["causal"], threading.Event()
    input_ids = encode_prompt(checkpoint, "the cat", None, LIMITS)
    list(
        stream_generation(checkpoint, input_ids, GenerationSettings(**GREEDY, max_new_tokens=5), LIMITS, shared_cancel)
    )
    assert not shared_cancel.is_set()
    shared_cancel.set()  # what compare() does when the request ends: every side stops at its next token
    settings = GenerationSettings(**GREEDY, max_new_tokens=30)
    *_, (_, status) = stream_generation(checkpoint, input_ids, settings, LIMITS, shared_cancel)
    assert new_tokens(status) < 30 and "cancellation" in status


def test_max_new_tokens_above_the_cap_is_refused_by_the_server(causal_app):
    with pytest.raises(gradio_client.exceptions.AppError, match="greater than maximum value 40"):
        causal_app.predict("the cat", **GREEDY, max_new_tokens=10_000, api_name="/generate")


def test_handler_clamps_max_new_tokens_whatever_it_is_given(checkpoints):
    *_, (_, status) = complete(checkpoints["causal"], LIMITS, "the cat", **GREEDY, max_new_tokens=10_000)
    assert new_tokens(status) == LIMITS.max_new_tokens
    assert GenerationSettings(temperature=-3, top_p=7, max_new_tokens=0).clamped(LIMITS) == GenerationSettings(
        temperature=0.0, top_p=1.0, top_k=50, max_new_tokens=1, repetition_penalty=1.0
    )


def test_over_long_input_gets_a_clear_error(causal_app, encoder_app):
    with pytest.raises(gradio_client.exceptions.AppError, match="301 characters long; .* at most 300"):
        causal_app.predict("a" * 301, **GREEDY, max_new_tokens=5, api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError, match="60 tokens long; .* at most 48"):
        causal_app.predict("cat " * 60, **GREEDY, max_new_tokens=5, api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError, match="at most 48"):
        encoder_app.predict("good " * 60, api_name="/classify_2")
    with pytest.raises(gradio_client.exceptions.AppError, match="at most 300"):
        causal_app.predict("b" * 400, **GREEDY, max_new_tokens=5, api_name="/chat_2")


def test_cancelled_request_stops_generation_on_the_server(checkpoints, monkeypatch):
    model = checkpoints["causal"].model
    generated: list[int] = []
    original_generate = model.generate

    def recording_generate(**kwargs):
        output = original_generate(**kwargs)
        generated.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    monkeypatch.setattr(model, "generate", recording_generate)
    demo = serve_in_process([checkpoints["causal"]], Limits(max_new_tokens=3000))
    try:
        client = connect(demo.local_url)
        job = client.submit("the cat", **GREEDY, max_new_tokens=3000, api_name="/generate")
        while not job.outputs():
            time.sleep(0.05)
        job.cancel()
        for _ in range(600):  # generate() returns once the cancel reaches it
            if generated:
                break
            time.sleep(0.1)
    finally:
        demo.close()
    assert generated and generated[0] < 3000


def test_fill_mask_returns_top_k_probabilities(encoder_app):
    predictions, filled = encoder_app.predict("the [MASK] sat on the mat .", 4, api_name="/fill_mask")
    confidences = {item["label"]: item["confidence"] for item in predictions["confidences"]}
    assert len(confidences) == 4 and 0 < sum(confidences.values()) <= 1
    assert "[MASK]" not in filled and filled.startswith("the ")
    with pytest.raises(gradio_client.exceptions.AppError, match=r"mask token \[MASK\]"):
        encoder_app.predict("no mask here", 4, api_name="/fill_mask")


def test_classifier_returns_label_probabilities(encoder_app):
    result = encoder_app.predict("a good day", api_name="/classify_2")
    confidences = {item["label"]: item["confidence"] for item in result["confidences"]}
    assert set(confidences) == {"negative", "positive"}
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)


def test_multi_label_and_regression_classifiers(tmp_path):
    limits = Limits()
    multi = load_checkpoint(
        str(build_classifier(tmp_path / "topics", ("sport", "food", "art"), "multi_label_classification"))
    )
    scores = classify(multi, limits, "a good day")
    assert set(scores) == {"sport", "food", "art"} and all(0 < score < 1 for score in scores.values())
    assert sum(scores.values()) > 1  # independent sigmoids, three near 0.5 each: not a softmax
    regression = load_checkpoint(str(build_classifier(tmp_path / "rating", ("rating",), "regression")))
    assert isinstance(classify(regression, limits, "a good day"), float)


def test_compare_runs_a_masked_lm_and_a_classifier(encoder_app):
    predictions, labels = encoder_app.predict("the [MASK] was good", api_name="/compare")
    assert len(predictions["confidences"]) == 5 and len(labels["confidences"]) == 2


def test_page_serves_no_files(causal_app, folders):
    for path in (folders["causal"] / "config.json", Path("/etc/passwd")):
        response = httpx.get(f"{causal_app.src}gradio_api/file={path}")
        assert response.status_code == 403, path


def test_hardened_defaults():
    args = parse_args([])
    options = launch_options(args)
    assert options["server_name"] == "127.0.0.1" and options["share"] is False and options["auth"] is None
    assert options["allowed_paths"] == []
    assert parse_args(["--auth", "ada:secret"]).auth == ("ada", "secret")
    with pytest.raises(SystemExit):
        parse_args(["--auth", "no-colon"])
    with pytest.raises(SystemExit):
        parse_args(["--max-new-tokens", "0"])


def test_queue_is_bounded(checkpoints):
    demo = build_demo([checkpoints["classifier"]], Limits(concurrency=3, queue_size=7))
    assert demo._queue.max_size == 7 and demo._queue.default_concurrency_limit == 3


def test_auth_is_required_when_set(checkpoints):
    demo = serve_in_process([checkpoints["classifier"]], extra_args=("--auth", "ada:secret"))
    try:
        assert httpx.get(f"{demo.local_url}config").status_code == 401
        with pytest.raises(Exception):  # noqa: B017  (the client raises a bare ValueError or an HTTP error)
            connect(demo.local_url, auth=("ada", "wrong"))
        client = connect(demo.local_url, auth=("ada", "secret"))
        assert client.predict("a good day", api_name="/classify")["label"] in {"negative", "positive"}
    finally:
        demo.close()


def test_newest_output_is_found_and_an_empty_folder_explains_itself(tmp_path, folders):
    outputs = tmp_path / "outputs"
    assert find_newest_output(outputs) is None
    help_page = create_app(parse_args(["--outputs", str(outputs)]))
    assert "accelerate launch recipes/pretrain.py" in str(help_page.config)

    older = shutil.copytree(folders["classifier"], outputs / "sentiment")
    newer = shutil.copytree(folders["lora"], outputs / "sft" / "final")
    (outputs / "logs").mkdir()
    (outputs / "logs" / "config.json").write_text("{}")  # a config without weights is not a model
    shutil.copytree(folders["mlm"], outputs / "old-mlm")
    for folder, age in ((older, 100), (newer, 10), (outputs / "old-mlm", 1000)):
        stamp = time.time() - age
        for file in folder.iterdir():
            os.utime(file, (stamp, stamp))
    assert find_newest_output(outputs) == newer
    assert load_checkpoint(str(outputs)).source == str(newer)  # a folder of runs opens its newest model


def test_a_wrong_model_path_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="No checkpoint folder at"):
        load_checkpoint(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="holds no model"):
        load_checkpoint(str(tmp_path))


@pytest.mark.slow  # a fresh interpreter imports torch and gradio: 20-60 s on a busy 2-core machine
def test_script_runs_from_the_command_line(folders):
    """`python app/app.py --model ...` as a user runs it: a separate process, then one request."""
    port = free_port()
    script = REPO / "app" / "app.py"
    command = [sys.executable, "-u", str(script), "--model", str(folders["classifier"]), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "Running on local URL" in line:
                break
        else:
            pytest.fail("the app exited before serving")
        client = connect(f"http://127.0.0.1:{port}/")
        assert client.predict("a good day", api_name="/classify")["label"] in {"negative", "positive"}
    finally:
        process.terminate()
        process.wait(timeout=30)
