"""B7 (peak RSS of LoRA against full fine-tuning) and B8 (time per token and peak RSS as the corpus grows 1x -> 10x,
map-style and streaming). Each measurement runs in its own process (`run_in_fresh_process`): peak RSS only grows.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Corpus, Scale
from .harness import AnonymousMemoryPeak, Figure, paired_ratios, process_peak_rss_mb, run_in_fresh_process

# ---------------------------------------------------------------------------------------------------------------------
# B7: LoRA against full fine-tuning of the same model, through the same loop


def finetune_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: build the model, optionally wrap it with LoRA, train a few steps with our loop."""
    import torch
    from datasets import Dataset
    from peft import TaskType

    from llm_recipes.data.text import collate_blocks
    from llm_recipes.lora import LoraConfigArgs, apply_lora
    from llm_recipes.modeling import count_parameters

    from .common import quiet
    from .pretraining import build_model, run_our_loop

    quiet()
    baseline = process_peak_rss_mb()
    model = build_model(args["preset"], args["vocab"], args["block"])
    if args.get("gradient_checkpointing"):
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args["lora"]:
        model = apply_lora(model, LoraConfigArgs(use_lora=True), TaskType.CAUSAL_LM)
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, args["vocab"], (args["batch"] * args["steps"], args["block"]), generator=generator)
    dataset = Dataset.from_dict({"input_ids": blocks.numpy()}).with_format("torch")
    run = run_our_loop(model, dataset, collate_blocks, args["batch"], 1, args["steps"] - 1, Path(args["workdir"]))
    return {
        **process_peak_rss_mb(),
        "baseline_rss_mb": baseline["ru_maxrss_mb"],
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "parameters": count_parameters(model),
        "seconds": run["total_seconds"],
    }


def b7_lora_memory(corpus: Corpus, scale: Scale, workdir: Path) -> list[Figure]:
    args = {"preset": scale.b7_preset, "vocab": scale.vocab_size, "block": scale.b7_block, "batch": scale.b7_batch,
            "steps": scale.b7_steps, "workdir": str(workdir)}
    variants = {
        "lora": {"lora": True},
        "full": {"lora": False},
        "lora_checkpointing": {"lora": True, "gradient_checkpointing": True},
    }
    runs: dict[str, list] = {name: [] for name in variants}
    for repeat in range(scale.repeats):
        for name in list(variants) if repeat % 2 == 0 else reversed(list(variants)):
            runs[name].append(run_in_fresh_process(finetune_worker, {**args, **variants[name]}))
    peak = {name: [r["ru_maxrss_mb"] for r in results] for name, results in runs.items()}
    full = runs["full"][0]
    setup = (f"{scale.b7_preset} preset ({full['parameters'] / 1e6:.1f}M parameters), batch {scale.b7_batch} x "
             f"{scale.b7_block} tokens, {scale.b7_steps} steps of our loop incl. the checkpoint; LoRA r=16 on all "
             f"linear layers ({runs['lora'][0]['trainable_parameters'] / 1e6:.2f}M trainable); process baseline "
             f"(libraries imported) {full['baseline_rss_mb']:.0f} MiB")
    return [
        Figure("B7 LoRA / full memory", "peak RSS: LoRA fine-tuning / full fine-tuning, same model",
               paired_ratios(peak["lora"], peak["full"]), target=0.6, target_is_max=True,
               details={"setup": setup, "peak_rss_mb": peak, "runs": runs}),
        Figure("B7 LoRA+checkpointing / full", "peak RSS: LoRA + gradient checkpointing / full fine-tuning",
               paired_ratios(peak["lora_checkpointing"], peak["full"]), target=0.6, target_is_max=True,
               details={"see": "B7 LoRA / full memory"},
               note="the loop's --gradient_checkpointing true"),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# B8: the data pipeline as the corpus grows


def scale_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: load -> validate -> tokenize -> pack -> iterate every training batch."""
    import datasets
    from torch.utils.data import DataLoader

    from llm_recipes.config import DataConfig
    from llm_recipes.data.sources import load_raw_datasets
    from llm_recipes.data.text import collate_blocks, prepare_lm_datasets
    from llm_recipes.data.tokenizer import load_tokenizer
    from llm_recipes.training import EpochShuffleSampler

    from .common import quiet

    quiet()
    datasets.config.HF_DATASETS_CACHE = Path(args["cache_dir"])  # a fresh cache: nothing reused between runs
    tokenizer = load_tokenizer(args["tokenizer_dir"])
    baseline = process_peak_rss_mb()
    anonymous_baseline = AnonymousMemoryPeak.read_mb()
    with AnonymousMemoryPeak() as anonymous:
        started = time.perf_counter()
        data_cfg = DataConfig(data_files=[args["corpus_dir"]], streaming=args["streaming"],
                              streaming_eval_documents=20)
        raw = load_raw_datasets(data_cfg, seed=0)
        packed = prepare_lm_datasets(raw, tokenizer, "text", args["block"])
        train = packed["train"]
        sampler = None if args["streaming"] else EpochShuffleSampler(len(train), seed=0)
        tokens = 0
        for batch in DataLoader(train, args["batch"], sampler=sampler, collate_fn=collate_blocks):
            tokens += batch["input_ids"].numel()
        seconds = time.perf_counter() - started
    return {**process_peak_rss_mb(), "baseline_rss_mb": baseline["ru_maxrss_mb"], "tokens": tokens,
            "peak_anonymous_mb": anonymous.peak_mb, "baseline_anonymous_mb": anonymous_baseline,
            "seconds": seconds, "seconds_per_million_tokens": seconds / tokens * 1e6}


def write_corpus(texts: list[str], folder: Path, copies: int) -> Path:
    """`copies` files of the same text: the corpus grown `copies` times. The documents keep their blank lines, so the
    text loader (sample_by=paragraph, the default) reads paragraphs, as it would from any .txt corpus."""
    folder.mkdir(parents=True)
    body = "\n\n".join(texts) + "\n"
    for index in range(copies):
        (folder / f"part{index:03d}.txt").write_text(body, encoding="utf-8")
    return folder


def growth(runs: list[dict[str, Any]]) -> float:
    """Median anonymous-memory peak above the process's baseline, MiB."""
    values = sorted(r["peak_anonymous_mb"] - r["baseline_anonymous_mb"] for r in runs)
    return values[len(values) // 2]


def b8_scale(corpus: Corpus, scale: Scale, workdir: Path) -> list[Figure]:
    texts = corpus.train_texts(scale.b8_base_megabytes)
    sizes = (1, scale.b8_factor)
    runs: dict[tuple[str, int], list] = {(mode, size): [] for mode in ("map", "stream") for size in sizes}
    order = list(runs)
    for repeat in range(scale.repeats):
        for mode, size in order if repeat % 2 == 0 else reversed(order):
            job = Path(tempfile.mkdtemp(dir=workdir, prefix=f"b8-{mode}-{size}x-"))
            corpus_dir = write_corpus(texts, job / "corpus", size)  # new path: no cache hit from another run
            runs[(mode, size)].append(run_in_fresh_process(scale_worker, {
                "corpus_dir": str(corpus_dir), "tokenizer_dir": str(corpus.tokenizer_dir),
                "cache_dir": str(job / "cache"),
                "streaming": mode == "stream", "block": scale.b1_block, "batch": scale.b1_batch,
            }))
            shutil.rmtree(job, ignore_errors=True)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    figures = []
    for mode, label in (("map", "map-style"), ("stream", "streaming")):
        small, large = runs[(mode, 1)], runs[(mode, scale.b8_factor)]
        details = {"runs": {"1x": small, f"{scale.b8_factor}x": large},
                   "setup": f"1x = {megabytes:.1f} MB of text ({len(texts)} documents), block {scale.b1_block}, "
                            f"batch {scale.b1_batch}; time = load + validate + tokenize + pack + every batch"}
        figures += [
            Figure(f"B8 {label} time/token", f"time per token {scale.b8_factor}x corpus / 1x corpus, {label}",
                   paired_ratios([r["seconds_per_million_tokens"] for r in large],
                                 [r["seconds_per_million_tokens"] for r in small]),
                   target=1.1, target_is_max=True, details=details),
            Figure(f"B8 {label} peak RSS", f"peak RSS {scale.b8_factor}x corpus / 1x corpus, {label}",
                   paired_ratios([r["ru_maxrss_mb"] for r in large], [r["ru_maxrss_mb"] for r in small]),
                   target=1.1, target_is_max=True, details={"see": f"B8 {label} time/token"},
                   note="growth of the anonymous (unreclaimable) peak above the process baseline, 1x -> "
                        f"{scale.b8_factor}x: {growth(small):.0f} -> {growth(large):.0f} MiB"),
        ]
    return figures
