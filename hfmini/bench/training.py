"""`make bench` section 1: hfmini's training step against a plain eager loop, and MFU."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hfmini.config import parse_config
from hfmini.models.device import default_device
from hfmini.training.setup import setup
from hfmini.training.throughput import measure_peak_flops

if TYPE_CHECKING:
    pass


from hfmini.bench.timing import LONG_RUN_STEPS, first_batches, optimizer_step, timed_rounds


def bench_training(recipe: str, rounds: int, steps_per_round: int, work_dir: Path) -> dict:
    from transformers import GPT2LMHeadModel

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
    batches = first_batches(run)
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

    hfmini_step = optimizer_step(run, batches)

    warmup_start = time.perf_counter()
    for _ in range(3):  # includes torch.compile's first compilation when enabled
        hfmini_step()
    warmup = time.perf_counter() - warmup_start
    for _ in range(3):
        plain_step()
    rates = timed_rounds(
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
