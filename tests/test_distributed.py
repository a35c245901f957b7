"""Scale-out paths that can run on a CPU: real gloo data parallel, precision and memory options."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, REPO, TINY_RECIPE
from safetensors.torch import load_file

from hfmini.config import parse_config
from hfmini.train import run_training

COMMON = [
    "--config",
    str(TINY_RECIPE),
    "--max_steps",
    "8",
    "--logging_steps",
    "2",
    "--eval_steps",
    "0",
    "--sample_max_new_tokens",
    "4",
]


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def max_diff(a, b):
    wa, wb = load_file(Path(a) / "model.safetensors"), load_file(Path(b) / "model.safetensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_torchrun_two_cpu_processes_form_one_data_parallel_job(tmp_path):
    """2 processes × 4 blocks must equal 1 process × 8 blocks: each rank gets different blocks
    and gradients are averaged. Independent copies (the Accelerator(cpu=False) bug) would each
    train on 4 blocks and differ."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    two = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "recipes/train.py",
            *COMMON,
            "--per_device_train_batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "two"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "processes: 2 (MULTI_CPU" in two.stderr
    assert "4 per device × 1 accumulation × 2 processes = 8 blocks = 512 tokens" in two.stderr
    assert two.stderr.count("model saved to") == 1  # only the main process writes and logs
    run_training(
        parse_config(
            [*COMMON, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one")]
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
    run_training(parse_config([*COMMON, "--output_dir", str(tmp_path / "plain")]))
    run_training(
        parse_config(
            [*COMMON, "--output_dir", str(tmp_path / "ckpt"), "--gradient_checkpointing", "true"]
        )
    )
    assert max_diff(tmp_path / "plain", tmp_path / "ckpt") < 1e-5


def test_mixed_precision_on_cpu_trains_in_fp32(tmp_path, caplog):
    run_training(
        parse_config([*COMMON, "--output_dir", str(tmp_path / "bf16"), "--mixed_precision", "bf16"])
    )
    assert "needs a GPU: training in fp32" in caplog.text
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}


def test_torch_compile_trains_like_eager(tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    args = [*COMMON, "--max_steps", "4", "--logging_steps", "1"]
    run_training(parse_config([*args, "--output_dir", str(eager)]))
    result = subprocess.run(
        [
            sys.executable,
            "recipes/train.py",
            *args,
            "--output_dir",
            str(compiled),
            "--torch_compile",
            "true",
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
