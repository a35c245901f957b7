"""Graceful stopping: SIGTERM (cluster preemption) or Ctrl-C asks the loop to checkpoint and exit.

The first signal only sets a flag; the loop finishes the optimizer step it is in, saves, and
returns. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import sys


class StopRequest:
    """Installs SIGINT/SIGTERM handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(
            f"\n{self.signal_name} received: finishing this step, then saving a checkpoint "
            "(Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
