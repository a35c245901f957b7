"""The one exception type that reaches users as a single line instead of a traceback, and the test
that tells a full disk apart from other failures."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class HfminiError(Exception):
    """A mistake the user can fix: the message says what went wrong and what to do.

    Entry points (`hfmini ...`, `recipes/train.py`) print it as `error: <message>` and exit 2.
    """


def disk_full(err: BaseException, folder: str | Path | None = None) -> bool:
    """Whether `err` (or an exception it was raised from) means the disk is full.

    Python, pyarrow, safetensors and tokenizers say so (errno 28, "No space left on device"); torch.save
    does not ("unexpected pos 576 vs 534"), so given the `folder` written to, a failure also counts
    when that folder's filesystem has less than 1 MiB left (a failed write fills it to the brim).
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "os error 28" in str(err):
            return True
        err = err.__cause__ or err.__context__
    if folder is None:
        return False
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


def cache_full(what: str, folder: str | Path, variable: str = "HF_HOME") -> HfminiError:
    """The error for a full disk under a cache, naming the variable that moves that cache."""
    return HfminiError(
        f"no space left on device for {what} in {folder}: free space there or set {variable} to "
        "a folder on a disk with room"
    )


def free_bytes(folder: str | Path) -> int | None:
    """Bytes a user may still write on `folder`'s filesystem (None if it cannot be told)."""
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: Windows has no statvfs
        return None
    return stats.f_bavail * stats.f_frsize


def human_bytes(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def room_left(folder: str | Path, needed: int | None = None) -> list[str]:
    """["needs 54.9 KB", "8.2 KB free"]: the room a write needed (when known) and what is left."""
    free = free_bytes(folder)
    room = [f"needs {human_bytes(needed)}"] if needed is not None else []
    return room + ([f"{human_bytes(free)} free"] if free is not None else [])


def no_space(
    what: str, folder: str | Path, needed: int | None = None, then: str = ""
) -> HfminiError:
    """The one line for a full disk: what was being written, where, the room it needed (when
    known) and what is left there; `then` says what to run once there is room."""
    room = room_left(folder, needed)
    shown = f" ({', '.join(room)})" if room else ""
    return HfminiError(
        f"no space left on device for {what} in {folder}{shown}: free disk space there{then}"
    )
