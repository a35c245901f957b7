"""Scale-out paths that can run on a CPU: real gloo data parallel, precision and memory options."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    TRAIN_SCRIPT,
    assert_eval_reproduces_report,
    reset_accelerate,
    run_command,
    tiny_run_args,
    torchrun_command,
)
from safetensors.torch import load_file

from hfmini.config import parse_config
from hfmini.training.trainer import run_training


def common(output_dir, *overrides):
    """8 steps of the tiny recipe, logged every 2."""
    return tiny_run_args(output_dir, 8, "--logging_steps", "2", *overrides)


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def max_diff(a, b):
    wa, wb = load_file(Path(a) / "model.safetensors"), load_file(Path(b) / "model.safetensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scratch", "lora"])
def test_torchrun_two_cpu_processes_form_one_data_parallel_job(tmp_path, kind, tiny_base):
    """2 processes × 4 blocks must equal 1 process × 8 blocks: each rank gets different blocks
    and gradients are averaged. Independent copies (the Accelerator(cpu=False) bug) would each
    train on 4 blocks and differ. In fp32: bf16 rounds differently when the batch is split.
    LoRA: the adapters of a fine-tuned base (without dropout, whose draws differ per rank)."""

    def common(output_dir, *overrides):
        if kind == "scratch":
            return tiny_run_args(output_dir, 8, "--logging_steps", "2", *overrides)
        lora = ("--logging_steps", "2", "--use_peft", "true", "--lora_dropout", "0")
        return tiny_run_args(output_dir, 8, *lora, *overrides, finetune_from=tiny_base)

    two = run_command(
        torchrun_command(
            *common(
                tmp_path / "two", "--mixed_precision", "no", "--per_device_train_batch_size", "4"
            )
        )
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "processes: 2 (MULTI_CPU" in two.stderr
    assert "4 per device × 1 accumulation × 2 processes = 8 blocks = 512 tokens" in two.stderr
    assert two.stderr.count("model saved to") == 1  # only the main process writes and logs
    run_training(
        parse_config(
            common(
                tmp_path / "one", "--mixed_precision", "no", "--per_device_train_batch_size", "8"
            )
        )
    )
    train_two = [r for r in rows(tmp_path / "two") if "train/loss" in r]
    train_one = [r for r in rows(tmp_path / "one") if "train/loss" in r]
    assert [r["step"] for r in train_two] == [2, 4, 6, 8]  # written once, not once per rank
    assert [r["train/loss"] for r in train_two] == pytest.approx(
        [r["train/loss"] for r in train_one], rel=1e-5
    )
    assert max_diff(tmp_path / "two", tmp_path / "one") < 1e-4


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "recipes" / "accelerate_configs" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}[name]
    assert config.distributed_type.value == expected


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    run_training(parse_config(common(tmp_path / "plain")))
    run_training(parse_config(common(tmp_path / "ckpt", "--gradient_checkpointing", "true")))
    assert max_diff(tmp_path / "plain", tmp_path / "ckpt") < 1e-5


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
def test_bf16_on_cpu_trains_under_autocast_and_reports_the_fp32_export(tmp_path, capsys):
    """bf16 mixed precision on a CPU: the losses are those of autocast (not fp32), the saved
    weights are fp32, and the final figures are those `hfmini eval` gets from the export."""
    from transformers import AutoModelForCausalLM

    bf16, fp32 = tmp_path / "bf16", tmp_path / "fp32"
    run_training(parse_config(common(bf16, "--mixed_precision", "bf16")))
    reset_accelerate()
    run_training(parse_config(common(fp32, "--mixed_precision", "no")))
    bf16_losses = [r["train/loss"] for r in rows(bf16) if "train/loss" in r]
    fp32_losses = [r["train/loss"] for r in rows(fp32) if "train/loss" in r]
    assert bf16_losses != fp32_losses  # autocast really ran
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.02)  # and trained the same model
    weights = load_file(bf16 / "model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    # The eager attention used for bf16 CPU training is not recorded: the export loads as sdpa.
    assert AutoModelForCausalLM.from_pretrained(bf16).config._attn_implementation == "sdpa"

    assert_eval_reproduces_report(bf16, capsys, "--batch_size", "32")
    # Each card records the precision its run trained in, whatever this machine would pick.
    assert "| precision | bf16 autocast, fp32 weights |" in (bf16 / "README.md").read_text()
    assert "| precision | fp32 |" in (fp32 / "README.md").read_text()


def test_fp16_on_cpu_warns_and_trains_in_fp32(tmp_path, caplog):
    run_training(parse_config(common(tmp_path / "fp16", "--mixed_precision", "fp16")))
    assert "needs a GPU: training in fp32" in caplog.text
    weights = load_file(tmp_path / "fp16" / "model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    assert "| precision | fp32 |" in (tmp_path / "fp16" / "README.md").read_text()


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from hfmini.models.device import cpu_has_native_bf16

    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx2\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx2\n")
    assert cpu_has_native_bf16(str(with_bf16))
    assert not cpu_has_native_bf16(str(without))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_attention_is_eager_only_for_bf16_on_cpu():
    import torch

    from hfmini.training.accelerator import attention_for

    assert attention_for(torch.device("cpu"), "bf16") == "eager"
    assert attention_for(torch.device("cpu"), "no") == "sdpa"
    assert attention_for(torch.device("cuda"), "bf16") == "sdpa"


@pytest.mark.slow
def test_torch_compile_trains_like_eager_and_exports_a_plain_model(tmp_path, capsys):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    args = ["--max_steps", "4", "--logging_steps", "1"]
    run_training(parse_config(common(eager, *args)))
    result = subprocess.run(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            *common(compiled, *args, "--torch_compile", "true"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loss_eager = [r["train/loss"] for r in rows(eager) if "train/loss" in r]
    loss_compiled = [r["train/loss"] for r in rows(compiled) if "train/loss" in r]
    assert loss_compiled == pytest.approx(loss_eager, rel=1e-3)
    # The export is a plain model: the same weight names as eager (no "_orig_mod." prefix), so
    # from_pretrained loads every weight and scores what training reported.
    assert set(load_file(compiled / "model.safetensors")) == set(
        load_file(eager / "model.safetensors")
    )
    assert max_diff(compiled, eager) < 1e-2
    assert_eval_reproduces_report(compiled, capsys, "--batch_size", "32")


@pytest.mark.slow
def test_torchrun_processes_agree_when_a_time_budget_ends_the_run(tmp_path):
    """Each process has its own clock; they take the slowest (an all-reduce a step), so all stop
    after the same step with the same learning rate. Were they to disagree, the one still
    training would wait forever in its gradient all-reduce (the timeout would fail the test)."""
    out = tmp_path / "two"
    args = tiny_run_args(
        out,
        100_000,
        "--max_train_minutes",
        "0.15",
        "--logging_steps",
        "1",
        "--warmup_steps",
        "0.1",
        "--lr_scheduler_type",
        "linear",
        "--mixed_precision",
        "no",
        "--per_device_train_batch_size",
        "4",
    )
    two = run_command(torchrun_command(*args))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "0.15 minutes of training, whichever comes first" in two.stderr
    assert re.search(r"trained \d+ steps \(\d+\.\d+M tokens\) in 0\.\d minutes", two.stderr)
    assert two.stderr.count("model saved to") == 1
    results = json.loads((out / "eval_results.json").read_text())
    train = [r for r in rows(out) if "train/loss" in r]
    assert 10 < results["step"] < 100_000 and train[-1]["step"] == results["step"]
    assert train[-1]["train/learning_rate"] == pytest.approx(0.0, abs=1e-9)
    assert results["train_runtime"] == pytest.approx(9.0, rel=0.2)
