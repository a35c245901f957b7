"""What a run may do with its output_dir, checked before any work and held for the whole run.

hfmini writes only into a new or empty folder, or one it made (marked by LOCK_FILE); a folder
that holds a run (a finished model, checkpoints, metrics) is refused unless the run resumes it or
`overwrite_output_dir` replaces it, and then only hfmini's own files (RUN_FILES) are deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hfmini.errors import HfminiError
from hfmini.outputs.checkpoint import resolve_resume_path
from hfmini.run_folder import (
    CHECKPOINTS_DIR,
    LOCK_FILE,
    METRICS_FILE,
    RUN_FILES,
    holds_finished_model,
    list_checkpoints,
)


def _made_by_hfmini(out: Path) -> bool:
    """hfmini's lock file, or what an earlier hfmini run (before the lock) left there."""
    return any((out / name).exists() for name in (LOCK_FILE, METRICS_FILE, CHECKPOINTS_DIR))


def check_output_dir_is_ours(out: Path) -> None:
    """Only a new, empty or hfmini-made folder may be written into: never a user's own files."""
    if out.exists() and not out.is_dir():
        raise HfminiError(f"output_dir {out} is a file: choose a folder path")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not _made_by_hfmini(out):
        shown = ", ".join(entries[:4]) + (
            f" and {len(entries) - 4} more" if len(entries) > 4 else ""
        )
        raise HfminiError(
            f"output_dir {out} already holds files that hfmini did not write ({shown}): choose a "
            "new or empty folder"
        )


def check_output_dir(args) -> Path | None:
    """Refuse to mix runs; returns the checkpoint to resume from, if any. Runs before any work."""
    out = Path(args.output_dir)
    check_output_dir_is_ours(out)
    deletes = "--overwrite_output_dir (which deletes its checkpoints and model)"
    if args.resume_from_checkpoint:
        if args.overwrite_output_dir:
            raise HfminiError("use either --resume_from_checkpoint or --overwrite_output_dir")
        if holds_finished_model(out):
            raise HfminiError(
                f"{out} already holds a finished model: there is nothing to resume; pick a new "
                f"output_dir or start again with {deletes}"
            )
        return resolve_resume_path(out, args.resume_from_checkpoint)
    has_run = holds_finished_model(out) or list_checkpoints(out) or (out / METRICS_FILE).exists()
    if has_run and not args.overwrite_output_dir:
        hint = "--resume_from_checkpoint latest to continue, or " if list_checkpoints(out) else ""
        raise HfminiError(
            f"output_dir {out} already holds a run: add {hint}{deletes}, or choose another "
            "output_dir"
        )
    return None


def _unwritable(out: Path, err: OSError) -> HfminiError:
    return HfminiError(
        f"output_dir {out} cannot be written ({err.strerror or err}): choose a folder you can "
        "write to"
    )


def _owner(lock_path: Path) -> str:
    """The process id a running hfmini wrote into its lock file ("unknown" where it cannot be read:
    Windows keeps a locked file's first byte unreadable to other processes)."""
    try:
        return lock_path.read_text(encoding="utf-8").strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


class OutputDirLock:
    """`output_dir` claimed for one run: created if needed, checked writable, and locked against a
    second run until the process ends. A folder this run created and left empty is removed.

    The lock is filelock's (flock on Unix, LockFileEx on Windows): the operating system drops it
    when the process dies, so a killed run never leaves a stale lock. filelock 4 opens the file
    without truncating it, so the pid written by the holder stays readable by a refused run."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.out = Path(output_dir)
        self.enabled = enabled  # only a run's main process claims the folder
        self.lock = None
        self.created = False

    def __enter__(self) -> OutputDirLock:
        from filelock import FileLock, Timeout

        if not self.enabled:
            return self
        check_output_dir_is_ours(self.out)  # before writing anything into it
        lock_path = self.out / LOCK_FILE
        try:
            self.created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".hfmini-write-test-{os.getpid()}"
            probe.write_bytes(b"")  # read-only folders can still hold a lock file: try a write
            probe.unlink()
            lock = FileLock(str(lock_path))
            lock.acquire(timeout=0)  # one try: a second run is refused, it does not wait
        except Timeout:
            raise HfminiError(
                f"output_dir {self.out} is in use by another hfmini run (process "
                f"{_owner(lock_path)}): wait for it to finish, or choose another output_dir"
            ) from None
        except OSError as err:
            raise _unwritable(self.out, err) from None
        self.lock = lock
        try:
            lock_path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError:
            pass  # Windows: only the lock's own handle may write; the pid is a courtesy
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is None:
            return
        self.lock.release()
        self.lock = None
        # filelock removes the file on release on Windows and keeps it elsewhere.
        if self.created and [p.name for p in self.out.iterdir()] in ([], [LOCK_FILE]):
            shutil.rmtree(self.out, ignore_errors=True)  # nothing of the run's own was written


def clear_previous_run(output_dir: Path) -> None:
    """With --overwrite_output_dir: remove what hfmini wrote before, and only that."""
    names = [CHECKPOINTS_DIR, *RUN_FILES]
    # evaluate.save names its file after the time of writing: result-<date>-<time>.json.
    names += [path.name for path in output_dir.glob("result-*.json")]
    names += [path.name for path in output_dir.glob("model*.safetensors")]
    for name in names:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
