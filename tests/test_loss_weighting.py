"""Every label token weighs alike in an optimizer step, however the step's rows are split into
micro-batches: the loss sums token losses over the whole accumulation window and divides by its
label count, as transformers' Trainer does (num_items_in_batch over the window)."""

import random

from conftest import tiny_run_args
from safetensors.torch import load_file
from test_sft import WORDS, write_jsonl

from hfmini.config import parse_config
from hfmini.training.trainer import run_training


def uneven_rows(n: int) -> list[dict]:
    """Prompt-completion rows whose answers are 1 or 40 words long, alternately."""
    rng = random.Random(0)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"prompt": words(5) + "\n", "completion": words(1 if i % 2 else 40)} for i in range(n)]


def weights_after_one_step(
    tmp_path, name: str, batch: int, accumulation: int, learning_rate: float = 0.01
) -> dict:
    data = write_jsonl(tmp_path / "rows.jsonl", uneven_rows(48))
    out = tmp_path / name
    args = tiny_run_args(out, 1, "--train_file", str(data), "--block_size", "64")
    args += ["--per_device_train_batch_size", str(batch)]
    args += ["--gradient_accumulation_steps", str(accumulation), "--packing", "false"]
    # A constant rate from the first step; Adam's epsilon large, so that a step is proportional
    # to the gradient (with a small one the first step is lr × sign(gradient), blind to scale).
    args += [
        "--warmup_steps",
        "0",
        "--learning_rate",
        str(learning_rate),
        "--lr_scheduler_type",
        "constant",
    ]
    args += ["--adam_epsilon", "1", "--weight_decay", "0", "--max_grad_norm", "0"]
    run_training(parse_config(args))
    return load_file(out / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_the_split_of_a_step_into_micro_batches_does_not_change_the_weights(tmp_path):
    """8 rows in one micro-batch, 2 × 4 and 4 × 2 with accumulation: the same step."""
    whole = weights_after_one_step(tmp_path, "8x1", 8, 1)
    assert max_difference(whole, weights_after_one_step(tmp_path, "8x1-again", 8, 1)) == 0.0
    start = weights_after_one_step(tmp_path, "start", 8, 1, learning_rate=1e-12)
    step = max_difference(whole, start)  # the whole optimizer step, for scale
    differences = {}
    for batch, accumulation in ((2, 4), (4, 2)):
        split = weights_after_one_step(tmp_path, f"{batch}x{accumulation}", batch, accumulation)
        differences[f"{batch} rows × {accumulation} accumulation"] = max_difference(whole, split)
    print(f"max |Δw| against 8 rows × 1, a step of {step:.2e}: {differences}")
    assert all(d < 1e-3 * step for d in differences.values()), differences
