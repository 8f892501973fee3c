"""Text generation from any causal checkpoint: sample completions for run reports, and a streaming CLI.

    llm-recipes-generate --model outputs/pretrain --prompt "The function" --max_new_tokens 80
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from threading import Thread

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    TextIteratorStreamer,
)


def default_generation_config(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 100) -> GenerationConfig:
    """Saved with every causal model so that `generate()` samples sensibly and stops at end-of-text."""
    return GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        top_k=50,
        max_new_tokens=max_new_tokens,
    )


@torch.no_grad()
def sample_completions(
    model, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int = 60, seed: int = 0
) -> list[dict[str, str]]:
    """Seeded sampled completions of `prompts` (one at a time: no padding effects on tiny models)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=50)
        completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        samples.append({"prompt": prompt, "completion": completion})
    torch.random.set_rng_state(generator_state)
    model.train(was_training)
    return samples


@dataclass
class GenerateArguments:
    model: str = field(metadata={"help": "Causal LM checkpoint: an output folder, a LoRA adapter folder or a Hub id."})
    prompt: str | None = field(default=None, metadata={"help": "Prompt text; read from stdin when omitted."})
    max_new_tokens: int = field(default=100, metadata={"help": "Tokens to generate at most."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature; 0 means greedy decoding."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: keep the smallest set with this mass."})
    top_k: int = field(default=50, metadata={"help": "Sample among the k most likely tokens (0 disables)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty > 1 discourages repeats."})
    seed: int | None = field(default=None, metadata={"help": "Seed for reproducible sampling."})
    chat: bool = field(default=False, metadata={"help": "Wrap the prompt as a user turn in the chat template."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the checkpoint's own code to run."})


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False):
    """A full causal checkpoint or a PEFT adapter folder (loaded on its base model), with its tokenizer."""
    from pathlib import Path

    if (Path(name_or_path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def main(argv: Sequence[str] | None = None) -> str:
    (args,) = HfArgumentParser(GenerateArguments).parse_args_into_dataclasses(args=argv)
    model, tokenizer = load_causal_lm(args.model, args.trust_remote_code)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if args.chat:
        if tokenizer.chat_template is None:
            raise ValueError(f"{args.model}: the tokenizer has no chat template; drop --chat")
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = args.temperature > 0
    kwargs = dict(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        do_sample=sampling,
        temperature=args.temperature if sampling else None,
        top_p=args.top_p if sampling else None,
        top_k=args.top_k if sampling else None,
        repetition_penalty=args.repetition_penalty,
        streamer=streamer,
    )
    thread = Thread(target=model.generate, kwargs=kwargs)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        print(piece, end="", flush=True)
    thread.join()
    print()
    return "".join(pieces)


if __name__ == "__main__":
    main()
