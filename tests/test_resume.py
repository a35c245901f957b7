"""Checkpoints and exact resume: the classic bugs of the reference scripts, one test each."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TRAIN_SCRIPT, tiny_run_args
from safetensors.torch import load_file

from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.outputs.checkpoint import TrainState, resolve_resume_path
from hfmini.run_folder import list_checkpoints
from hfmini.training import interrupt
from hfmini.training.interrupt import StopRequest
from hfmini.training.trainer import run_training


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def weights(out):
    return load_file(out / "model.safetensors")


def max_weight_diff(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture
def small_data_args(small_data, tiny_base):
    """Short epochs (8 batches) so that runs cross epochs and checkpoints fall mid-epoch.
    `kind` lora: LoRA fine-tuning of the tiny base model instead of training from scratch."""

    def make(out, *extra, kind="scratch"):
        lora = kind == "lora"
        return tiny_run_args(
            out,
            10,
            *small_data,
            "--per_device_train_batch_size",
            "8",
            "--gradient_accumulation_steps",
            "3",
            "--logging_steps",
            "1",
            "--warmup_steps",
            "2",
            # The base's tokenizer cuts this text into more tokens: longer blocks keep epochs short.
            *(
                ("--use_peft", "true", "--lora_dropout", "0.1", "--block_size", "64")
                if lora
                else ()
            ),
            *extra,
            finetune_from=tiny_base if lora else None,
        )

    return make


@pytest.mark.parametrize(
    "kind, dropout, optim",
    [
        ("scratch", "0.0", "adamw_torch_fused"),
        ("scratch", "0.1", "adamw_torch_fused"),
        ("lora", "0.1", "adamw_torch_fused"),
        ("scratch", "0.0", "muon"),
    ],
)
def test_resume_mid_epoch_with_accumulation_is_exact(
    small_data_args, tmp_path, kind, dropout, optim
):
    """With dropout too: its random draws after a resume must be those of the uninterrupted run.
    LoRA: the checkpoint holds the adapters only; the frozen base comes from model_name_or_path.
    Muon: the checkpoint holds both optimizers' states (momentum; AdamW's moments)."""
    full, saved, resumed = tmp_path / "full", tmp_path / "saved", tmp_path / "resumed"
    dropout = (dropout, "--optim", optim)
    run_training(parse_config(small_data_args(full, "--dropout", *dropout, kind=kind)))
    args = small_data_args(saved, "--dropout", *dropout, "--save_steps", "4", kind=kind)
    run_training(parse_config(args))
    steps = [p.name for p in list_checkpoints(saved)]
    assert steps == ["step-4", "step-8"]
    state = TrainState.from_json(
        (saved / "checkpoints" / "step-4" / "trainer_state.json").read_text()
    )
    assert state.step == 4 and state.epoch >= 1 and state.batches_in_epoch > 0  # mid-epoch
    # A run "killed" right after step 4: only that checkpoint and the metrics up to it survive.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(saved / "checkpoints" / "step-4", resumed / "checkpoints" / "step-4")
    rows = (saved / "metrics.jsonl").read_text().splitlines()
    kept = [r for r in rows if json.loads(r)["step"] <= 4]
    later = [r for r in rows if json.loads(r)["step"] > 4][:2]  # a kill leaves a few extra rows
    (resumed / "metrics.jsonl").write_text("\n".join(kept + later) + "\n")
    resume = ("--dropout", *dropout, "--resume_from_checkpoint", "latest")
    run_training(parse_config(small_data_args(resumed, *resume, kind=kind)))
    assert losses(resumed) == pytest.approx(losses(full), rel=1e-5)
    assert sorted(losses(resumed)) == list(range(1, 11))  # each step logged once
    assert max_weight_diff(full, resumed) < 1e-5
    assert max_weight_diff(full, saved) == 0.0  # checkpointing does not disturb the run


def test_save_total_limit_keeps_newest(small_data_args, tmp_path):
    out = tmp_path / "o"
    run_training(parse_config(small_data_args(out, "--save_steps", "2", "--save_total_limit", "2")))
    assert [p.name for p in list_checkpoints(out)] == ["step-6", "step-8"]


def test_half_written_and_damaged_checkpoints_are_skipped(small_data_args, tmp_path):
    out = tmp_path / "o"
    run_training(parse_config(small_data_args(out, "--save_steps", "4")))
    ckpts = out / "checkpoints"
    shutil.copytree(ckpts / "step-8", ckpts / "step-9.tmp")  # a save killed midway
    (ckpts / "step-8" / "model.safetensors").write_bytes(b"")  # a damaged one
    assert resolve_resume_path(out, "latest") == ckpts / "step-4"
    with pytest.raises(HfminiError, match="is damaged"):
        resolve_resume_path(out, str(ckpts / "step-8"))
    with pytest.raises(HfminiError, match="not an hfmini checkpoint"):
        resolve_resume_path(out, str(tmp_path))


def test_existing_checkpoints_need_resume_or_overwrite(small_data_args, tmp_path):
    out = tmp_path / "o"
    (out / "checkpoints" / "step-3").mkdir(parents=True)
    (out / "checkpoints" / "step-3" / "trainer_state.json").write_text("{}")
    expected = (
        r"--resume_from_checkpoint latest to continue, or --overwrite_output_dir \(which deletes"
    )
    with pytest.raises(HfminiError, match=expected):
        run_training(parse_config(small_data_args(out)))
    assert (out / "checkpoints" / "step-3" / "trainer_state.json").read_text() == "{}"


@pytest.mark.parametrize("kind", ["scratch", "lora"])
def test_resume_restores_the_weight_average(small_data_args, tmp_path, kind):
    """With LoRA the average covers the adapters, the weights that train."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = small_data_args(full, "--ema_decay", "0.8", "--save_steps", "4", kind=kind)
    run_training(parse_config(args))
    assert (full / "checkpoints" / "step-4" / "ema.safetensors").is_file()
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-4", resumed / "checkpoints" / "step-4")
    args = small_data_args(
        resumed, "--ema_decay", "0.8", "--resume_from_checkpoint", "latest", kind=kind
    )
    run_training(parse_config(args))
    # The export is the average over all 10 steps, so a restarted average would differ.
    assert max_weight_diff(full, resumed) < 1e-5


def test_non_finite_loss_stops_with_the_step(small_data_args, tmp_path):
    out = tmp_path / "o"
    args = small_data_args(
        out,
        "--learning_rate",
        "1e30",
        "--max_grad_norm",
        "1e30",
        "--save_steps",
        "1",
        "--warmup_steps",
        "0",
        "--adam_epsilon",
        "1e-30",
    )
    with pytest.raises(HfminiError, match=r"non-finite at step (\d+)") as info:
        run_training(parse_config(args))
    bad_step = int(info.value.args[0].split("non-finite at step ")[1].split(":")[0])
    kept = list_checkpoints(out)
    assert kept and all(int(p.name.split("-")[1]) < bad_step for p in kept)
    last_losses = losses(out)
    assert all(torch.isfinite(torch.tensor(v)) for v in last_losses.values())


def test_second_ctrl_c_aborts(monkeypatch):
    monkeypatch.setattr(interrupt, "REPEAT_SECONDS", 0.0)  # pressed again, not passed on
    with StopRequest() as stop:
        stop.training()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def _wait_for_step(metrics_path, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics_path.is_file():
            rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
            if any(r["step"] >= step for r in rows):
                return
        time.sleep(0.02)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_matches(tmp_path):
    def command(out, *extra):
        return [
            sys.executable,
            str(TRAIN_SCRIPT),
            *tiny_run_args(out, 400, "--logging_steps", "1", *extra),
        ]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    proc = subprocess.Popen(
        command(stopped),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_step(stopped / "metrics.jsonl", 20, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM received" in err and "--resume_from_checkpoint latest" in err
    (checkpoint,) = list_checkpoints(stopped)
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 20 <= stopped_at < 400
    assert not (stopped / "model.safetensors").exists()
    resumed = subprocess.run(
        command(stopped, "--resume_from_checkpoint", "latest"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    uninterrupted = subprocess.run(command(full), cwd=REPO, env=env, capture_output=True, text=True)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    assert losses(stopped) == pytest.approx(losses(full), rel=1e-5)
    diff = max_weight_diff(full, stopped)
    print(f"stopped at step {stopped_at}; max |weight difference| after resume: {diff:.3g}")
    assert diff < 1e-5
