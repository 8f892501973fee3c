"""Instruction and chat data: conversations from rows, chat templates, assistant-only label masks, packing, collators.

The label mask is built here rather than taken from a template's `{% generation %}` markers (few templates have them):
each assistant turn's tokens are located by tokenizing prefixes of the rendered conversation, and every prefix is
checked to tokenize as a prefix of the whole, so a template that breaks this fails loudly instead of mislabelling.
"""

from __future__ import annotations

import bisect
import json
from typing import Any

import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from .sources import DataError

IGNORE_INDEX = -100
CHAT_FORMATS = ("messages", "prompt_response")
ROLES = ("system", "user", "assistant")
# Installed when a checkpoint has no chat template (Zephyr's layout): each turn opens with a role token on its own
# line and ends with the tokenizer's end-of-text token, so a fine-tuned model stops by emitting end-of-text.
#   <|system|>\nYou are terse.<|endoftext|><|user|>\nHi<|endoftext|><|assistant|>\nHello!<|endoftext|>
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('role ' ~ message['role'] ~ ' is not one of system, user, assistant') }}"
    "{%- endif -%}"
    "{{ '<|' ~ message['role'] ~ '|>\n' ~ message['content'] ~ eos_token }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


class ChatDataError(DataError):
    """A conversation that cannot be trained on; the message names the split and row."""


def install_default_chat_template(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Give a tokenizer without a chat template the default one; returns the ids of role tokens it had to add.

    The caller resizes the model's embeddings to `len(tokenizer)` when ids come back.
    """
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token to end assistant turns with")
    vocab = tokenizer.get_vocab()
    missing = [token for token in ROLE_TOKENS.values() if token not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer.convert_tokens_to_ids(missing)


def _describe(row: Any, limit: int = 160) -> str:
    text = repr(row)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def conversation_from_row(
    row: dict[str, Any],
    data_format: str,
    where: str,
    messages_column: str = "messages",
    prompt_column: str = "prompt",
    response_column: str = "response",
    system_prompt: str | None = None,
) -> list[dict[str, str]]:
    """One row as a list of {role, content} turns, validated; `where` (e.g. "train row 12") goes in every error."""
    if data_format == "prompt_response":
        prompt, response = row.get(prompt_column), row.get(response_column)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ChatDataError(f"{where}: empty or missing prompt in column {prompt_column!r}: {_describe(row)}")
        if not isinstance(response, str) or not response.strip():
            raise ChatDataError(
                f"{where}: no assistant turn (empty or missing response in column {response_column!r}): "
                f"{_describe(row)}"
            )
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + messages
    messages = row.get(messages_column)
    if isinstance(messages, str):  # CSV and some exports keep the list as a JSON string
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as error:
            raise ChatDataError(f"{where}: column {messages_column!r} is not a JSON list of turns ({error})") from None
    if not isinstance(messages, list) or not messages:
        raise ChatDataError(f"{where}: column {messages_column!r} must be a non-empty list of turns: {_describe(row)}")
    turns = []
    for index, turn in enumerate(messages):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
            raise ChatDataError(
                f"{where}, turn {index}: expected {{'role': ..., 'content': ...}}, got {_describe(turn)}"
            )
        content = turn["content"]
        if not isinstance(content, str):
            raise ChatDataError(f"{where}, turn {index}: content must be a string, got {_describe(content)}")
        turns.append({"role": turn["role"], "content": content})
    if not any(turn["role"] == "assistant" and turn["content"].strip() for turn in turns):
        roles = ", ".join(turn["role"] for turn in turns)
        raise ChatDataError(
            f"{where}: no assistant turn to learn from (roles: {roles}); every conversation needs at least one "
            "non-empty assistant message"
        )
    if system_prompt and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def _render(tokenizer: PreTrainedTokenizerBase, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template writes any BOS itself; the tokenizer must not add another.
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def tokenize_conversation(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, where: str = "conversation"
) -> dict[str, list[int]]:
    """Token ids of the rendered conversation and labels that keep only assistant tokens (the rest is -100).

    Each assistant turn spans from the end of the conversation before it (rendered with the generation prompt, so the
    assistant header stays unlabelled) to the end of the conversation through it (so its end-of-turn marker is
    learned). End-of-text is appended when the rendering does not already end with it.
    """
    full_text = _render(tokenizer, messages, generation_prompt=False)
    input_ids = _encode(tokenizer, full_text)
    labels = [IGNORE_INDEX] * len(input_ids)

    def prefix_length(prefix_text: str) -> int:
        if not full_text.startswith(prefix_text):
            raise ChatDataError(
                f"{where}: the chat template renders a conversation prefix that is not a prefix of the whole "
                "conversation, so assistant turns cannot be located; use --chat_template to give a template "
                "without that behaviour"
            )
        prefix_ids = _encode(tokenizer, prefix_text)
        if input_ids[: len(prefix_ids)] != prefix_ids:
            raise ChatDataError(
                f"{where}: the tokens of a conversation prefix differ from the start of the conversation's tokens "
                f"(a token merges across a turn boundary near {prefix_text[-20:]!r}); the label mask would be "
                "misaligned. Use --chat_template with separators between turns"
            )
        return len(prefix_ids)

    for index, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        start = prefix_length(_render(tokenizer, messages[:index], generation_prompt=True)) if index else 0
        end = prefix_length(_render(tokenizer, messages[: index + 1], generation_prompt=False))
        labels[start:end] = input_ids[start:end]
    eos = tokenizer.eos_token_id
    if eos is not None and (not input_ids or input_ids[-1] != eos):
        input_ids.append(eos)
        labels.append(eos if messages[-1]["role"] == "assistant" else IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels}


def generation_prompt(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str | None]:
    """The turns before the last assistant turn (what the model is asked) and that turn's text (the reference)."""
    last = max(i for i, turn in enumerate(messages) if turn["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def tokenize_chat_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    max_length: int,
    num_proc: int | None = None,
    **row_options: Any,
) -> Dataset:
    """Every row -> input_ids + labels, truncated to `max_length`; rows left with no assistant token are dropped.

    `row_options` are `conversation_from_row`'s column options and data_format.
    """

    def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out: dict[str, list] = {"input_ids": [], "labels": [], "num_label_tokens": []}
        for row, index in zip(rows, indices):
            where = f"{split} split, row {index}"
            encoded = tokenize_conversation(conversation_from_row(row, where=where, **row_options), tokenizer, where)
            labels = encoded["labels"][:max_length]
            out["input_ids"].append(encoded["input_ids"][:max_length])
            out["labels"].append(labels)
            out["num_label_tokens"].append(sum(label != IGNORE_INDEX for label in labels))
        return out

    tokenized = dataset.map(
        tokenize,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=f"Templating and tokenizing {split}",
    )
    kept = tokenized.filter(lambda n: n > 0, input_columns="num_label_tokens", desc="Dropping fully truncated rows")
    return kept.remove_columns("num_label_tokens")


def pack_examples(dataset: Dataset, max_length: int) -> Dataset:
    """Pack tokenized examples into rows of at most `max_length` tokens (best fit, longest examples first).

    Each row carries `position_ids` that restart at 0 for every example: transformers turns a restart into a
    block-diagonal causal mask (SDPA, eager, flex) or variable-length kernels (FlashAttention), so no example attends
    to another. The first label of every example is -100: it would otherwise be predicted from the previous example.
    Deterministic: the same examples always give the same rows.
    """
    lengths = [len(ids) for ids in dataset["input_ids"]]
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), sorted: best fit is the first with enough room
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = bisect.bisect_left(free, (lengths[index], -1))
        if slot == len(free):
            bins.append([index])
            room, number = max_length, len(bins) - 1
        else:
            room, number = free.pop(slot)
            bins[number].append(index)
        if room - lengths[index] > 0:
            bisect.insort(free, (room - lengths[index], number))
    input_ids, labels = dataset["input_ids"], dataset["labels"]
    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for members in bins:
        row_ids, row_labels, row_positions = [], [], []
        for index in members:
            row_ids += input_ids[index]
            row_labels += [IGNORE_INDEX] + labels[index][1:]
            row_positions += list(range(lengths[index]))
        rows["input_ids"].append(row_ids)
        rows["labels"].append(row_labels)
        rows["position_ids"].append(row_positions)
    return Dataset.from_dict(rows)


class PackedCollator:
    """Pad packed rows to the batch's longest; no attention mask (it would switch off the packed-sequence masking).

    The padding gets its own restarting positions and -100 labels, so it forms a separate sequence nobody attends to.
    `use_cache=False` matters: with a cache, transformers skips the packed-sequence detection.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(e["input_ids"]) for e in examples)
        batch = {
            "input_ids": torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long),
            "position_ids": torch.arange(longest).repeat(len(examples), 1),
        }
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            batch["input_ids"][row, :n] = torch.as_tensor(example["input_ids"])
            batch["labels"][row, :n] = torch.as_tensor(example["labels"])
            batch["position_ids"][row, :n] = torch.as_tensor(example["position_ids"])
            batch["position_ids"][row, n:] -= n
        batch["use_cache"] = False
        return batch

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Real tokens (padding left out; when pad = eos, a row's final eos is not counted either)."""
        return (batch["input_ids"] != self.pad_token_id).sum()


def padding_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Unpacked examples padded to the batch's longest, labels padded with -100, with an attention mask."""
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
