"""Graceful stopping: SIGTERM (cluster preemption) or Ctrl-C asks the loop to checkpoint and exit.

The first signal only sets a flag; the loop finishes the optimizer step (or evaluation batch) it
is in, saves, and returns. A second Ctrl-C aborts at once.

Schedulers and containers often signal the launcher rather than the training process, and
`accelerate launch` (one process) neither passes a SIGTERM on nor waits: it dies at once. So on
Linux a launched training process asks the kernel for a SIGTERM of its own when its launcher
dies (prctl PR_SET_PDEATHSIG), and stops as if signalled itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Who started this process, read at import (recipes/train.py imports this module before anything
# heavy): a launcher that dies before the request below is in place shows as a changed parent.
STARTED_BY = os.getppid()


def launched() -> bool:
    """Was this process started by `accelerate launch` or torchrun? (Each sets one of these.)"""
    return "ACCELERATE_DYNAMO_BACKEND" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


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


class StopRequest:
    """Installs SIGINT/SIGTERM handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: abort now
            return  # e.g. the launcher dying of the Ctrl-C that reached us too: already stopping
        self.requested = True
        self.signal_name = signal.Signals(signum).name
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
            signal.signal(signum, handler)
