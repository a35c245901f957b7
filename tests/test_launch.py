"""`accelerate launch` as a person, a scheduler or a container uses it.

accelerate's single-process launcher neither passes a SIGTERM on nor waits for its child: these
tests signal the real launcher and watch the training process it started. A mistake under the
README's commands must end on hfmini's one-line error, not on the launcher's traceback.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, TRAIN_SCRIPT, launch_command, tiny_run_args
from safetensors.torch import load_file

from hfmini.run_folder import list_checkpoints

# Signals to launchers, read through /proc and prctl: Linux only.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
GRACE = 30  # seconds between SIGTERM and SIGKILL under Docker, Kubernetes and Slurm (about)
BAD_KEY = ["--learning_rte", "0.1"]


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; None once the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def running(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll until `condition()`; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def metric_rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def trained_steps(out: Path) -> list[int]:
    return [r["step"] for r in metric_rows(out) if "train/loss" in r]


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def launch(tmp_path):
    """Start a launcher (`accelerate launch` unless `command` says otherwise) in its own session,
    as a scheduler does, output to a log file; returns (launcher Popen, log path). Afterwards its
    whole process group is killed: a training process left behind must not outlive the test."""
    started = []

    def start(*args: str, command=launch_command):
        log = tmp_path / f"launch-{len(started)}.log"
        with log.open("w") as sink:
            proc = subprocess.Popen(
                command(*args),
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        kill_group(proc.pid)
        proc.wait()


def terminate_launcher(launcher: subprocess.Popen) -> tuple[int, float]:
    """SIGTERM to the launcher alone, as `docker stop`, Kubernetes or Slurm send it; returns the
    pid of the training process it had started and the time of the signal."""
    (trainer,) = children(launcher.pid)
    signalled = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=GRACE)
    return trainer, signalled


def exits_within_grace(trainer: int, signalled: float) -> float:
    """The training process must be gone (checkpoint written) before a scheduler's SIGKILL."""
    left = GRACE - (time.monotonic() - signalled)
    wait_for(lambda: not running(trainer), left, f"training process {trainer} still running")
    return time.monotonic() - signalled


# --- the mechanism, with a stand-in launcher: seconds --------------------------------------------

# The training process's part: wait for a stop request; write what it learnt to argv[1].
CHILD = """
import sys, time
from hfmini.training.interrupt import Interrupted, StopRequest  # notes who started this process
result, delay = sys.argv[1], float(sys.argv[2])
open(result + ".imported", "w").close()
time.sleep(delay)  # the launcher may die here, before the request is in place
try:
    with StopRequest() as stop:  # told at once if the launcher is gone: Interrupted, as in setup
        stop.training()  # past the setup: a signal asks for a checkpoint
        open(result + ".ready", "w").close()
        deadline = time.monotonic() + 20
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
    told = stop.signal_name or "not told"
except Interrupted as err:
    told = err.args[0]
open(result, "w").write(told)
"""
# The launcher's part, as accelerate's simple launcher: start the child and wait for it, with no
# signal handler. With a delay it exits once the child has started, before the child's request.
LAUNCHER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
print(child.pid, flush=True)
marker = sys.argv[2] + (".imported" if float(sys.argv[3]) else ".ready")
while not os.path.exists(marker):
    time.sleep(0.01)
print("ready", flush=True)
if not float(sys.argv[3]):
    child.wait()
"""


def stand_in(tmp_path, launched: bool, child_delay: float = 0.0):
    """Start the stand-in launcher and wait until its child is ready; returns (launcher, child
    pid, the file where the child writes the signal it was told of)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    env.pop("ACCELERATE_DYNAMO_BACKEND", None)
    if launched:
        env["ACCELERATE_DYNAMO_BACKEND"] = "NO"  # as accelerate launch sets it
    result = tmp_path / "result"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, CHILD, str(result), str(child_delay)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = int(launcher.stdout.readline())
    assert launcher.stdout.readline().strip() == "ready"
    return launcher, child, result


@linux_only
@pytest.mark.parametrize("when", ["killed while training", "died before the child asked"])
def test_training_process_is_told_when_its_launcher_dies(tmp_path, when):
    killed = when == "killed while training"
    launcher, child, result = stand_in(tmp_path, launched=True, child_delay=0.0 if killed else 1.0)
    try:
        if killed:
            launcher.send_signal(signal.SIGTERM)  # kills it: no handler, like accelerate's
        launcher.wait(timeout=10)  # otherwise it exits once the child has started
        wait_for(lambda: not running(child), 10, "child still running")
        assert result.read_text() == "SIGTERM"
    finally:
        kill_group(launcher.pid)


@linux_only
def test_process_started_without_a_launcher_outlives_its_parent(tmp_path):
    # e.g. `nohup python recipes/train.py ... &`: the shell's exit must not stop training.
    launcher, child, result = stand_in(tmp_path, launched=False)
    try:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=10)
        time.sleep(1)
        assert running(child) and not result.exists()
    finally:
        kill_group(launcher.pid)


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.forwards = 0

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        self.forwards += 1
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 8) + self.weight})()


def test_evaluation_stops_between_batches():
    from hfmini.data.blocks import TokenValidation
    from hfmini.training.evaluation import score_validation

    model, asked = CountingModel(), []
    model.train()

    def should_stop():
        asked.append(1)
        return len(asked) == 3

    tokens = TokenValidation(torch.zeros(100, dtype=torch.long), 10)
    result = score_validation(model, tokens, 2, torch.ones(8), should_stop=should_stop)
    assert result is None and model.forwards == 2 and model.training


def test_evaluation_asks_every_process_to_stop_equally_often():
    """Multi-process, asking is an all-reduce: every process must ask the same number of times,
    though one may hold a batch more than another."""
    from hfmini.data.blocks import TokenValidation
    from hfmini.training.evaluation import score_validation

    class Accelerator:  # enough of one for two processes; the reduce is left out
        num_processes = 2

        def __init__(self, index):
            self.process_index = index

        def reduce(self, tensor, reduction):
            return tensor

    counts = []
    for index in (0, 1):
        asked = []
        score_validation(
            CountingModel(),
            TokenValidation(torch.zeros(50, dtype=torch.long), 10),
            1,
            torch.ones(8),
            Accelerator(index),
            should_stop=lambda asked=asked: asked.append(1),
        )
        counts.append(len(asked))
    assert counts == [2, 2]  # 5 blocks: 3 batches on process 0, 2 on process 1


# --- the real launcher, training ------------------------------------------------------------


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("kind", ["scratch", "lora"])
def test_sigterm_to_the_launcher_checkpoints_and_resume_completes(
    launch, tmp_path, kind, tiny_base
):
    out = tmp_path / "out"
    if kind == "scratch":
        args = tiny_run_args(out, 40, "--logging_steps", "1")
    else:
        lora = ("--logging_steps", "1", "--use_peft", "true")
        args = tiny_run_args(out, 40, *lora, finetune_from=tiny_base)
    launcher, log = launch(*args)
    wait_for(lambda: max(trained_steps(out), default=0) >= 5, 180, "step 5")
    trainer, signalled = terminate_launcher(launcher)
    took = exits_within_grace(trainer, signalled)
    text = log.read_text()
    assert "SIGTERM received" in text and "--resume_from_checkpoint latest" in text, text[-2000:]
    (checkpoint,) = list_checkpoints(out)
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 5 <= stopped_at < 40 and not (out / "model.safetensors").exists()
    assert max(trained_steps(out)) == stopped_at  # training stopped at the checkpoint
    print(f"stopped at step {stopped_at}, gone {took:.1f}s after the SIGTERM")

    resumed, log = launch(*args, "--resume_from_checkpoint", "latest")
    assert resumed.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert trained_steps(out) == list(range(1, 41))  # every step once: continued, not restarted
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
@linux_only
def test_sigterm_to_the_launcher_cuts_a_long_evaluation_short(launch, tmp_path):
    out = tmp_path / "out"
    # An evaluation at step 3 of every validation block, one at a time: minutes on 2 cores.
    launcher, log = launch(
        *tiny_run_args(out, 40, "--logging_steps", "1", "--eval_steps", "3"),
        *("--max_eval_samples", "1000000", "--per_device_eval_batch_size", "1"),
        *("--block_size", "16"),
    )
    wait_for(lambda: 3 in trained_steps(out), 180, "step 3")
    time.sleep(1)  # into the evaluation
    trainer, signalled = terminate_launcher(launcher)
    took = exits_within_grace(trainer, signalled)
    print(f"gone {took:.1f}s after the SIGTERM")
    assert [p.name for p in list_checkpoints(out)] == ["step-3"], log.read_text()[-2000:]
    assert not any("eval/loss" in r for r in metric_rows(out))  # a cut evaluation is not logged


@pytest.mark.slow
@linux_only
def test_sigterm_during_the_final_evaluation_checkpoints_and_resume_exports(launch, tmp_path):
    out = tmp_path / "out"
    # The final evaluation scores the whole split, here one block at a time: minutes.
    args = tiny_run_args(out, 3, "--logging_steps", "1", "--ema_decay", "0.5")
    launcher, log = launch(*args, "--per_device_eval_batch_size", "1", "--block_size", "16")
    wait_for(lambda: 3 in trained_steps(out), 180, "step 3")
    time.sleep(1)  # into the final evaluation
    trainer, signalled = terminate_launcher(launcher)
    took = exits_within_grace(trainer, signalled)
    print(f"gone {took:.1f}s after the SIGTERM")
    assert [p.name for p in list_checkpoints(out)] == ["step-3"], log.read_text()[-2000:]
    assert not (out / "model.safetensors").exists()  # no export from a cut evaluation
    checkpoint = out / "checkpoints" / "step-3"
    trained = load_file(checkpoint / "model.safetensors")
    average = load_file(checkpoint / "ema.safetensors")
    # The checkpoint holds the trained weights, not the average the evaluation was scoring.
    assert any(not torch.equal(trained[k], average[k]) for k in average if k in trained)

    resumed, log = launch(
        *args,
        "--block_size",
        "16",
        "--resume_from_checkpoint",
        "latest",
        "--per_device_eval_batch_size",
        "128",
    )
    assert resumed.wait(timeout=600) == 0, log.read_text()[-3000:]
    exported = load_file(out / "model.safetensors")
    assert (out / "eval_results.json").is_file()
    shared = [k for k in average if k in exported]
    assert shared and all(torch.equal(exported[k], average[k]) for k in shared)


def can_unshare() -> bool:
    """Can this user start a process in a PID namespace of its own (root, usually)?"""
    if not sys.platform.startswith("linux"):
        return False
    try:
        command = ["unshare", "--pid", "--fork", "--kill-child", "true"]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@linux_only
@pytest.mark.skipif(not can_unshare(), reason="cannot start a PID namespace")
def test_in_a_container_the_training_process_as_the_command_checkpoints(launch, tmp_path):
    """The README's advice for containers: the training process as the container's main process
    (PID 1 of its PID namespace, as under Docker) saves on a SIGTERM from outside (docker stop)."""
    out = tmp_path / "out"

    def contained(*args):
        return [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            sys.executable,
            str(TRAIN_SCRIPT),
            *args,
        ]

    launcher, log = launch(*tiny_run_args(out, 40, "--logging_steps", "1"), command=contained)
    wait_for(lambda: max(trained_steps(out), default=0) >= 5, 180, "step 5")
    (main,) = children(launcher.pid)  # PID 1 inside
    signalled = time.monotonic()
    os.kill(main, signal.SIGTERM)
    exits_within_grace(main, signalled)
    (checkpoint,) = list_checkpoints(out)
    assert int(checkpoint.name.split("-")[1]) < 40, log.read_text()[-2000:]
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
@linux_only
def test_sigterm_to_one_torchrun_worker_cuts_the_evaluation_short_on_all(launch, tmp_path):
    """Two gloo processes: the one signalled tells the other between evaluation batches (an
    all-reduce each), so both stop at the same batch, checkpoint together and exit."""
    out = tmp_path / "out"

    def torchrun(*args):
        return [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(TRAIN_SCRIPT),
            *args,
        ]

    launcher, log = launch(
        *tiny_run_args(out, 40, "--logging_steps", "1", "--eval_steps", "3"),
        *("--max_eval_samples", "1000000", "--per_device_eval_batch_size", "1"),
        *("--block_size", "16", "--mixed_precision", "no"),
        command=torchrun,
    )
    wait_for(lambda: 3 in trained_steps(out), 300, "step 3")
    time.sleep(1)  # into the evaluation
    workers = {}
    for agent in children(launcher.pid):
        for pid in [agent, *children(agent)]:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = [e for e in environ if e.startswith(b"RANK=")]
            if rank and b"recipes/train.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers[int(rank[0][5:])] = pid
    assert sorted(workers) == [0, 1], workers
    signalled = time.monotonic()
    os.kill(workers[1], signal.SIGTERM)
    for pid in workers.values():
        exits_within_grace(pid, signalled)
    assert launcher.wait(timeout=GRACE) == 0, log.read_text()[-3000:]
    print(f"both gone {time.monotonic() - signalled:.1f}s after the SIGTERM to rank 1")
    assert [p.name for p in list_checkpoints(out)] == ["step-3"], log.read_text()[-2000:]
    assert not any("eval/loss" in r for r in metric_rows(out))


# --- one-line errors under the README's commands ---------------------------------------------


def readme_main_command() -> list[str]:
    """The command the README says `make train` runs, with this venv's accelerate."""
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"`make train` runs `([^`]+)`", readme)
    words = shlex.split(command)
    assert words[0] == "python", command  # one process, no launcher (docs/running.md)
    return [sys.executable, *words[1:]]


def assert_ends_on_the_error(result: subprocess.CompletedProcess, make: bool = False) -> None:
    """The last line is the one-line error; with `make`, but for make's own "*** ... Error N"
    line after it (`make:`, or `make[N]:` when make runs inside make, as `make test` does)."""
    lines = result.stderr.strip().splitlines()
    if make:
        lines = [x for x in lines if not re.match(r"make(\[\d+\])?: \*\*\* ", x)]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert lines[-1].startswith("error: unknown config key 'learning_rte'"), result.stderr[-3000:]


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
def test_readme_main_command_ends_on_the_one_line_error():
    result = subprocess.run(
        readme_main_command() + BAD_KEY, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert_ends_on_the_error(result)


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
def test_make_train_ends_on_the_one_line_error():
    venv = Path(sys.executable).parent.parent
    # -o: never reinstall into the environment the tests run in (its install is not under test).
    command = [
        "make",
        "-o",
        f"{venv}/bin/hfmini",
        "train",
        f"VENV={venv}",
        f"ARGS={' '.join(BAD_KEY)}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_ends_on_the_error(result, make=True)  # make's own "Error N" line follows
