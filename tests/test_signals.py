"""Ctrl-C, SIGTERM and preemption through the README's own command (`make train`'s).

A terminal's Ctrl-C goes to the whole foreground process group; a scheduler's SIGTERM to the
command's pid. Either must end on one line, the checkpoint and the exact command that resumes it,
with exit status 130 or 143, no traceback, and that command must finish the run.
"""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import BIN, REPO, TRAIN_SCRIPT, tiny_run_args, write_lines
from test_launch import kill_group, linux_only, metric_rows, readme_main_command, trained_steps

from hfmini.run_folder import list_checkpoints
from hfmini.training import interrupt
from hfmini.training.interrupt import Interrupted, StopRequest, resume_command

# --- the handler, in this process: milliseconds ----------------------------------------------


def test_a_signal_before_training_raises_at_once():
    with StopRequest() as stop:
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == 143 and not stop.requested


def test_a_repeat_within_the_second_is_the_same_request(monkeypatch):
    with StopRequest() as stop:
        stop.training()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # torchrun's agent passing the group's Ctrl-C on
        assert stop.requested and stop.exit_code == 130
        monkeypatch.setattr(interrupt, "REPEAT_SECONDS", 0.0)
        with pytest.raises(Interrupted):  # pressed again later: abort
            os.kill(os.getpid(), signal.SIGINT)


def test_under_an_elastic_agent_a_saved_stop_exits_0(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    with StopRequest() as stop:
        stop.training()
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.exit_code == 0


@pytest.mark.parametrize(
    ("typed", "resumed"),
    [
        (
            ["recipes/train.py", "--config", "a b.yaml"],
            "--config 'a b.yaml' --resume_from_checkpoint latest",
        ),
        (
            ["recipes/train.py", "--resume_from_checkpoint", "x/step-3", "--seed", "1"],
            "--resume_from_checkpoint latest --seed 1",
        ),
    ],
)
def test_the_resume_command_is_the_command_typed(monkeypatch, typed, resumed):
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(sys, "argv", typed)
    monkeypatch.setattr(sys, "orig_argv", [".venv/bin/python", "-u", *typed])
    assert resume_command() == f".venv/bin/python -u recipes/train.py {resumed}"


# --- the README's command, signalled: tens of seconds each ----------------------------------


class Started:
    """The README's command in a session of its own, as a terminal or a scheduler starts it,
    its stderr read as it comes (tqdm's carriage returns end lines too)."""

    def __init__(self, args: list[str], env: dict | None = None, launcher=None) -> None:
        readme = readme_main_command()
        assert readme[-2] == "--config", readme  # the README's recipe; args bring their own
        self.proc = subprocess.Popen(
            (launcher or readme[:-2]) + args,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr))
        self.reader.start()

    def wait_for(self, condition, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
            time.sleep(0.05)

    def wait_for_step(self, out, step: int) -> None:
        self.wait_for(lambda: max(trained_steps(out), default=0) >= step, f"step {step}")

    def signal(self, how: str) -> None:
        """Ctrl-C: SIGINT to the whole process group; SIGTERM: to the command's pid alone."""
        if how == "ctrl-c":
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            kill_group(self.proc.pid)
            self.reader.join(timeout=10)
        return code, self.text()

    def text(self) -> str:
        return "".join(self.lines)


def ends_on_the_resume_line(run: Started, code: int) -> list[str]:
    """Exit `code`, no traceback, last line the checkpoint and the command; returns that
    command's words."""
    returned, err = run.finish()
    assert returned == code, err[-3000:]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "checkpoint saved to " in last and "; to go on: " in last, err[-3000:]
    checkpoint = last.split("checkpoint saved to ")[1].split(" (step")[0]
    assert os.path.isdir(checkpoint), last
    command = shlex.split(last.split("; to go on: ")[1])
    assert command[-2:] == ["--resume_from_checkpoint", "latest"], last
    return command


def resume_finishes(command: list[str], out, steps: int) -> None:
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert trained_steps(out) == list(range(1, steps + 1))  # every step once: continued
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("sigterm", 143)])
def test_a_signal_while_training_saves_says_how_to_resume_and_resume_finishes(tmp_path, how, code):
    out = tmp_path / "out"
    run = Started(tiny_run_args(out, 12, "--logging_steps", "1"))
    run.wait_for_step(out, 3)
    run.signal(how)
    command = ends_on_the_resume_line(run, code)
    (checkpoint,) = list_checkpoints(out)
    assert max(trained_steps(out)) == int(checkpoint.name.split("-")[1]) < 12
    resume_finishes(command, out, 12)


@pytest.mark.slow
@linux_only
def test_ctrl_c_under_the_ddp_config_saves_once_and_resume_finishes(tmp_path):
    """docs/running.md's DDP command, two CPU processes: the terminal's SIGINT reaches both
    workers, then the elastic agent sends each another; that is one request, not an abort."""
    out = tmp_path / "out"
    ddp = REPO / "recipes" / "accelerate_configs" / "ddp.yaml"
    launcher = [str(BIN / "accelerate"), "launch", "-q", "--config_file", str(ddp)]
    launcher += ["--num_processes", "2", "--mixed_precision", "no", str(TRAIN_SCRIPT)]
    run = Started(tiny_run_args(out, 12, "--logging_steps", "1"), launcher=launcher)
    run.wait_for_step(out, 3)
    run.signal("ctrl-c")
    command = ends_on_the_resume_line(run, 130)
    assert command[:2] == [str(BIN / "accelerate"), "launch"]
    assert len(list_checkpoints(out)) == 1
    resume_finishes(command, out, 12)


@pytest.mark.slow
@linux_only
def test_a_mistake_under_the_ddp_config_is_said_once(tmp_path):
    ddp = REPO / "recipes" / "accelerate_configs" / "ddp.yaml"
    launcher = [str(BIN / "accelerate"), "launch", "-q", "--config_file", str(ddp)]
    launcher += ["--num_processes", "2", "--mixed_precision", "no", str(TRAIN_SCRIPT)]
    run = Started(tiny_run_args(tmp_path / "out", 12, "--learning_rte", "1"), launcher=launcher)
    code, err = run.finish()
    assert code == 1 and "Traceback (most recent call last)" not in err, err[-3000:]
    assert err.count("error: unknown config key 'learning_rte'") == 1, err[-3000:]


@pytest.mark.slow
@linux_only
def test_ctrl_c_twice_quickly_is_one_request(tmp_path):
    out = tmp_path / "out"
    run = Started(tiny_run_args(out, 30, "--logging_steps", "1"))
    run.wait_for_step(out, 3)
    run.signal("ctrl-c")
    time.sleep(0.2)
    run.signal("ctrl-c")
    ends_on_the_resume_line(run, 130)
    assert len(list_checkpoints(out)) == 1


@pytest.mark.slow
@linux_only
def test_a_step_longer_than_a_launchers_grace_still_leaves_a_resumable_run(tmp_path):
    """A real config whose optimizer step takes seconds (a 10M-parameter model, 4 micro-batches
    of 16 × 32 tokens: 11 s measured on an idle 2-core CPU, 17 s on a busy one, twice the 5 s and
    more that `accelerate launch` gives its child): SIGTERM in the middle of step 2 finishes it,
    saves step 2, and the resume trains step 3 and exports. Small local files keep the data
    preparation and the final evaluation (the whole validation file) short."""
    out = tmp_path / "out"
    data = [
        *("--train_file", str(write_lines(tmp_path / "train.txt", 3000))),
        *("--validation_file", str(write_lines(tmp_path / "val.txt", 40, seed=4))),
        *("--vocab_size", "300", "--block_size", "32", "--per_device_train_batch_size", "16"),
    ]
    slow = ("--model_size", "mini", "--gradient_accumulation_steps", "4", "--logging_steps", "1")
    run = Started(tiny_run_args(out, 3, *data, *slow))
    run.wait_for_step(out, 1)
    signalled = time.monotonic()
    run.signal("sigterm")
    command = ends_on_the_resume_line(run, 143)
    took = time.monotonic() - signalled
    assert [p.name for p in list_checkpoints(out)] == ["step-2"]
    rows = [r for r in metric_rows(out) if "train/tokens_per_second" in r]
    step_seconds = 16 * 32 * 4 / rows[-1]["train/tokens_per_second"]
    print(f"a step took {step_seconds:.1f}s; gone {took:.1f}s after the SIGTERM")
    resume_finishes(command, out, 3)


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("phase", ["imports", "data preparation"])
def test_a_signal_during_startup_ends_on_one_line_and_leaves_no_folder(tmp_path, phase):
    out = tmp_path / "out"
    # A cache of its own: the tokenizer and the tokens are made again, not read from the session's.
    run = Started(tiny_run_args(out, 30), env={"HF_HOME": str(tmp_path / "hf")})
    if phase == "imports":
        time.sleep(0.5)
    else:
        run.wait_for(lambda: "Tokenizing train" in run.text(), "tokenizing")
    run.signal("ctrl-c")
    code, err = run.finish()
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "SIGINT: stopped before training began, nothing saved"
    assert not out.exists()
