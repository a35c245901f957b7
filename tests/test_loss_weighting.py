"""Every label token weighs alike in an optimizer step, however the step's rows are split into
micro-batches and processes: the loss sums token losses over the whole accumulation window and
every process, and divides by their label count, as transformers' Trainer does
(num_items_in_batch over the window, average_tokens_across_devices)."""

import json
import random

import pytest
from conftest import run_command, tiny_run_args, torchrun_command
from safetensors.torch import load_file
from test_sft import WORDS, write_jsonl

from hfmini.config import parse_config
from hfmini.training.trainer import run_training


def words(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(k))


def uneven_rows(n: int, data_format: str) -> list[dict]:
    """Rows whose answers are 1 or 40 words long, alternately: as prompt-completion text or as
    conversations (the loss on the assistant turns only)."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        prompt, answer = words(rng, 5) + "\n", words(rng, 1 if i % 2 else 40)
        if data_format == "messages":
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            rows.append({"messages": turns})
        else:
            rows.append({"prompt": prompt, "completion": answer})
    return rows


def step_args(tmp_path, name: str, batch: int, accumulation: int, *overrides: str, lr=0.01):
    """One optimizer step of 8 rows on uneven answers, split as asked."""
    data_format = "messages" if "messages" in overrides else "prompt-completion"
    overrides = tuple(x for x in overrides if x != "messages")
    data = write_jsonl(tmp_path / f"{data_format}.jsonl", uneven_rows(48, data_format))
    args = tiny_run_args(tmp_path / name, 1, "--train_file", str(data), "--block_size", "64")
    args += ["--per_device_train_batch_size", str(batch)]
    args += ["--gradient_accumulation_steps", str(accumulation), "--logging_steps", "1"]
    # A constant rate from the first step; Adam's epsilon large, so that a step is proportional
    # to the gradient (with a small one the first step is lr × sign(gradient), blind to scale).
    args += ["--warmup_steps", "0", "--learning_rate", str(lr), "--lr_scheduler_type", "constant"]
    args += ["--adam_epsilon", "1", "--weight_decay", "0", "--max_grad_norm", "0"]
    return [*args, "--mixed_precision", "no", *overrides]


def weights_after_one_step(tmp_path, name, batch, accumulation, *overrides, lr=0.01) -> dict:
    run_training(parse_config(step_args(tmp_path, name, batch, accumulation, *overrides, lr=lr)))
    return load_file(tmp_path / name / "model.safetensors")


def logged_loss(folder) -> float:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return next(r["train/loss"] for r in rows if "train/loss" in r)


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(
    "overrides",
    [
        ("--packing", "false"),
        pytest.param(("--packing", "true"), marks=pytest.mark.slow),
        pytest.param(("messages", "--packing", "false"), marks=pytest.mark.slow),
    ],
    ids=["completion-only-padded", "completion-only-packed", "assistant-only-padded"],
)
def test_the_split_of_a_step_into_micro_batches_does_not_change_the_weights(tmp_path, overrides):
    """8 rows in one micro-batch, 2 × 4 and 4 × 2 with accumulation: the same step, and the same
    logged loss. Before the change (each micro-batch averaged over its own labels) 2 × 4 differed
    from 8 × 1 by about a tenth of the step; now by float rounding."""
    whole = weights_after_one_step(tmp_path, "8x1", 8, 1, *overrides)
    assert max_difference(whole, weights_after_one_step(tmp_path, "again", 8, 1, *overrides)) == 0
    start = weights_after_one_step(tmp_path, "start", 8, 1, *overrides, lr=1e-12)
    step = max_difference(whole, start)  # the whole optimizer step, for scale
    differences = {}
    for batch, accumulation in ((2, 4), (4, 2)):
        name = f"{batch}x{accumulation}"
        split = weights_after_one_step(tmp_path, name, batch, accumulation, *overrides)
        differences[name] = max_difference(whole, split)
        assert logged_loss(tmp_path / name) == pytest.approx(logged_loss(tmp_path / "8x1"), 1e-5)
    print(f"max |Δw| against 8 rows × 1, a step of {step:.2e}: {differences}")
    assert step > 1e-4
    assert all(d < 1e-3 * step for d in differences.values()), differences


@pytest.mark.slow
def test_two_processes_weigh_every_answer_token_like_one(tmp_path):
    """2 torchrun processes × 4 rows against 1 process × 8 rows, on uneven answers: the label
    count is summed over the processes before it divides, so both land on the same weights."""
    two = run_command(torchrun_command(*step_args(tmp_path, "two", 4, 1, "--packing", "false")))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "4 per device × 1 accumulation × 2 processes" in two.stderr
    whole = weights_after_one_step(tmp_path, "one", 8, 1, "--packing", "false")
    start = weights_after_one_step(tmp_path, "start", 8, 1, "--packing", "false", lr=1e-12)
    step = max_difference(whole, start)
    difference = max_difference(whole, load_file(tmp_path / "two" / "model.safetensors"))
    print(f"max |Δw| 2 processes × 4 against 1 × 8: {difference:.2e}, a step of {step:.2e}")
    assert difference < 1e-3 * step
    assert logged_loss(tmp_path / "two") == pytest.approx(logged_loss(tmp_path / "one"), 1e-5)
