"""Graceful stopping: SIGTERM (cluster preemption) or Ctrl-C asks the loop to checkpoint and exit.

    signal before training ─► Interrupted at once (nothing to save): one line, exit 128 + signal
    signal while training  ─► flag; the loop finishes the optimizer step (or evaluation batch)
                              it is in, saves, and the entry point prints the checkpoint and the
                              command that resumes; exit 130 (SIGINT) or 143 (SIGTERM)
    Ctrl-C again, a second or more later ─► abort without saving

A repeat within REPEAT_SECONDS is the same request: a launcher passing on the terminal's Ctrl-C
(torchrun's agent sends the group's SIGINT again) must not abort the save it asked for.

Schedulers and containers often signal the launcher rather than the training process. So on
Linux a launched training process asks the kernel for a SIGTERM of its own when its launcher
dies (prctl PR_SET_PDEATHSIG), and stops as if signalled itself. `accelerate launch`'s single-
process launcher kills its child 5 s after a signal, whatever it is doing: the README's command
is therefore `python recipes/train.py`, which no launcher can cut short (docs/running.md).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shlex
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
REPEAT_SECONDS = 1.0
# Who started this process, read at import (recipes/train.py imports this module before anything
# heavy): a launcher that dies before the request below is in place shows as a changed parent.
STARTED_BY = os.getppid()
LAUNCHERS = ("accelerate", "torchrun")


class Interrupted(KeyboardInterrupt):
    """A signal before training began, or a second Ctrl-C: stop now, without saving."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as a shell reports a process killed by the signal


def exit_before_training(signum, frame) -> None:
    """A signal during the imports: one line and out, now. Raising instead would surface inside
    whichever module is half-imported, where a library may swallow it and leave a broken module
    behind (numpy's lazy `dtypes` then recursed until Python gave up). Nothing is written before
    the imports end, so there is nothing for cleanup to do."""
    name = signal.Signals(signum).name
    end_process(f"{name}: stopped before training began, nothing saved", 128 + signum)


def exit_after_training(signum, frame) -> None:
    """A signal once the run has ended (its last line is said, or being said): the process is
    only winding down, so leave at once and quietly, as a shell-killed process would."""
    end_process("", 128 + signum)


def end_process(line: str, code: int) -> None:
    try:  # stderr may be a pipe whose reader died with the launcher
        if line:
            print(line, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def interrupt_during_startup() -> None:
    """The first call of a process whose command is ours (recipes/train.py, `hfmini train`):
    until training's own handling is in place, a signal ends it on one line (a traceback of
    half-imported transformers helps nobody); once that handling is done, silently."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, exit_before_training)
    # Registered first, so run last: when Python tears itself down after the exit functions it
    # puts back the default action of every signal it handled, and a second Ctrl-C close
    # behind the first would kill the process there (-2, not 130). Ignored signals stay ignored.
    atexit.register(ignore_signals_from_here)


def ignore_signals_from_here() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def launched() -> bool:
    """Was this process started by `accelerate launch` or torchrun? (Each sets one of these.)"""
    return "ACCELERATE_DYNAMO_BACKEND" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def under_elastic_agent() -> bool:
    """torchrun, or accelerate's multi-process launch: the agent reports a worker's non-zero exit
    as a failure (a report of several lines), and its own exit already says it was signalled."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def stop_with_launcher() -> bool:
    """On Linux, under a launcher: a SIGTERM to this process when its launcher dies, or now if
    it already has. Returns whether that is in place. Not for a process a shell started: training
    in the background (nohup) must outlive the shell."""
    if not sys.platform.startswith("linux") or not launched():
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != STARTED_BY:  # died before the request: the kernel will not tell us
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def resume_command() -> str:
    """The command that started this run, as typed (the launcher's, when one did), with
    `--resume_from_checkpoint latest`, for the user to paste."""
    words = launcher_words()
    if words is None:  # `.venv/bin/python recipes/train.py ...`, or a console script's argv
        words = list(sys.orig_argv if sys.argv[0].endswith(".py") else sys.argv)
    if "--resume_from_checkpoint" in words[:-1]:
        at = words.index("--resume_from_checkpoint")
        words = [*words[: at + 1], "latest", *words[at + 2 :]]
    elif not any(w.startswith("--resume_from_checkpoint=") for w in words):
        words += ["--resume_from_checkpoint", "latest"]
    return shlex.join(words)


def launcher_words() -> list[str] | None:
    """The launcher's command line (Linux /proc): `/path/to/accelerate launch ...`, without the
    interpreter its entry script runs in (the path as the shell found it, so that it runs
    whatever PATH is). None without a launcher, or where it cannot be read."""
    if not launched() or os.getppid() != STARTED_BY:
        return None
    try:
        raw = Path(f"/proc/{STARTED_BY}/cmdline").read_bytes()
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    for at, word in enumerate(words[:2]):
        if Path(word).name in LAUNCHERS:
            return words[at:]
    return None


class StopRequest:
    """Installs SIGINT/SIGTERM handlers on enter, restores the previous ones on exit. Until
    `training()` a signal raises Interrupted; from then on it asks the loop to stop and save."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.signum = 0
        self.saved_to: Path | None = None  # the checkpoint written on the way out
        self.stopped_at = 0  # its step
        self._saving_allowed = False
        self._first = 0.0
        self._previous: dict[int, object] = {}

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C, 143 after SIGTERM, so that `make train && ...` stops; 0 under an
        elastic agent, which would report a saved stop as a failed worker."""
        if not self.requested or not self.signum or under_elastic_agent():
            return 0
        return 128 + self.signum

    def told_by_another(self) -> None:
        """Another process of the run was signalled (their all-reduce said so): stop too."""
        if not self.requested:
            self.requested, self.signal_name = True, "stopped by a signal to another process"

    def training(self) -> None:
        """From now on a checkpoint is worth saving: a signal asks for one."""
        self._saving_allowed = True

    def _handle(self, signum, frame) -> None:
        if not self._saving_allowed:
            raise Interrupted(signum)
        if self.requested:
            repeat = time.monotonic() - self._first < REPEAT_SECONDS
            if signum == signal.SIGINT and not repeat:
                raise Interrupted(signum)  # Ctrl-C again: abort now
            return  # a launcher passing the signal on, or SIGTERM after Ctrl-C: already stopping
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self.signum = signum
        self._first = time.monotonic()
        try:  # stderr may be a pipe whose reader died with the launcher
            print(
                f"\n{self.signal_name} received: finishing this step, then saving a checkpoint "
                "(Ctrl-C again to abort without saving)",
                file=sys.stderr,
                flush=True,
            )
        except OSError:
            pass

    def __enter__(self) -> StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        if self._previous:
            stop_with_launcher()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            if handler is exit_before_training and self._saving_allowed:
                handler = exit_after_training  # the run is over: a late Ctrl-C just ends it
            signal.signal(signum, handler)
