"""Try a checkpoint in the browser: streaming generation, fill-mask, classification, side-by-side compare.

    python app/app.py --model outputs/run                      # a recipe output folder (or a Hub id)
    python app/app.py --model outputs/pretrain --compare outputs/sft
    python app/app.py                                          # the newest recipe output under outputs/

The task comes from the checkpoint itself (`architectures` in config.json, or `task_type` in a PEFT adapter's
adapter_config.json), so one command serves every recipe's output. The server binds 127.0.0.1, never shares
publicly unless asked, and enforces its own limits on input length, new tokens, time and queue size, whatever a
client sends. This file needs only transformers, peft and gradio: nothing from llm_recipes.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    TextIteratorStreamer,
    pipeline,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

CAUSAL_LM, MASKED_LM, CLASSIFICATION = "causal-lm", "masked-lm", "classification"
AUTO_CLASSES = {
    CAUSAL_LM: AutoModelForCausalLM,
    MASKED_LM: AutoModelForMaskedLM,
    CLASSIFICATION: AutoModelForSequenceClassification,
}
ARCHITECTURE_SUFFIXES = {
    "ForCausalLM": CAUSAL_LM,
    "LMHeadModel": CAUSAL_LM,
    "ForMaskedLM": MASKED_LM,
    "ForSequenceClassification": CLASSIFICATION,
}
PEFT_TASK_TYPES = {"CAUSAL_LM": CAUSAL_LM, "SEQ_CLS": CLASSIFICATION}
DEFAULT_OUTPUT_ROOT = "outputs"
GENERATE_THREAD_NAME = "llm-recipes-generate"
# Fonts the browser already has: the page must not need the network (Gradio's default theme fetches Google fonts).
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: find, detect the task, load
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    source: str
    task: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base_model: str | None = None  # set for a LoRA adapter: what it was merged into
    _pipelines: dict[str, Any] = field(default_factory=dict, repr=False)

    def pipeline(self, task: str) -> Any:
        """A transformers pipeline over this model, built once and reused by every request."""
        if task not in self._pipelines:
            self._pipelines[task] = pipeline(task, model=self.model, tokenizer=self.tokenizer)
        return self._pipelines[task]

    @property
    def name(self) -> str:
        return Path(self.source.rstrip("/")).name or self.source

    @property
    def is_chat(self) -> bool:
        return self.task == CAUSAL_LM and bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        kind = "chat" if self.is_chat else self.task
        adapter = f", LoRA adapter merged into `{self.base_model}`" if self.base_model else ""
        return f"**{self.name}**: {kind}, {params / 1e6:.2f}M parameters{adapter} (`{self.source}`)"


def detect_task(config: PretrainedConfig) -> str:
    """The task a checkpoint was saved for: its `architectures` first, then what its model type can only mean."""
    for architecture in config.architectures or []:
        for suffix, task in ARCHITECTURE_SUFFIXES.items():
            if architecture.endswith(suffix):
                return task
    if getattr(config, "problem_type", None):
        return CLASSIFICATION
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return MASKED_LM
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CAUSAL_LM
    raise ValueError(
        f"Cannot tell the task of a {config.model_type!r} checkpoint with architectures={config.architectures}: "
        f"expected an architecture ending in one of {sorted(ARCHITECTURE_SUFFIXES)}."
    )


def read_adapter_config(source: str) -> dict[str, Any] | None:
    """adapter_config.json of a PEFT adapter (local folder or Hub repo), or None for a full model."""
    folder = Path(source)
    if folder.is_dir():
        file = folder / "adapter_config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(source).to_dict()
    except ValueError:  # peft's "Can't find adapter_config.json"
        return None


def resolve_source(source: str) -> str:
    """A model folder, or a Hub id. A folder of runs (like outputs/) resolves to the newest model inside it."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
            return str(folder)
        newest = find_newest_output(folder)
        if newest is None:
            raise ValueError(f"{source} holds no model: no config.json or adapter_config.json in it or below it.")
        return str(newest)
    if folder.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ValueError(f"No checkpoint folder at {source} (and it is not a Hub id like `owner/name`).")
    return source


def load_checkpoint(source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load a full model or a LoRA adapter (merged into its base model) with its tokenizer, ready for inference."""
    source = resolve_source(str(source))
    adapter = read_adapter_config(source)
    if adapter is None:
        task = detect_task(AutoConfig.from_pretrained(source))
        model = AUTO_CLASSES[task].from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
        base = None
    else:
        from peft import PeftModel

        base = adapter.get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"{source}/adapter_config.json has no base_model_name_or_path: which model does it adapt?"
            )
        # A recipe's adapter folder keeps the fine-tuned config (labels, problem type) next to the adapter.
        has_own_config = (Path(source) / "config.json").is_file()
        try:
            config = AutoConfig.from_pretrained(source if has_own_config else base)
            task = PEFT_TASK_TYPES.get(adapter.get("task_type")) or detect_task(config)
            model = AUTO_CLASSES[task].from_pretrained(base, config=config, dtype=dtype)
        except OSError as err:
            message = f"{source}/adapter_config.json names base model {base!r}, which cannot be loaded: {err}"
            raise ValueError(message) from err
        model = PeftModel.from_pretrained(model, source).merge_and_unload()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):  # the adapter folder has no tokenizer of its own
            tokenizer = AutoTokenizer.from_pretrained(base)
    model.to(device).eval()
    return Checkpoint(source=source, task=task, model=model, tokenizer=tokenizer, base_model=base)


def find_newest_output(root: str | Path = DEFAULT_OUTPUT_ROOT) -> Path | None:
    """The most recently written model folder under `root` (config.json + weights, or a PEFT adapter)."""
    newest: tuple[float, Path] | None = None
    for marker in ("config.json", "adapter_config.json"):
        for file in Path(root).rglob(marker):
            folder = file.parent
            weights = [folder / name for name in ("model.safetensors", "model.safetensors.index.json")]
            adapter = folder / "adapter_config.json"
            found = [path for path in (*weights, adapter) if path.is_file()]
            if not found:
                continue
            written = max(path.stat().st_mtime for path in found)
            if newest is None or written > newest[0]:
                newest = (written, folder)
    return newest[1] if newest else None


# ---------------------------------------------------------------------------------------------------------------------
# Limits the server enforces, whatever the page or an API client sends
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_input_chars: int = 2000
    max_input_tokens: int = 512
    max_new_tokens: int = 256
    generation_timeout_s: float = 60.0
    concurrency: int = 2
    queue_size: int = 64
    max_top_k_labels: int = 20

    def input_tokens_for(self, checkpoint: Checkpoint) -> int:
        return min(self.max_input_tokens, checkpoint.max_positions or self.max_input_tokens)


@dataclass
class GenerationSettings:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 128
    repetition_penalty: float = 1.0

    def clamped(self, limits: Limits) -> GenerationSettings:
        """Values inside the server's bounds: a request never gets more than `limits.max_new_tokens`."""
        return GenerationSettings(
            temperature=min(max(float(self.temperature), 0.0), 2.0),
            top_p=min(max(float(self.top_p), 0.01), 1.0),
            top_k=min(max(int(self.top_k), 0), 1000),
            max_new_tokens=min(max(int(self.max_new_tokens), 1), limits.max_new_tokens),
            repetition_penalty=min(max(float(self.repetition_penalty), 1.0), 2.0),
        )


def check_input_chars(text: str | None, limits: Limits) -> str:
    text = text or ""
    if not text.strip():
        raise gr.Error("The input is empty: type some text first.")
    if len(text) > limits.max_input_chars:
        raise gr.Error(
            f"The input is {len(text)} characters long; this server accepts at most {limits.max_input_chars}. "
            "Shorten it and try again."
        )
    return text


def check_input_tokens(count: int, checkpoint: Checkpoint, limits: Limits) -> None:
    cap = limits.input_tokens_for(checkpoint)
    if count > cap:
        raise gr.Error(
            f"The input is {count} tokens long; this server accepts at most {cap}. Shorten it and try again."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Causal LM: streaming generation
# ---------------------------------------------------------------------------------------------------------------------


class _EventStop(StoppingCriteria):
    """Stops generate() when its request ends early (stop button, closed page, timeout, a failed compare side)."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _message_text(content: Any) -> str:
    """Gradio 6 chat history stores content as a list of parts; a template needs plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def encode_prompt(checkpoint: Checkpoint, message: str, history: list[dict] | None, limits: Limits) -> torch.Tensor:
    """Token ids for the prompt: the chat template when there is one, else the raw text; oldest turns drop first."""
    tokenizer = checkpoint.tokenizer
    if not checkpoint.is_chat:
        ids = tokenizer(message, return_tensors="pt")["input_ids"]
        check_input_tokens(ids.shape[1], checkpoint, limits)
        return ids
    turns = [{"role": m["role"], "content": _message_text(m.get("content"))} for m in history or []]
    turns = [turn for turn in turns if turn["role"] in ("user", "assistant", "system") and turn["content"]]
    # A cheap bound before tokenizing: history over 16 characters per allowed token would never fit anyway.
    while turns and sum(len(turn["content"]) for turn in turns) > 16 * limits.input_tokens_for(checkpoint):
        turns.pop(0)
    while True:
        messages = [*turns, {"role": "user", "content": message}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        if ids.shape[1] <= limits.input_tokens_for(checkpoint) or not turns:
            check_input_tokens(ids.shape[1], checkpoint, limits)
            return ids
        turns.pop(0)


def stream_generation(
    checkpoint: Checkpoint,
    input_ids: torch.Tensor,
    settings: GenerationSettings,
    limits: Limits,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield (text so far, status line) as tokens arrive; generate() runs in a thread and stops when we do,
    or when `cancel` (shared by the sides of a comparison) is set."""
    settings = settings.clamped(limits)
    finished = threading.Event()
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    streamer = TextIteratorStreamer(
        tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=limits.generation_timeout_s
    )
    room = (checkpoint.max_positions or sys.maxsize) - input_ids.shape[1]
    if room <= 0:
        raise gr.Error(f"The prompt fills the model's whole context of {checkpoint.max_positions} tokens.")
    max_new_tokens = min(settings.max_new_tokens, room)
    sampling = settings.temperature > 0
    pad_token_id = model.generation_config.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids.to(model.device),
        attention_mask=torch.ones_like(input_ids, device=model.device),
        max_new_tokens=max_new_tokens,
        max_time=limits.generation_timeout_s,
        do_sample=sampling,
        repetition_penalty=settings.repetition_penalty,
        pad_token_id=pad_token_id if pad_token_id is not None else 0,
        stopping_criteria=[_EventStop(finished, *([cancel] if cancel else []))],
        streamer=streamer,
    )
    if sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            with torch.inference_mode():
                result["ids"] = model.generate(**kwargs)
        except Exception as err:  # reported to the page below, never silently lost
            result["error"] = err
            streamer.end()

    started = time.monotonic()
    worker = threading.Thread(target=run, name=GENERATE_THREAD_NAME, daemon=True)
    worker.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            yield text, "generating..."
    except queue.Empty:
        raise gr.Error(f"No new token within {limits.generation_timeout_s:.0f} s; generation stopped.") from None
    finally:  # runs on normal end, on errors, and when Gradio closes this generator (stop button, page closed)
        finished.set()
    worker.join()
    if "error" in result:
        raise gr.Error(f"Generation failed: {result['error']}")
    elapsed = time.monotonic() - started
    new_tokens = result["ids"].shape[1] - input_ids.shape[1]
    if new_tokens >= max_new_tokens:
        reason = "max new tokens" if max_new_tokens == settings.max_new_tokens else "the context length"
    elif elapsed >= limits.generation_timeout_s:
        reason = "the time limit"
    elif cancel is not None and cancel.is_set():
        reason = "cancellation"
    else:
        reason = "end of text"
    speed = new_tokens / max(elapsed, 1e-6)
    yield text, f"{new_tokens} new tokens in {elapsed:.1f} s ({speed:.1f} tokens/s), stopped by {reason}"


def complete(
    checkpoint: Checkpoint,
    limits: Limits,
    prompt: str,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    repetition_penalty: float,
) -> Iterator[tuple[str, str]]:
    """Completion handler: the continuation of the prompt, streamed."""
    prompt = check_input_chars(prompt, limits)
    input_ids = encode_prompt(checkpoint, prompt, None, limits)
    settings = GenerationSettings(temperature, top_p, top_k, max_new_tokens, repetition_penalty)
    yield from stream_generation(checkpoint, input_ids, settings, limits)


def chat(
    checkpoint: Checkpoint,
    limits: Limits,
    message: str,
    history: list[dict],
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    repetition_penalty: float,
) -> Iterator[tuple[str, str]]:
    """Chat handler: the assistant's reply to the conversation so far, streamed."""
    message = check_input_chars(message, limits)
    input_ids = encode_prompt(checkpoint, message, history, limits)
    settings = GenerationSettings(temperature, top_p, top_k, max_new_tokens, repetition_penalty)
    yield from stream_generation(checkpoint, input_ids, settings, limits)


# ---------------------------------------------------------------------------------------------------------------------
# Masked LM and classification
# ---------------------------------------------------------------------------------------------------------------------


def _encoder_input(checkpoint: Checkpoint, text: str, limits: Limits) -> str:
    text = check_input_chars(text, limits)
    check_input_tokens(len(checkpoint.tokenizer(text)["input_ids"]), checkpoint, limits)
    return text


def fill_mask(checkpoint: Checkpoint, limits: Limits, text: str, top_k: int = 5) -> tuple[dict[str, float], str]:
    """Top-k tokens (with probabilities) for the first mask, and the text with every mask filled by its best guess."""
    mask = checkpoint.tokenizer.mask_token
    text = _encoder_input(checkpoint, text, limits)
    if mask not in text:
        raise gr.Error(
            f"Put the mask token {mask} where a word should be predicted, e.g. 'Paris is the {mask} of France.'"
        )
    top_k = min(max(int(top_k), 1), limits.max_top_k_labels, len(checkpoint.tokenizer))
    predictions = checkpoint.pipeline("fill-mask")(text, top_k=top_k)
    per_mask = predictions if isinstance(predictions[0], list) else [predictions]
    top: dict[str, float] = {}
    for guess in per_mask[0]:  # two tokens can decode to the same text: keep both, told apart by id
        label = guess["token_str"] if guess["token_str"] not in top else f"{guess['token_str']} (id {guess['token']})"
        top[label] = float(guess["score"])
    filled = text
    for guesses in per_mask:
        filled = filled.replace(mask, guesses[0]["token_str"].strip() or guesses[0]["token_str"], 1)
    return top, filled


def classify(checkpoint: Checkpoint, limits: Limits, text: str) -> dict[str, float] | float:
    """Label probabilities (softmax, or independent sigmoids for multi-label); the predicted value for regression."""
    text = _encoder_input(checkpoint, text, limits)
    config = checkpoint.model.config
    if is_regression(config):
        with torch.inference_mode():
            inputs = checkpoint.tokenizer(text, return_tensors="pt").to(checkpoint.model.device)
            return float(checkpoint.model(**inputs).logits[0, 0])
    activation = "sigmoid" if config.problem_type == "multi_label_classification" else "softmax"
    scores = checkpoint.pipeline("text-classification")(text, top_k=None, function_to_apply=activation)
    return {item["label"]: float(item["score"]) for item in scores}


def is_regression(config: PretrainedConfig) -> bool:
    return config.problem_type == "regression" or (config.num_labels == 1 and config.problem_type is None)


# ---------------------------------------------------------------------------------------------------------------------
# Compare: the same input through two checkpoints, streamed side by side
# ---------------------------------------------------------------------------------------------------------------------


def _side_stream(checkpoint: Checkpoint, limits: Limits, text: str, settings: GenerationSettings, cancel) -> Iterator:
    if checkpoint.task == CAUSAL_LM:
        input_ids = encode_prompt(checkpoint, text, None, limits)
        for partial_text, _ in stream_generation(checkpoint, input_ids, settings, limits, cancel):
            yield partial_text
    elif checkpoint.task == MASKED_LM:
        yield fill_mask(checkpoint, limits, text)[0]
    else:
        yield classify(checkpoint, limits, text)


def compare(
    checkpoints: list[Checkpoint],
    limits: Limits,
    text: str,
    temperature: float = GenerationSettings.temperature,
    top_p: float = GenerationSettings.top_p,
    top_k: int = GenerationSettings.top_k,
    max_new_tokens: int = GenerationSettings.max_new_tokens,
    repetition_penalty: float = GenerationSettings.repetition_penalty,
) -> Iterator[tuple]:
    """Run every checkpoint on the same input at once; yield all sides' latest outputs whenever one changes."""
    text = check_input_chars(text, limits)
    generation = GenerationSettings(temperature, top_p, top_k, max_new_tokens, repetition_penalty)
    cancel = threading.Event()
    updates: queue.Queue = queue.Queue()
    done = object()

    def pump(index: int, checkpoint: Checkpoint) -> None:
        try:
            for value in _side_stream(checkpoint, limits, text, generation, cancel):
                updates.put((index, value))
        except Exception as err:
            updates.put((index, err))
        updates.put((index, done))

    latest: list[Any] = [None] * len(checkpoints)
    for index, checkpoint in enumerate(checkpoints):
        threading.Thread(
            target=pump, args=(index, checkpoint), name=f"{GENERATE_THREAD_NAME}-compare", daemon=True
        ).start()
    running = len(checkpoints)
    try:
        while running:
            index, value = updates.get(timeout=limits.generation_timeout_s + 5)
            if value is done:
                running -= 1
            elif isinstance(value, Exception):
                raise value if isinstance(value, gr.Error) else gr.Error(f"{checkpoints[index].name}: {value}")
            else:
                latest[index] = value
                yield tuple(latest)
    except queue.Empty:
        raise gr.Error(f"No output within {limits.generation_timeout_s:.0f} s; comparison stopped.") from None
    finally:
        cancel.set()


# ---------------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------------


def _generation_controls(checkpoint: Checkpoint, limits: Limits, render: bool = True) -> list[gr.components.Component]:
    config = checkpoint.model.generation_config
    default = GenerationSettings(
        temperature=config.temperature if config.do_sample and config.temperature else 0.8,
        top_p=config.top_p or 0.95,
        top_k=config.top_k or 50,
        max_new_tokens=min(128, limits.max_new_tokens),
        repetition_penalty=config.repetition_penalty or 1.0,
    ).clamped(limits)
    return [
        gr.Slider(0.0, 2.0, value=default.temperature, step=0.05, label="Temperature (0 = greedy)", render=render),
        gr.Slider(0.01, 1.0, value=default.top_p, step=0.01, label="Top-p", render=render),
        gr.Slider(0, 1000, value=default.top_k, step=1, label="Top-k (0 = off)", render=render),
        gr.Slider(
            1, limits.max_new_tokens, value=default.max_new_tokens, step=1, label="Max new tokens", render=render
        ),
        gr.Slider(1.0, 2.0, value=default.repetition_penalty, step=0.01, label="Repetition penalty", render=render),
    ]


def _output_component(checkpoint: Checkpoint, label: str) -> gr.components.Component:
    if checkpoint.task == CAUSAL_LM:
        return gr.Textbox(label=label, lines=10, interactive=False)
    if checkpoint.task == CLASSIFICATION and is_regression(checkpoint.model.config):
        return gr.Number(label=label, interactive=False)
    return gr.Label(label=label)


def _input_box(checkpoint: Checkpoint, limits: Limits, label: str = "Input") -> gr.Textbox:
    placeholder = {
        CAUSAL_LM: "Once upon a time",
        MASKED_LM: f"The capital of France is {checkpoint.tokenizer.mask_token}.",
        CLASSIFICATION: "A wonderful, moving film.",
    }[checkpoint.task]
    return gr.Textbox(label=label, lines=4, max_length=limits.max_input_chars, placeholder=placeholder)


def _run_and_stop_buttons(run_label: str = "Run") -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        return gr.Button(run_label, variant="primary"), gr.Button("Stop", variant="stop")


def _wire(run: gr.Button, text: gr.Textbox, stop: gr.Button, fn: Callable, inputs: list, outputs: list, api_name: str):
    """Run on the button or Enter, as one API endpoint; the stop button cancels it."""
    event = gr.on([run.click, text.submit], fn, inputs, outputs, api_name=api_name)
    stop.click(None, cancels=[event])


def _checkpoint_tab(checkpoint: Checkpoint, limits: Limits, suffix: str) -> None:
    gr.Markdown(checkpoint.describe())
    if checkpoint.is_chat:
        stats = gr.Markdown(label="status")
        gr.ChatInterface(
            partial(chat, checkpoint, limits),
            additional_inputs=_generation_controls(checkpoint, limits, render=False),
            # A label, not a gr.Accordion: an unrendered Accordion here leaves Gradio 6.31's loading overlay up.
            additional_inputs_accordion="Generation settings",
            additional_outputs=[stats],
            textbox=gr.Textbox(max_length=limits.max_input_chars, placeholder="Say something", render=False),
            api_name=f"chat{suffix}",
            flagging_mode="never",
            fill_height=False,
        )
        return
    prompt = _input_box(checkpoint, limits, "Prompt" if checkpoint.task == CAUSAL_LM else "Input")
    if checkpoint.task == CAUSAL_LM:
        run, stop = _run_and_stop_buttons("Generate")
        output = _output_component(checkpoint, "Continuation")
        stats = gr.Markdown(label="status")
        with gr.Accordion("Generation settings", open=False):
            controls = _generation_controls(checkpoint, limits)
        _wire(
            run,
            prompt,
            stop,
            partial(complete, checkpoint, limits),
            [prompt, *controls],
            [output, stats],
            f"generate{suffix}",
        )
    elif checkpoint.task == MASKED_LM:
        top_k = gr.Slider(1, limits.max_top_k_labels, value=5, step=1, label="Top-k predictions")
        run, stop = _run_and_stop_buttons("Fill mask")
        predictions = gr.Label(label=f"Predictions for the first {checkpoint.tokenizer.mask_token}")
        filled = gr.Textbox(label="Best guess for every mask", interactive=False)
        _wire(
            run,
            prompt,
            stop,
            partial(fill_mask, checkpoint, limits),
            [prompt, top_k],
            [predictions, filled],
            f"fill_mask{suffix}",
        )
    else:
        run, stop = _run_and_stop_buttons("Classify")
        output = _output_component(
            checkpoint, "Predicted value" if is_regression(checkpoint.model.config) else "Labels"
        )
        _wire(run, prompt, stop, partial(classify, checkpoint, limits), [prompt], [output], f"classify{suffix}")


def _compare_tab(checkpoints: list[Checkpoint], limits: Limits) -> None:
    gr.Markdown("The same input through both checkpoints at once (a chat model gets it as a single user turn).")
    prompt = _input_box(checkpoints[0], limits)
    run, stop = _run_and_stop_buttons("Compare")
    with gr.Row(equal_height=True):
        outputs = [_output_component(checkpoint, checkpoint.name) for checkpoint in checkpoints]
    causal = next((checkpoint for checkpoint in checkpoints if checkpoint.task == CAUSAL_LM), None)
    controls = []
    if causal is not None:
        with gr.Accordion("Generation settings", open=False):
            controls = _generation_controls(causal, limits)
    _wire(run, prompt, stop, partial(compare, checkpoints, limits), [prompt, *controls], outputs, "compare")


def build_demo(checkpoints: list[Checkpoint], limits: Limits) -> gr.Blocks:
    """One tab per checkpoint, plus a Compare tab when there are two, behind a bounded queue. API names:
    generate/chat/fill_mask/classify for --model, the same with `_2` for --compare, and `compare`."""
    with gr.Blocks(title="llm-recipes", analytics_enabled=False) as demo:
        gr.Markdown("# llm-recipes")
        with gr.Tabs():
            for index, checkpoint in enumerate(checkpoints):
                with gr.Tab(
                    checkpoint.name
                    if index == 0 or checkpoint.name != checkpoints[0].name
                    else f"{checkpoint.name} (2)"
                ):
                    _checkpoint_tab(checkpoint, limits, suffix="" if index == 0 else f"_{index + 1}")
            if len(checkpoints) > 1:
                with gr.Tab("Compare"):
                    _compare_tab(checkpoints, limits)
    return demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)


def build_help_demo(output_root: str | Path) -> gr.Blocks:
    """The page shown when there is nothing to load yet: how to make a checkpoint."""
    with gr.Blocks(title="llm-recipes", analytics_enabled=False) as demo:
        gr.Markdown(
            f"""# llm-recipes: no checkpoint yet

No model folder was found under `{output_root}/`. Train one (a tiny model trains in minutes on a CPU), then reload:

```bash
accelerate launch recipes/pretrain.py        # writes outputs/run
python app/app.py                            # opens the newest folder under outputs/
```

Or point the app at any checkpoint, local or on the Hub: `python app/app.py --model PATH_OR_HUB_ID`."""
        )
    return demo


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def _auth_pair(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError(f"--auth expects USER:PASSWORD, got {value!r}")
    return user, password


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Limits()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", help="Checkpoint folder or Hub id (default: the newest under --outputs).")
    parser.add_argument("--compare", help="A second checkpoint to compare with --model, side by side.")
    parser.add_argument(
        "--outputs", default=DEFAULT_OUTPUT_ROOT, help="Where to look for a checkpoint without --model."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 exposes the app to the network.")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="Create a public gradio.live link (off by default).")
    parser.add_argument("--auth", type=_auth_pair, help="Require USER:PASSWORD to open the page and call the API.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-input-chars", type=int, default=defaults.max_input_chars)
    parser.add_argument("--max-input-tokens", type=int, default=defaults.max_input_tokens)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--timeout", type=float, default=defaults.generation_timeout_s, help="Seconds per generation.")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="Requests run at once.")
    parser.add_argument(
        "--queue-size", type=int, default=defaults.queue_size, help="Requests waiting; more are refused."
    )
    args = parser.parse_args(argv)
    for name in ("max_input_chars", "max_input_tokens", "max_new_tokens", "timeout", "concurrency", "queue_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def limits_from_args(args: argparse.Namespace) -> Limits:
    return replace(
        Limits(),
        max_input_chars=args.max_input_chars,
        max_input_tokens=args.max_input_tokens,
        max_new_tokens=args.max_new_tokens,
        generation_timeout_s=args.timeout,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
    )


def create_app(args: argparse.Namespace) -> gr.Blocks:
    """Load the checkpoints named by `args` (or the newest output) and build the queued page."""
    limits = limits_from_args(args)
    model = args.model or find_newest_output(args.outputs)
    if model is None:
        return build_help_demo(args.outputs)
    bf16 = args.device.startswith("cuda") and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    sources = [str(model)] + ([args.compare] if args.compare else [])
    return build_demo([load_checkpoint(source, args.device, dtype) for source in sources], limits)


def launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """Hardened defaults: local only, no public link, no file serving beyond Gradio's own cache, no SSR node server."""
    return dict(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=args.auth,
        allowed_paths=[],
        ssr_mode=False,
        mcp_server=False,
        theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS),
        footer_links=["api", "settings"],
    )


def serve(args: argparse.Namespace, block: bool = True) -> gr.Blocks:
    """Start the server; with block=False return once it listens (tests, benchmarks)."""
    demo = create_app(args)
    demo.launch(**launch_options(args), prevent_thread_lock=not block)
    return demo


def main(argv: list[str] | None = None) -> None:
    try:
        serve(parse_args(argv))
    except (ValueError, OSError) as err:  # a bad --model: say what is wrong, without a traceback
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
