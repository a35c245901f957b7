"""`make bench` section 2: LoRA against full fine-tuning: speed, peak memory, training state."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hfmini.bench.timing import (
    LONG_RUN_STEPS,
    first_batches,
    optimizer_step,
    synchronize,
    timed_rounds,
)
from hfmini.config import ModelArguments, parse_config, read_yaml
from hfmini.config.defaults import FROM_SCRATCH_ONLY
from hfmini.data.prepare import prepare_data
from hfmini.models.device import default_device, peak_memory_bytes, reset_peak_memory
from hfmini.models.gpt2 import build_model
from hfmini.models.size import count_parameters
from hfmini.outputs.export import save_model
from hfmini.training.run import Run
from hfmini.training.setup import setup


def _base_model(recipe: str, preset: str, folder: Path) -> Path:
    """A `preset` GPT-2 with random weights (speed and memory do not depend on them) and the
    recipe's tokenizer and context, saved as a model folder to fine-tune from."""

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
    """Peak memory (`hfmini.training.accelerator.peak_memory_bytes`) of a Run built from `argv` over `steps`
    optimizer steps, after a first step. Meant for a fresh process, whose peak then belongs to
    this Run alone. The peak is reset after the first step: data preparation and torch.compile's
    first compilation peak higher than training itself and would hide the difference; the
    optimizer state, created by the first step, stays resident and is counted."""

    run = setup(parse_config(argv))
    step = optimizer_step(run, first_batches(run))
    step()
    synchronize()
    reset_peak_memory(run.accelerator.device)
    for _ in range(steps):
        step()
    synchronize()
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
    batches = first_batches(runs["full"])  # the same blocks for both: same data and seed
    steps = {kind: optimizer_step(run, batches) for kind, run in runs.items()}
    config = runs["full"].config
    batch_shape = list(batches[0]["input_ids"].shape)
    tokens_per_step = batches[0]["input_ids"].numel() * config.train.gradient_accumulation_steps
    for step in steps.values():
        for _ in range(3):  # includes torch.compile's first compilation when enabled
            step()
    rates = timed_rounds(steps, rounds, steps_per_round, tokens_per_step)

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
