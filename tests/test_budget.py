"""The time budget (max_train_minutes): where a run stops, how its schedule and weight average
follow the time, what does not count, and an exact resume.

Runs here use a fake clock that advances one second per micro-batch, so "minutes of training" are
exact step counts and the tests do not depend on the machine's speed."""

import json
import shutil

import pytest
import torch
from conftest import tiny_run_args

import hfmini.training.budget
import hfmini.training.ema
import hfmini.training.loop
from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.training.budget import Progress, RunLength, TrainClock
from hfmini.training.schedule import build_scheduler
from hfmini.training.trainer import run_training


class FakeTime:
    """Stands in for the `time` module of budget.py: perf_counter() is `now`."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch):
    """One second of training per micro-batch; validation and checkpoints take 100 s each, which
    must not count."""
    clock = FakeTime()
    monkeypatch.setattr(hfmini.training.budget, "time", clock)
    step, validate, save = (
        hfmini.training.loop.training_step,
        hfmini.training.loop.validate,
        hfmini.training.loop.save,
    )

    def timed(original, seconds):
        def call(*args, **kwargs):
            clock.now += seconds
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(hfmini.training.loop, "training_step", timed(step, 1.0))
    monkeypatch.setattr(hfmini.training.loop, "validate", timed(validate, 100.0))
    monkeypatch.setattr(hfmini.training.loop, "save", timed(save, 100.0))
    return clock


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def budget_args(out, seconds, *extra, max_steps=1000):
    return tiny_run_args(
        out,
        max_steps,
        "--max_train_minutes",
        str(seconds / 60),
        "--logging_steps",
        "1",
        "--warmup_steps",
        "0.25",
        "--lr_scheduler_type",
        "linear",
        *extra,
    )


def test_progress_is_the_further_of_steps_and_time():
    both = RunLength(total_steps=100, budget_seconds=60.0)
    assert both.progress(10, 30.0) == 0.5  # time leads
    assert both.progress(80, 30.0) == 0.8  # steps lead
    assert both.progress(120, 0.0) == 1.0
    assert RunLength(total_steps=None, budget_seconds=60.0).progress(10_000, 15.0) == 0.25
    assert "whichever comes first" in both.describe()


def test_clock_counts_only_unpaused_time(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(hfmini.training.budget, "time", fake)
    clock = TrainClock(seconds=5.0)  # resumed: 5 s trained before
    clock.start()
    fake.now += 2
    with clock.paused():
        fake.now += 50
        assert clock.seconds() == 7.0
    fake.now += 1
    assert clock.seconds() == 8.0
    clock.stop()
    fake.now += 10
    assert clock.seconds() == 8.0


def test_schedule_follows_the_fraction_done():
    """Linear with a 10% warmup, laid out over progress rather than steps."""
    args = parse_config(["--lr_scheduler_type", "linear", "--warmup_steps", "0.1"]).train
    args.learning_rate = 1.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    progress = Progress()
    scheduler = build_scheduler(optimizer, args, RunLength(None, 300.0), progress)
    seen = {}
    for step, done in [(1, 0.05), (7, 0.1), (40, 0.55), (90, 1.0)]:
        progress.step, progress.done = step, done
        optimizer.step()
        scheduler.step()
        seen[done] = scheduler.get_last_lr()[0]
    assert seen[0.05] == pytest.approx(0.5)  # halfway through the warmup
    assert seen[0.1] == pytest.approx(1.0)
    assert seen[0.55] == pytest.approx(0.5)  # halfway through the decay
    assert seen[1.0] == pytest.approx(0.0, abs=1e-9)


def test_schedule_without_a_shape_over_time_is_refused():
    args = parse_config(["--lr_scheduler_type", "reduce_lr_on_plateau"]).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    with pytest.raises(HfminiError, match="cannot be laid out over a time budget"):
        build_scheduler(optimizer, args, RunLength(None, 60.0), Progress())


def test_negative_budget_is_refused():
    with pytest.raises(HfminiError, match="max_train_minutes must be >= 0"):
        parse_config(["--max_train_minutes", "-1"])


@pytest.mark.slow
def test_budget_ends_the_run_annealed_and_records_its_steps(fake_time, tmp_path):
    """12 s of training at 1 s a step: 12 steps, whatever max_steps says; evaluation (every 5
    steps) and checkpoints (every 4) take 100 s each and do not count; the learning rate ends at
    zero and the card says what bounded the run."""
    out = tmp_path / "o"
    run_training(parse_config(budget_args(out, 12, "--eval_steps", "5", "--save_steps", "4")))
    rows = metrics(out)
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == list(range(1, 13))
    rates = {r["step"]: r["train/learning_rate"] for r in rows if "train/loss" in r}
    # warmup over the first quarter (3 s), then linear to 0 at 12 s
    assert rates[2] == pytest.approx(0.003 * 2 / 3)
    assert rates[3] == pytest.approx(0.003)
    assert rates[12] == pytest.approx(0.0, abs=1e-12)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["step"] == 12 and results["train_runtime"] == pytest.approx(12.0)
    assert results["tokens_seen"] == 12 * 8 * 64
    card = (out / "README.md").read_text()
    assert "12 in 0.2 minutes of training (budget 0.2 minutes, max_steps 1,000)" in card


def test_max_steps_ends_the_run_first(fake_time, tmp_path):
    out = tmp_path / "o"
    run_training(parse_config(budget_args(out, 600, max_steps=6)))
    results = json.loads((out / "eval_results.json").read_text())
    assert results["step"] == 6
    rows = [r for r in metrics(out) if "train/loss" in r]
    assert rows[-1]["train/learning_rate"] == pytest.approx(0.0, abs=1e-12)


def test_weight_average_window_shrinks_with_the_run(fake_time, tmp_path, monkeypatch):
    """ema_decay 0.9 is set for max_steps 40; a budget that ends the run at 10 steps gives a
    window a quarter as long: decay 0.6."""
    out = tmp_path / "o"
    config = parse_config(budget_args(out, 10, "--ema_decay", "0.9", max_steps=40))
    decays = []
    update = hfmini.training.ema.WeightAverage.update

    def recording(self, window_scale=1.0):
        decays.append(1.0 - (1.0 - self.decay) / window_scale)
        return update(self, window_scale)

    monkeypatch.setattr(hfmini.training.ema.WeightAverage, "update", recording)
    run_training(config)
    assert decays[-1] == pytest.approx(0.6)


def test_resume_keeps_the_budget_exact(fake_time, tmp_path):
    """Stopped at step 4 of a 12 s budget and resumed: the same 12 steps and the same weights."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_training(parse_config(budget_args(full, 12, "--save_steps", "4")))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-4", resumed / "checkpoints" / "step-4")
    saved = json.loads((resumed / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert saved["train_seconds"] == pytest.approx(4.0)
    run_training(
        parse_config(
            budget_args(resumed, 12, "--save_steps", "4", "--resume_from_checkpoint", "latest")
        )
    )
    assert json.loads((resumed / "eval_results.json").read_text())["step"] == 12
    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.slow
def test_compilation_happens_before_the_clock_and_leaves_the_run_unchanged(
    fake_time, tmp_path, monkeypatch
):
    """torch.compile's first compilation would eat the warmup of a budget laid out over minutes,
    so it runs on a throwaway forward and backward before the clock starts. That pass must not
    change the run: its gradients are dropped, so the weights equal those of a run that compiled
    inside its first step. (Without dropout: inductor draws a compiled graph's random numbers
    from its own stream, which the pass moves on; the CPU generator it restores.)"""
    from safetensors.torch import load_file

    extra = ("--torch_compile", "true")
    states = []
    original = hfmini.training.loop.compile_before_the_clock

    def recording(run, batch):
        states.append((run.clock.running, run.clock.seconds()))
        return original(run, batch)

    monkeypatch.setattr(hfmini.training.loop, "compile_before_the_clock", recording)
    run_training(parse_config(budget_args(tmp_path / "warmed", 6, *extra)))
    assert states == [(False, 0.0)]
    monkeypatch.setattr(hfmini.training.loop, "compile_before_the_clock", lambda run, batch: None)
    run_training(parse_config(budget_args(tmp_path / "in_step", 6, *extra)))
    a = load_file(tmp_path / "warmed" / "model.safetensors")
    b = load_file(tmp_path / "in_step" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.parametrize(
    "kind, warmup", [("linear", "5"), ("cosine", "5"), ("cosine", "0.13"), ("constant", "0")]
)
def test_a_budget_that_max_steps_ends_first_keeps_the_step_schedule(kind, warmup):
    """max_steps 20 and an hour of budget, steps that take no time: the learning rate at every
    step is transformers' get_scheduler over 20 steps, warmup included (the budget reshapes
    nothing while max_steps leads)."""
    from transformers import get_scheduler

    from hfmini.training.schedule import warmup_steps_for

    args = parse_config(["--lr_scheduler_type", kind, "--warmup_steps", warmup]).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    progress, length = Progress(), RunLength(20, 3600.0)
    scheduler = build_scheduler(optimizer, args, length, progress)
    reference_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    warmup_steps = warmup_steps_for(float(warmup), 20)
    reference = get_scheduler(kind, reference_optimizer, warmup_steps, num_training_steps=20)
    assert scheduler.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0], abs=1e-6)
    for step in range(1, 21):
        progress.step, progress.done = step, length.progress(step, seconds=step * 0.01)
        for each in (optimizer, reference_optimizer):
            each.step()
        scheduler.step()
        reference.step()
        assert scheduler.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0], abs=1e-5)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", ".nan", ".inf"])
def test_a_budget_that_is_not_a_finite_number_is_refused(value, tmp_path):
    """On the command line and in a YAML recipe (where `nan` is a string, `.nan` a float)."""
    shown = value.lstrip(".").replace("-1", "-1.0")
    expected = f"max_train_minutes must be >= 0 and finite \\(0: no time budget\\), got {shown}"
    if not value.startswith("."):  # YAML's spelling; the command line takes nan, inf
        with pytest.raises(HfminiError, match=expected):
            parse_config([f"--max_train_minutes={value}"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"max_train_minutes: {value}\n")
    with pytest.raises(HfminiError, match=expected):
        parse_config(["--config", str(recipe)])
