"""`make bench`: how much model per minute hfmini gets from this machine, as side-by-side ratios.

    python -m hfmini.bench [--recipe recipes/shakespeare/config.yaml] [--output output/bench.json]
                           [--only data training finetuning packing generation]

1. Training: tokens/s of hfmini's real training step (`hfmini.trainer.training_step` on a Run built
   by `setup` from the recipe) vs. a minimal eager PyTorch loop (forward, backward, AdamW step) on
   the same GPT2LMHeadModel, batch and sequence length; and MFU against the peak matmul FLOP/s
   measured in the same run. The two loops alternate in rounds, so load on a shared machine hits
   both alike; the ratio of medians is reported.
2. Fine-tuning: LoRA (`--use_peft true`, default settings) vs. full fine-tuning of a `mini`
   GPT-2 (random weights saved as a model folder, the recipe's tokenizer, batch and block size):
   tokens/s of hfmini's step, alternating rounds as above; peak memory of each in its own
   subprocess (CUDA: max allocated; CPU: peak RSS of the process); and the bytes of training state
   that scale with the trainable weights (gradients, AdamW's two moments, the EMA if the recipe
   keeps one), read from the tensors.
3. Generation: new tokens/s of hfmini's KV-cache decoding vs. recomputing the whole context for
   each new token, at 256 new tokens; transformers' `generate` on the same model for reference.
4. Chat data: training tokens/s (padding not counted) on the Shakespeare conversations, packed
   with position ids (attention kept within each example), one example per sequence padded, and
   packed without position ids (attention crossing examples: wrong, the plain causal speed).
5. Data: tokenizer training MB/s, tokenize-and-pack MB/s, and a second (cached) data preparation.

`--only packing generation` runs some sections.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hfmini.runtime import default_device

if TYPE_CHECKING:
    from hfmini.trainer import Run

REPO_RECIPE = "recipes/shakespeare/config.yaml"
# Long enough that torch_compile auto decides as for a real run, as in bench_training.
LONG_RUN_STEPS = "100000"
SECTIONS = ["data", "training", "finetuning", "packing", "generation"]


def _timed_rounds(variants: dict, rounds: int, steps_per_round: int, tokens_per_step: int) -> dict:
    """Alternate the variants round by round; returns median tokens/s of each."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            _synchronize()
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            _synchronize()
            rates[name].append(steps_per_round * tokens_per_step / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def _synchronize() -> None:
    """Wait for queued CUDA work, so that a round's time holds its own steps and no others."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _optimizer_step(run: Run, batches: list[dict[str, torch.Tensor]]) -> Callable[[], None]:
    """One optimizer step of hfmini's `training_step` per call, cycling through `batches`."""
    from hfmini.trainer import training_step

    accumulation = run.config.train.gradient_accumulation_steps
    position = 0

    def step() -> None:
        nonlocal position
        for _ in range(accumulation):
            training_step(run, batches[position % len(batches)])
            position += 1

    return step


def _first_batches(run: Run, count: int = 8) -> list[dict[str, torch.Tensor]]:
    """The first `count` (or fewer) batches of the run's loader, on its device."""
    return [batch for _, batch in zip(range(count), run.train_loader, strict=False)]


def bench_training(recipe: str, rounds: int, steps_per_round: int, work_dir: Path) -> dict:
    from transformers import GPT2LMHeadModel

    from hfmini.config import parse_config
    from hfmini.throughput import measure_peak_flops
    from hfmini.trainer import setup

    config = parse_config(
        [
            "--config",
            recipe,
            "--output_dir",
            str(work_dir / "train"),
            "--report_to",
            "none",
            "--max_steps",
            LONG_RUN_STEPS,
        ]
    )
    run = setup(config)
    batches = _first_batches(run)
    batch_shape = tuple(batches[0]["input_ids"].shape)
    tokens_per_step = batches[0]["input_ids"].numel() * config.train.gradient_accumulation_steps
    accumulation = config.train.gradient_accumulation_steps

    # The plain loop: a fresh model of the same config, default AdamW, the same batches.
    torch.manual_seed(0)
    # A copy of the config: transformers records the attention implementation on the config
    # object, so sharing it would switch hfmini's model to the plain loop's sdpa as well.
    plain_model = GPT2LMHeadModel._from_config(
        copy.deepcopy(run.accelerator.unwrap_model(run.model).config), attn_implementation="sdpa"
    )
    plain_optimizer = torch.optim.AdamW(plain_model.parameters(), lr=config.train.learning_rate)
    position = 0

    def plain_step() -> None:
        nonlocal position
        for _ in range(accumulation):
            ids = batches[position % len(batches)]["input_ids"]
            position += 1
            loss = plain_model(input_ids=ids, labels=ids, use_cache=False).loss / accumulation
            loss.backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad()

    hfmini_step = _optimizer_step(run, batches)

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
        "torch_compile": config.train.compile_on(default_device(config.train), precision),
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


def _base_model(recipe: str, preset: str, folder: Path) -> Path:
    """A `preset` GPT-2 with random weights (speed and memory do not depend on them) and the
    recipe's tokenizer and context, saved as a model folder to fine-tune from."""
    from hfmini.config import ModelArguments, parse_config
    from hfmini.data import prepare_data
    from hfmini.export import save_model
    from hfmini.model import build_model

    config = parse_config(["--config", recipe])
    _, tokenizer = prepare_data(config)
    model = build_model(ModelArguments(model_size=preset), tokenizer, config.context_length())
    return save_model(model, tokenizer, folder)


def _finetuning_recipe(recipe: str, base: Path, path: Path) -> Path:
    """The recipe rewritten to fine-tune `base`: the keys that shape a model from scratch are
    refused with model_name_or_path, and its learning rate is one for training from scratch
    (each kind then takes its own default). No weight average: the comparison is of what LoRA
    changes (gradients, optimizer state). Everything else (batch, block, precision) is kept."""
    import yaml

    from hfmini.config import FROM_SCRATCH_ONLY, read_yaml

    values = read_yaml(recipe, f"config file {recipe}", "save it as UTF-8 YAML") or {}
    dropped = {*FROM_SCRATCH_ONLY, "learning_rate"}
    values = {key: value for key, value in values.items() if key not in dropped}
    values.update(model_name_or_path=str(base), ema_decay=0.0)
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def training_state_bytes(run: Run) -> dict[str, int]:
    """The memory that scales with the trainable weights, from the tensors themselves: one
    gradient per trainable parameter (in its dtype; held from backward to the optimizer step),
    AdamW's exp_avg and exp_avg_sq (read from the optimizer, so call after a step), and the EMA's
    copy when the run keeps one."""
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    state = {
        "gradients": sum(p.numel() * p.element_size() for p in trainable),
        "adamw_moments": sum(
            tensor.numel() * tensor.element_size()
            for param_state in run.optimizer.state.values()
            for key, tensor in param_state.items()
            if key in ("exp_avg", "exp_avg_sq")
        ),
    }
    if run.ema is not None:
        state["ema"] = sum(t.numel() * t.element_size() for t in run.ema.average)
    return state


def peak_memory_of_run(argv: list[str], steps: int) -> int:
    """Peak memory (`hfmini.runtime.peak_memory_bytes`) of a Run built from `argv` over `steps`
    optimizer steps, after a first step. Meant for a fresh process, whose peak then belongs to
    this Run alone. The peak is reset after the first step: data preparation and torch.compile's
    first compilation peak higher than training itself and would hide the difference; the
    optimizer state, created by the first step, stays resident and is counted."""
    from hfmini.config import parse_config
    from hfmini.runtime import peak_memory_bytes, reset_peak_memory
    from hfmini.trainer import setup

    run = setup(parse_config(argv))
    step = _optimizer_step(run, _first_batches(run))
    step()
    _synchronize()
    reset_peak_memory(run.accelerator.device)
    for _ in range(steps):
        step()
    _synchronize()
    peak = peak_memory_bytes(run.accelerator.device)
    run.accelerator.end_training()
    return peak


def _peak_memory_in_subprocess(argv: list[str], steps: int) -> int:
    """peak_memory_of_run in a new Python process (`--peak_memory_run`): a process's peak
    cannot be split between two Runs that lived in it. Costs an import of torch and a data load."""
    request = json.dumps({"argv": argv, "steps": steps})
    command = [sys.executable, "-m", "hfmini.bench", "--peak_memory_run", request]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the peak-memory run {' '.join(argv)} failed: {last}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_memory_bytes"])


def bench_finetuning(
    recipe: str,
    rounds: int,
    steps_per_round: int,
    work_dir: Path,
    preset: str = "mini",
    overrides: Sequence[str] = (),
    memory_steps: int = 3,
) -> dict:
    """LoRA vs. full fine-tuning of one `preset` model on the recipe's data, batch and block:
    tokens/s side by side, peak memory each in its own process, and the training state's bytes.
    `overrides` (`--key value` ...) apply to both runs."""
    from accelerate.state import AcceleratorState

    from hfmini.config import parse_config
    from hfmini.model import count_parameters
    from hfmini.trainer import setup

    base = _base_model(recipe, preset, work_dir / f"base-{preset}")
    finetune_recipe = _finetuning_recipe(recipe, base, work_dir / "finetune.yaml")

    def argv(kind: str, purpose: str) -> list[str]:
        peft = ["--use_peft", "true"] if kind == "lora" else []
        return [
            "--config",
            str(finetune_recipe),
            "--output_dir",
            str(work_dir / f"finetune-{kind}-{purpose}"),
            "--report_to",
            "none",
            "--max_steps",
            LONG_RUN_STEPS,
            *peft,
            *overrides,
        ]

    # A fresh process-wide accelerate state, as in a new process: the first Accelerator of a
    # process fixes precision and torch.compile for all later ones, and bench_training's came
    # first. Both runs below share one config apart from use_peft, so they agree on both.
    AcceleratorState._reset_state(reset_partial_state=True)
    runs = {kind: setup(parse_config(argv(kind, "speed"))) for kind in ("full", "lora")}
    batches = _first_batches(runs["full"])  # the same blocks for both: same data and seed
    steps = {kind: _optimizer_step(run, batches) for kind, run in runs.items()}
    config = runs["full"].config
    batch_shape = list(batches[0]["input_ids"].shape)
    tokens_per_step = batches[0]["input_ids"].numel() * config.train.gradient_accumulation_steps
    for step in steps.values():
        for _ in range(3):  # includes torch.compile's first compilation when enabled
            step()
    rates = _timed_rounds(steps, rounds, steps_per_round, tokens_per_step)

    report: dict = {}
    plain = {
        kind: run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
        for kind, run in runs.items()
    }
    for kind, run in runs.items():
        state = training_state_bytes(run)
        report[kind] = {
            "tokens_per_second": rates[kind],
            "trainable_parameters": count_parameters(plain[kind]),
            "training_state_bytes": sum(state.values()),
            "training_state": state,
        }
    total = count_parameters(plain["full"], trainable_only=False)
    shape = plain["full"].config
    settings = plain["lora"].peft_config["default"]
    device, precision = runs["full"].accelerator.device, runs["full"].accelerator.mixed_precision
    compiled = config.train.compile_on(default_device(config.train), precision)
    for run in runs.values():
        run.accelerator.end_training()
    del runs, steps, batches, plain
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the subprocesses below need the GPU's memory

    for kind in ("full", "lora"):
        report[kind]["peak_memory_bytes"] = _peak_memory_in_subprocess(
            argv(kind, "memory"), memory_steps
        )
    full, lora = report["full"], report["lora"]
    return {
        "model": f"{preset} ({shape.n_layer}, {shape.n_head}, {shape.n_embd}) ctx "
        f"{shape.n_positions}",
        "parameters": total,
        "batch": batch_shape,
        "precision": precision.replace("no", "fp32"),
        "torch_compile": compiled,
        "lora_settings": f"r={settings.r}, alpha={settings.lora_alpha} on "
        + ", ".join(sorted(settings.target_modules)),
        "peak_memory_measure": "CUDA max allocated over training steps"
        if device.type == "cuda"
        else "peak RSS over training steps",
        "full": full,
        "lora": lora,
        "lora_speedup": lora["tokens_per_second"] / full["tokens_per_second"],
        "training_state_bytes_saved": full["training_state_bytes"] - lora["training_state_bytes"],
        "peak_memory_bytes_saved": full["peak_memory_bytes"] - lora["peak_memory_bytes"],
    }


class _VocabularyOnly:
    """What build_model needs of a tokenizer: its size and special ids (all 0, like ours)."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def bench_packing(work_dir: Path, rounds: int, n: int = 8) -> dict:
    """Training tokens/s (real tokens, padding not counted) on the Shakespeare conversations,
    micro GPT-2 with a 128-token context, fp32, in three layouts of the same examples: packed
    with position ids (block-diagonal attention, hfmini's default), one example per sequence
    padded to the batch's longest, and packed without position ids (attention crosses examples:
    wrong, kept as the speed of plain causal attention)."""
    from hfmini.config import parse_config
    from hfmini.data import prepare_data
    from hfmini.model import build_model
    from hfmini.packing import pad_sequences
    from hfmini.shakespeare import write_conversations
    from hfmini.trainer import model_inputs

    paths = write_conversations(work_dir / "chat", max_chars=300)
    layouts = {}
    for packing in ("true", "false"):
        argv = ["--train_file", str(paths["train"]), "--validation_file", str(paths["validation"])]
        argv += ["--block_size", "128", "--vocab_size", "2048", "--model_size", "micro"]
        argv += ["--packing", packing, "--per_device_train_batch_size", "16"]
        config = parse_config(
            [*argv, "--output_dir", str(work_dir / "packing"), "--report_to", "none"]
        )
        data, tokenizer = prepare_data(config)
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        size = config.train.per_device_train_batch_size
        rows = [[data.train[int(k)] for k in order[i * size : (i + 1) * size]] for i in range(n)]
        real = sum(row["input_ids"].numel() for batch in rows for row in batch)
        layouts[packing] = ([pad_sequences(batch, data.pad_id) for batch in rows], real)
    torch.manual_seed(0)
    model = build_model(config.model, tokenizer, 128, "sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def stepper(batches: list[dict], keep_positions: bool) -> Callable[[], None]:
        position = 0

        def step() -> None:
            nonlocal position
            batch = dict(batches[position % len(batches)])
            position += 1
            if not keep_positions:
                batch.pop("position_ids")
            model(**model_inputs(batch), use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    variants = {
        "packed, position ids": (layouts["true"], True),
        "one example a sequence, padded": (layouts["false"], True),
        "packed, no position ids (crosses examples)": (layouts["true"], False),
    }
    results = {}
    for name, ((batches, real), keep) in variants.items():
        step = stepper(batches, keep)
        for _ in range(2):
            step()
        rate = _timed_rounds({name: step}, rounds, n, real // n)[name]
        filled = real / sum(b["input_ids"].numel() for b in batches)
        results[name] = {"tokens_per_second": rate, "fill": filled}
    return results


def bench_generation(recipe: str, new_tokens: int = 256, repeats: int = 5) -> dict:
    """Greedy decoding of `new_tokens` tokens, same model: hfmini's KV-cache loop (what
    `hfmini generate` and training samples run), transformers' `generate` (also KV cache), and
    recomputing the whole context for each new token."""
    from hfmini.config import parse_config
    from hfmini.model import build_model
    from hfmini.sampling import decode

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
    seconds = {}
    try:
        for workers in (1, os.cpu_count() or 1):
            data_args = dataclasses.replace(config.data, preprocessing_num_workers=workers)
            start = time.perf_counter()
            tokenize_and_pack(chunks, tokenizer, data_args)
            seconds[workers] = time.perf_counter() - start
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
        "tokenize_and_pack_mb_per_second": megabytes / seconds[1],
        "tokenize_and_pack_all_cores_mb_per_second": megabytes / seconds[max(seconds)],
        "cores": max(seconds),
        "cold_prepare_seconds": cold_seconds,
        "cached_prepare_seconds": cached_seconds,
    }


def print_table(results: dict) -> None:
    rows = []
    if "training" in results:
        train = results["training"]
        rows += [
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
        ]
    if "finetuning" in results:
        tune = results["finetuning"]
        full, lora = tune["full"], tune["lora"]
        labels = {"gradients": "gradient", "adamw_moments": "2 AdamW moments", "ema": "EMA"}
        state_formula = " + ".join(labels[name] for name in lora["training_state"])
        rows += [
            (
                "finetuning: LoRA step",
                f"{lora['tokens_per_second']:,.0f} tokens/s",
                f"{tune['lora_speedup']:.2f}x full fine-tuning ({full['tokens_per_second']:,.0f} "
                f"tokens/s); {tune['model']}, {tune['lora_settings']}",
            ),
            (
                "finetuning: LoRA peak memory",
                f"{lora['peak_memory_bytes'] / 2**20:,.0f} MiB",
                f"full {full['peak_memory_bytes'] / 2**20:,.0f} MiB ({tune['peak_memory_measure']}, "
                "each run in its own process)",
            ),
            (
                "finetuning: LoRA training state",
                f"{lora['training_state_bytes'] / 2**20:,.1f} MiB",
                f"full {full['training_state_bytes'] / 2**20:,.1f} MiB: {lora['trainable_parameters']:,}"
                f" vs. {full['trainable_parameters']:,} trainable weights × ({state_formula})",
            ),
        ]
    if "packing" in results:
        packing = results["packing"]
        packed = packing["packed, position ids"]["tokens_per_second"]
        for name, figures in packing.items():
            rows.append(
                (
                    f"chat data: {name}",
                    f"{figures['tokens_per_second']:,.0f} tokens/s",
                    f"{figures['tokens_per_second'] / packed:.2f}x packed with position ids; "
                    f"{figures['fill']:.0%} of positions are tokens",
                )
            )
    if "generation" in results:
        gen = results["generation"]
        rows += [
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
        ]
    if "data" in results:
        data = results["data"]
        rows += [
            (
                "data: tokenizer training",
                f"{data['tokenizer_training_mb_per_second']:.2f} MB/s",
                f"{data['train_megabytes']:.1f} MB of training text",
            ),
            (
                "data: tokenize and pack",
                f"{data['tokenize_and_pack_mb_per_second']:.2f} MB/s",
                "1 process",
            ),
            (
                "data: tokenize and pack, all cores",
                f"{data['tokenize_and_pack_all_cores_mb_per_second']:.2f} MB/s",
                f"preprocessing_num_workers {data['cores']}",
            ),
            (
                "data: prepare, cached",
                f"{data['cached_prepare_seconds']:.2f} s",
                f"cold {data['cold_prepare_seconds']:.1f} s",
            ),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"\nhfmini bench — {results['machine']}")
    if "training" in results:
        train = results["training"]
        print(
            f"model: {train['model']}, {train['parameters']:,} parameters, batch {train['batch']}"
        )
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfmini bench", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=REPO_RECIPE)
    parser.add_argument("--output", default="output/bench.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps_per_round", type=int, default=4)
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="run these sections only"
    )
    # Internal: bench_finetuning's peak-memory subprocess ({"argv": [...], "steps": N} as JSON).
    parser.add_argument("--peak_memory_run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.peak_memory_run:
        request = json.loads(args.peak_memory_run)
        peak = peak_memory_of_run(request["argv"], request["steps"])
        print(json.dumps({"peak_memory_bytes": peak}))  # the last line: what the parent reads
        return 0
    with tempfile.TemporaryDirectory(prefix="hfmini-bench-") as tmp:
        work_dir = Path(tmp)
        # A private datasets cache: the cold data run is really cold.
        os.environ["HF_DATASETS_CACHE"] = str(work_dir / "datasets")
        sections = {
            "data": lambda: bench_data(args.recipe, work_dir),
            "training": lambda: bench_training(
                args.recipe, args.rounds, args.steps_per_round, work_dir
            ),
            "finetuning": lambda: bench_finetuning(
                args.recipe, args.rounds, args.steps_per_round, work_dir
            ),
            "packing": lambda: bench_packing(work_dir, args.rounds),
            "generation": lambda: bench_generation(args.recipe),
        }
        results = {"machine": _machine(), "recipe": args.recipe}
        results |= {name: run() for name, run in sections.items() if name in args.only}
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
