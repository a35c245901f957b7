import json
from pathlib import Path

import pytest
from conftest import tiny_run_args

from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.training.trainer import run_training


def read_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_writes_a_hub_folder(tiny_args, tmp_path):
    metrics = run_training(parse_config(tiny_args))
    out = tmp_path / "out"
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_config.yaml",
        "eval_results.json",
        "metrics.jsonl",
        "loss_curve.png",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickles
    assert metrics["bits_per_byte"] > 0 and metrics["perplexity"] > 1
    rows = read_rows(out)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert train_rows[-1]["train/tokens_seen"] == 6 * 8 * 64
    assert train_rows[0]["train/learning_rate"] > 0
    assert rows[-1]["eval/bits_per_byte"] == pytest.approx(metrics["bits_per_byte"])
    results = json.loads((out / "eval_results.json").read_text())
    assert results["step"] == 6 and results["parameters"] > 100_000


def test_gradient_accumulation_counts_optimizer_steps(tiny_args, tmp_path):
    args = tiny_args + ["--gradient_accumulation_steps", "3", "--max_steps", "4"]
    run_training(parse_config(args))
    rows = [r for r in read_rows(tmp_path / "out") if "train/loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[-1]["train/tokens_seen"] == 4 * 3 * 8 * 64


def test_epochs_bound_the_run(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    args = tiny_run_args(
        tmp_path / "out",
        -1,
        "--train_file",
        str(text),
        "--num_train_epochs",
        "2",
        "--block_size",
        "32",
        "--vocab_size",
        "300",
    )
    config = parse_config(args)
    run_training(config)
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["step"] > 2 and results["step"] % 2 == 0  # whole epochs of equal length


def test_refuses_to_overwrite_a_finished_run(tiny_args, tmp_path):
    run_training(parse_config(tiny_args))
    weights = (tmp_path / "out" / "model.safetensors").read_bytes()
    with pytest.raises(HfminiError, match="already holds a run: add --overwrite_output_dir"):
        run_training(parse_config(tiny_args))
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == weights
    run_training(parse_config(tiny_args + ["--overwrite_output_dir", "true", "--seed", "1"]))
    assert (tmp_path / "out" / "model.safetensors").read_bytes() != weights
    assert len([r for r in read_rows(tmp_path / "out") if "train/loss" in r]) == 3  # not mixed
    # The previous run's evaluate.save result went with it: one result-*.json, the new run's.
    (result,) = (tmp_path / "out").glob("result-*.json")
    assert json.loads(result.read_text())["config"]["seed"] == 1


def test_output_dir_that_is_a_file(tiny_args, tmp_path):
    (tmp_path / "out").write_text("precious")
    with pytest.raises(HfminiError, match="is a file"):
        run_training(parse_config(tiny_args))
    assert (tmp_path / "out").read_text() == "precious"


def test_max_grad_norm_zero_means_no_clipping(tiny_args, tmp_path):
    """As in transformers' Trainer: 0 turns clipping off (it used to scale every update to ~0)."""
    from safetensors.torch import load_file

    def final_weights(name, max_grad_norm):
        out = tmp_path / name
        args = tiny_args + ["--output_dir", str(out), "--max_grad_norm", max_grad_norm]
        run_training(parse_config(args))
        norms = [r["train/grad_norm"] for r in read_rows(out) if "train/grad_norm" in r]
        return load_file(out / "model.safetensors"), norms

    off, off_norms = final_weights("off", "0")
    unbounded, _ = final_weights("unbounded", "1e9")
    tight, _ = final_weights("tight", "1e-4")
    assert all(norm > 0 for norm in off_norms)  # still measured for the log
    assert all((off[k] - unbounded[k]).abs().max() < 1e-6 for k in off)
    assert max((off[k] - tight[k]).abs().max() for k in off) > 1e-3
    assert "| gradient clipping | none |" in (tmp_path / "off" / "README.md").read_text()
    assert "| gradient clipping | 0.0001 |" in (tmp_path / "tight" / "README.md").read_text()


def test_training_and_validation_build_no_kv_cache(tiny_args, monkeypatch):
    """A cache per training forward is wasted work, and under FSDP + torch.compile it made every
    GPT-2 block recompile (seen on an H100). Only sampling may build one."""
    from transformers import cache_utils

    from hfmini.data.blocks import TokenValidation
    from hfmini.training.evaluation import score_validation
    from hfmini.training.interrupt import StopRequest
    from hfmini.training.loop import train
    from hfmini.training.setup import setup

    run = setup(parse_config(tiny_args))
    built = []
    original = cache_utils.DynamicCache.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cache_utils.DynamicCache, "__init__", counting)
    with StopRequest() as stop:
        assert train(run, stop)
    score_validation(run.model, TokenValidation(run.data.eval_tokens, 64), 8, run.token_bytes)
    run.accelerator.end_training()
    assert built == []
    # The counter does see a cache when one is built, so the check above can fail.
    run.model(input_ids=run.data.eval_tokens[:8].long()[None], use_cache=True)
    assert built


def test_the_training_step_takes_its_loss_from_the_run_objective(tiny_args):
    """The objective seam: whatever `run.objective` returns is what is backpropagated and
    logged, once per micro-batch; the loop around it is unchanged. Here a loss of constant value
    (zero gradient) stands in for another objective."""
    from hfmini.training.interrupt import StopRequest
    from hfmini.training.loop import train
    from hfmini.training.objectives import LossSum, next_token_loss
    from hfmini.training.setup import setup

    run = setup(parse_config([*tiny_args, "--gradient_accumulation_steps", "2"]))
    calls = []

    def constant_loss(model, batch):
        calls.append(batch["input_ids"].shape)
        summed = next_token_loss(model, batch)
        return LossSum(summed.total * 0 + 3.0 * summed.items, summed.items)

    run.objective = constant_loss
    with StopRequest() as stop:
        assert train(run, stop)
    run.accelerator.end_training()
    assert len(calls) == 6 * 2  # every micro-batch of 6 optimizer steps, and nothing else
    losses = [row["train/loss"] for row in read_rows(Path(run.config.train.output_dir))]
    assert losses and all(loss == pytest.approx(3.0) for loss in losses)
    assert all(
        row["train/grad_norm"] == 0.0
        for row in read_rows(Path(run.config.train.output_dir))
        if "train/grad_norm" in row
    )
