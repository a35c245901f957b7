"""Continuing training on new data (--init_from_checkpoint): a checkpoint's weights, tokenizer and
optimizer state start a new run with a fresh schedule; resume stays strict."""

import json
import shutil
import sys

import pytest
import torch
import yaml
from conftest import TRAIN_SCRIPT, run_command, tiny_run_args, train_error, write_lines
from safetensors.torch import load_file

from hfmini.config import parse_config
from hfmini.run_folder import list_checkpoints
from hfmini.training.trainer import run_training


def corpus_args(tmp_path, name: str, seed: int) -> list[str]:
    text = write_lines(tmp_path / f"{name}.txt", 150, seed=seed)
    val = write_lines(tmp_path / f"{name}-val.txt", 40, seed=seed + 1)
    return ["--train_file", str(text), "--validation_file", str(val), "--vocab_size", "300"]


@pytest.fixture
def first_run(tmp_path):
    """4 steps on the first corpus, a checkpoint at step 2 (the end is the model, not a checkpoint)."""
    out = tmp_path / "first"
    args = tiny_run_args(out, 4, *corpus_args(tmp_path, "first", 0), "--save_steps", "2")
    run_training(parse_config([*args, "--block_size", "32"]))
    return out


def adam_steps(checkpoint) -> set[int]:
    state = torch.load(checkpoint / "optimizer.bin", weights_only=True)["state"]
    return {int(s["step"]) for s in state.values()}


def test_a_new_run_starts_from_the_checkpoint_weights_and_optimizer_state(tmp_path, first_run):
    """On another corpus: the weights are the checkpoint's (a step at a vanishing rate leaves them
    in place), Adam's moments go on counting (2 + 1 steps), the schedule and step count start at
    0, the tokenizer is the checkpoint's; the card and training_config.yaml say where it came
    from, by name, not by the user's path."""
    second = tmp_path / "second"
    args = tiny_run_args(second, 2, *corpus_args(tmp_path, "second", 7), "--block_size", "32")
    args += ["--init_from_checkpoint", str(first_run), "--save_steps", "1"]
    args += ["--learning_rate", "1e-12", "--warmup_steps", "0", "--logging_steps", "1"]
    run_training(parse_config(args))
    start = list_checkpoints(first_run)[-1]
    assert start.name == "step-2"  # a run folder: its newest checkpoint
    before, after = load_file(start / "model.safetensors"), load_file(second / "model.safetensors")
    assert max((before[k] - after[k]).abs().max().item() for k in before) < 1e-6
    checkpoint = list_checkpoints(second)[0]
    assert adam_steps(start) == {2} and adam_steps(checkpoint) == {3}
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 1
    rows = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    tokenizer = json.loads((second / "tokenizer.json").read_text())["model"]["vocab"]
    assert tokenizer == json.loads((start / "tokenizer.json").read_text())["model"]["vocab"]
    recorded = yaml.safe_load((second / "training_config.yaml").read_text())
    assert recorded["init_from_checkpoint"] == str(first_run)
    card = (second / "README.md").read_text()
    assert "Training started from checkpoint `first`" in card
    assert str(first_run) not in card


@pytest.mark.slow
def test_a_fresh_optimizer_would_count_from_one(tmp_path, first_run):
    """The contrast that makes the check above mean something: --model_name_or_path takes the
    weights alone, and Adam starts again at step 1."""
    out = tmp_path / "weights-only"
    start = list_checkpoints(first_run)[-1]
    args = tiny_run_args(out, 2, *corpus_args(tmp_path, "second", 7), finetune_from=start)
    run_training(parse_config([*args, "--save_steps", "1", "--block_size", "32"]))
    assert adam_steps(list_checkpoints(out)[0]) == {1}


def test_refusals_are_one_line(tmp_path, capsys, first_run):
    model_only = tmp_path / "model-only"
    model_only.mkdir()
    (model_only / "config.json").write_text("{}")
    data = [*corpus_args(tmp_path, "second", 7), "--block_size", "32"]
    error = train_error(
        capsys, *tiny_run_args(tmp_path / "a", 1, *data), "--init_from_checkpoint", str(model_only)
    )
    assert "without optimizer state" in error and "--model_name_or_path" in error
    error = train_error(
        capsys,
        *tiny_run_args(first_run, 1, *data, "--overwrite_output_dir", "true"),
        "--init_from_checkpoint",
        str(first_run / "checkpoints" / "step-2"),
    )
    assert "lies inside output_dir" in error
    assert list_checkpoints(first_run)  # nothing deleted
    error = train_error(
        capsys,
        *tiny_run_args(tmp_path / "b", 1, *data, "--n_embd", "32"),
        "--init_from_checkpoint",
        str(first_run),
    )
    assert "cannot start this run" in error and "training_config.yaml" in error
    error = train_error(
        capsys,
        *tiny_run_args(tmp_path / "c", 1, *data, finetune_from=first_run),
        "--init_from_checkpoint",
        str(first_run),
    )
    assert "was trained from scratch" in error and "drop --model_name_or_path" in error


def test_an_unfinished_run_is_not_taken_for_a_model(tmp_path, capsys, first_run):
    """A run's folder holds config.json from its start: without weights, the message names its
    newest checkpoint, not a damaged copy."""
    (first_run / "model.safetensors").unlink()
    data = [*corpus_args(tmp_path, "second", 7), "--block_size", "32"]
    error = train_error(capsys, *tiny_run_args(tmp_path / "d", 1, *data, finetune_from=first_run))
    assert "has not finished" in error and str(first_run / "checkpoints" / "step-2") in error


@pytest.mark.slow
def test_a_continued_run_resumes_strictly(tmp_path, first_run, capsys):
    """The continued run's own checkpoints resume it (with its command repeated, the flag kept);
    the resume still refuses other data."""
    second = tmp_path / "second"
    data = [*corpus_args(tmp_path, "second", 7), "--block_size", "32"]
    args = tiny_run_args(second, 3, *data, "--save_steps", "1")
    args += ["--init_from_checkpoint", str(first_run)]
    run_training(parse_config(args))
    # As if killed after its first checkpoint: the second and the model not written yet.
    shutil.rmtree(second / "checkpoints" / "step-2")
    (second / "model.safetensors").unlink()
    other = [*corpus_args(tmp_path, "third", 11), "--block_size", "32"]
    error = train_error(
        capsys,
        *tiny_run_args(second, 3, *other, "--save_steps", "1"),
        "--resume_from_checkpoint",
        "latest",
    )
    assert "differ from the checkpoint's" in error and "--init_from_checkpoint" in error
    run_training(parse_config([*args, "--resume_from_checkpoint", "latest"]))
    assert [p.name for p in list_checkpoints(second)] == ["step-1", "step-2"]
    assert (second / "model.safetensors").is_file()


@pytest.mark.slow
def test_continue_through_the_readme_command(tmp_path, first_run):
    out = tmp_path / "launched"
    args = tiny_run_args(out, 2, *corpus_args(tmp_path, "second", 7), "--block_size", "32")
    done = run_command(
        [sys.executable, str(TRAIN_SCRIPT), *args, "--init_from_checkpoint", str(first_run)]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "continued from checkpoint" in done.stderr
    assert "its weights and optimizer state" in done.stderr
    assert (out / "model.safetensors").is_file()
