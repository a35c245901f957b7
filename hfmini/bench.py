"""`make bench`: how much model per minute hfmini gets from this machine, as side-by-side ratios.

    python -m hfmini.bench [--recipe recipes/shakespeare/config.yaml] [--output output/bench.json]

1. Training: tokens/s of hfmini's real training step (`hfmini.train.training_step` on a Run built
   by `setup` from the recipe) vs. a minimal eager PyTorch loop (forward, backward, AdamW step) on
   the same GPT2LMHeadModel, batch and sequence length; and MFU against the peak matmul FLOP/s
   measured in the same run. The two loops alternate in rounds, so load on a shared machine hits
   both alike; the ratio of medians is reported.
2. Generation: new tokens/s of hfmini's KV-cache decoding vs. recomputing the whole context for
   each new token, at 256 new tokens; transformers' `generate` on the same model for reference.
3. Data: tokenizer training MB/s, tokenize-and-pack MB/s, and a second (cached) data preparation.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_RECIPE = "recipes/shakespeare/config.yaml"


def _timed_rounds(variants: dict, rounds: int, steps_per_round: int, tokens_per_step: int) -> dict:
    """Alternate the variants round by round; returns median tokens/s of each."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            rates[name].append(steps_per_round * tokens_per_step / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def bench_training(recipe: str, rounds: int, steps_per_round: int, work_dir: Path) -> dict:
    from transformers import GPT2LMHeadModel

    from hfmini.config import parse_config
    from hfmini.throughput import measure_peak_flops
    from hfmini.train import setup, training_step

    config = parse_config(
        [
            "--config",
            recipe,
            "--output_dir",
            str(work_dir / "train"),
            "--report_to",
            "none",
            "--max_steps",
            "100000",
        ]
    )
    run = setup(config)
    batches = [batch["input_ids"] for _, batch in zip(range(8), run.train_loader, strict=False)]
    batch_shape = tuple(batches[0].shape)
    tokens_per_step = batches[0].numel() * config.train.gradient_accumulation_steps
    accumulation = config.train.gradient_accumulation_steps

    # The plain loop: a fresh model of the same config, default AdamW, the same batches.
    torch.manual_seed(0)
    # A copy of the config: transformers records the attention implementation on the config
    # object, so sharing it would switch hfmini's model to the plain loop's sdpa as well.
    plain_model = GPT2LMHeadModel._from_config(
        copy.deepcopy(run.accelerator.unwrap_model(run.model).config), attn_implementation="sdpa"
    )
    plain_optimizer = torch.optim.AdamW(plain_model.parameters(), lr=config.train.learning_rate)
    position = {"hfmini": 0, "plain": 0}

    def plain_step() -> None:
        for _ in range(accumulation):
            ids = batches[position["plain"] % len(batches)]
            position["plain"] += 1
            loss = plain_model(input_ids=ids, labels=ids, use_cache=False).loss / accumulation
            loss.backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad()

    def hfmini_step() -> None:
        for _ in range(accumulation):
            ids = batches[position["hfmini"] % len(batches)]
            position["hfmini"] += 1
            training_step(run, ids)

    warmup_start = time.perf_counter()
    for _ in range(3):  # includes torch.compile's first compilation when enabled
        hfmini_step()
    warmup = time.perf_counter() - warmup_start
    for _ in range(3):
        plain_step()
    rates = _timed_rounds(
        {"hfmini": hfmini_step, "plain": plain_step}, rounds, steps_per_round, tokens_per_step
    )
    # Each loop's MFU is against the peak of the dtype it multiplies in: bf16 for hfmini with
    # mixed precision, fp32 for the plain loop.
    device, precision = run.accelerator.device, run.accelerator.mixed_precision
    fp32_peak = measure_peak_flops(device, torch.float32, seconds=1.0)
    peak = (
        measure_peak_flops(device, torch.bfloat16, seconds=1.0)
        if precision == "bf16"
        else fp32_peak
    )
    per_token = run.flops_per_token
    run.accelerator.end_training()
    return {
        "model": f"{config.model.model_size} {config.model.shape()} ctx {config.context_length()}",
        "parameters": sum(p.numel() for p in plain_model.parameters()),
        "batch": list(batch_shape),
        "torch_compile": config.train.compile_on(torch.cuda.is_available()),
        "precision": precision.replace("no", "fp32"),
        "attention": run.accelerator.unwrap_model(run.model).config._attn_implementation,
        "hfmini_tokens_per_second": rates["hfmini"],
        "plain_eager_tokens_per_second": rates["plain"],
        "speedup": rates["hfmini"] / rates["plain"],
        "hfmini_warmup_seconds": warmup,
        "flops_per_token": per_token,
        "peak_flops": peak,
        "fp32_peak_flops": fp32_peak,
        "mfu": per_token * rates["hfmini"] / peak,
        "plain_mfu": per_token * rates["plain"] / fp32_peak,
    }


class _VocabularyOnly:
    """What build_model needs of a tokenizer: its size and special ids (all 0, like ours)."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def bench_generation(recipe: str, new_tokens: int = 256, repeats: int = 5) -> dict:
    """Greedy decoding of `new_tokens` tokens, same model: hfmini's KV-cache loop (what
    `hfmini generate` and training samples run), transformers' `generate` (also KV cache), and
    recomputing the whole context for each new token."""
    from hfmini.config import parse_config
    from hfmini.generate import decode
    from hfmini.model import build_model

    config = parse_config(["--config", recipe])
    tokenizer = _VocabularyOnly(config.model.vocab_size)  # speed needs only the vocabulary size
    prompt_len = 16
    # The recipe's model, with a context that holds the prompt and every new token, so neither
    # method has to slide.
    model = build_model(config.model, tokenizer, context_length=prompt_len + new_tokens).eval()
    prompt = torch.randint(1, len(tokenizer), (1, prompt_len))

    def with_cache() -> None:
        decode(model, prompt[0].tolist(), new_tokens)

    @torch.inference_mode()
    def transformers_generate() -> None:
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )

    @torch.inference_mode()
    def recompute() -> None:  # what a from-scratch implementation without a cache does
        ids = prompt
        for _ in range(new_tokens):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)

    variants = {"cache": with_cache, "generate": transformers_generate, "recompute": recompute}
    rates = _timed_rounds(variants, repeats, 1, new_tokens)
    return {
        "new_tokens": new_tokens,
        "kv_cache_tokens_per_second": rates["cache"],
        "transformers_generate_tokens_per_second": rates["generate"],
        "recompute_tokens_per_second": rates["recompute"],
        "speedup": rates["cache"] / rates["recompute"],
        "generate_speedup": rates["generate"] / rates["recompute"],
    }


def bench_data(recipe: str, work_dir: Path) -> dict:
    """Cold and cached data preparation in a private datasets cache."""
    import datasets

    from hfmini.config import parse_config
    from hfmini.data import chunk_and_split, prepare_data, text_bytes, tokenize_and_pack
    from hfmini.sources import load_sources
    from hfmini.tokenizer import train_tokenizer

    config = parse_config(["--config", recipe])
    chunks = chunk_and_split(load_sources(config.data), config.data)
    megabytes = text_bytes(chunks["train"]) / 1e6

    start = time.perf_counter()
    tokenizer = train_tokenizer(iter(chunks["train"]["text"]), config.model.vocab_size, 1024)
    tokenizer_seconds = time.perf_counter() - start

    datasets.disable_caching()  # measure real tokenization, not a cache read
    try:
        start = time.perf_counter()
        tokenize_and_pack(chunks, tokenizer, config.data)
        tokenize_seconds = time.perf_counter() - start
    finally:
        datasets.enable_caching()

    start = time.perf_counter()
    prepare_data(config)
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    prepare_data(config)
    cached_seconds = time.perf_counter() - start
    return {
        "train_megabytes": megabytes,
        "tokenizer_training_mb_per_second": megabytes / tokenizer_seconds,
        "tokenize_and_pack_mb_per_second": megabytes / tokenize_seconds,
        "cold_prepare_seconds": cold_seconds,
        "cached_prepare_seconds": cached_seconds,
    }


def print_table(results: dict) -> None:
    train, gen, data = results["training"], results["generation"], results["data"]
    rows = [
        (
            "training: hfmini loop",
            f"{train['hfmini_tokens_per_second']:,.0f} tokens/s",
            f"{train['speedup']:.2f}x plain eager ({train['plain_eager_tokens_per_second']:,.0f} tokens/s)",
        ),
        (
            "training: MFU",
            f"{train['mfu']:.1%}",
            f"of the {train['precision']} peak {train['peak_flops'] / 1e9:,.0f} GFLOP/s measured; "
            f"plain eager {train['plain_mfu']:.1%} of fp32 {train['fp32_peak_flops'] / 1e9:,.0f}",
        ),
        (
            "training: first steps",
            f"{train['hfmini_warmup_seconds']:.1f} s",
            f"torch_compile={train['torch_compile']}, {train['precision']}, "
            f"{train['attention']} attention",
        ),
        (
            "generation: KV cache",
            f"{gen['kv_cache_tokens_per_second']:,.0f} tokens/s",
            f"{gen['speedup']:.2f}x recompute ({gen['recompute_tokens_per_second']:,.0f} tokens/s), {gen['new_tokens']} new tokens",
        ),
        (
            "generation: transformers generate",
            f"{gen['transformers_generate_tokens_per_second']:,.0f} tokens/s",
            f"{gen['generate_speedup']:.2f}x recompute (KV cache too, more per-token work)",
        ),
        (
            "data: tokenizer training",
            f"{data['tokenizer_training_mb_per_second']:.2f} MB/s",
            f"{data['train_megabytes']:.1f} MB of training text",
        ),
        ("data: tokenize and pack", f"{data['tokenize_and_pack_mb_per_second']:.2f} MB/s", ""),
        (
            "data: prepare, cached",
            f"{data['cached_prepare_seconds']:.2f} s",
            f"cold {data['cold_prepare_seconds']:.1f} s",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nhfmini bench — {results['machine']}")
    print(f"model: {train['model']}, {train['parameters']:,} parameters, batch {train['batch']}\n")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfmini bench", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=REPO_RECIPE)
    parser.add_argument("--output", default="output/bench.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps_per_round", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="hfmini-bench-") as tmp:
        work_dir = Path(tmp)
        # A private datasets cache: the cold data run is really cold.
        os.environ["HF_DATASETS_CACHE"] = str(work_dir / "datasets")
        results = {
            "machine": _machine(),
            "recipe": args.recipe,
            "data": bench_data(args.recipe, work_dir),
            "training": bench_training(args.recipe, args.rounds, args.steps_per_round, work_dir),
            "generation": bench_generation(args.recipe),
        }
    print_table(results)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


def _machine() -> str:
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    sys.exit(main())
