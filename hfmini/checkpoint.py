"""Training checkpoints under `output_dir/checkpoints/step-N/`, written so a kill never leaves half.

A checkpoint holds what `accelerator.save_state` writes (model as safetensors, optimizer, RNG
states per process), the scheduler, `trainer_state.json` (step counters and data position, as JSON
so that loading never unpickles) and the tokenizer. It is written into `step-N.tmp/` and renamed to
`step-N/` only once complete; a folder without the final marker is never resumed from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hfmini.errors import HfminiError, disk_full
from hfmini.export import holds_finished_model

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Where the run is: what a checkpoint needs to continue exactly, besides tensors and RNG."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)
    tokens_seen: int = 0  # over all processes
    # The logging window at save time, so the first loss logged after a resume is exact.
    loss_since_log: float = 0.0  # sum of micro-batch losses since the last logged step
    batches_since_log: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _weights_readable(path: Path) -> bool:
    """A safetensors file whose header parses and whose tensors all lie inside the file."""
    import json as _json
    import struct

    try:
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = _json.loads(handle.read(header_len))
        data_end = max(
            (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0
        )
        return path.stat().st_size >= 8 + header_len + data_end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def is_intact(path: Path) -> bool:
    """A checkpoint every file of which the resume reads parses (see `damage`).

    Reads headers and pickles, not tensor data: cheap even for large models.
    """
    return damage(path) is None


def resolve_resume_path(output_dir: str | Path, resume_from_checkpoint: str) -> Path:
    """'latest' → the newest intact checkpoint in output_dir; a path → that checkpoint, checked."""
    if resume_from_checkpoint == "latest":
        candidates = list_checkpoints(output_dir)
        for path in reversed(candidates):
            reason = damage(path)
            if reason is None:
                return path
            logger.warning("skipping damaged checkpoint %s (%s)", path, reason)
        raise HfminiError(
            f"no intact checkpoint in {checkpoints_dir(output_dir)}: drop "
            "--resume_from_checkpoint to start fresh (with --overwrite_output_dir)"
        )
    path = Path(resume_from_checkpoint)
    if not path.is_dir() or not (path / STATE_FILE).is_file():
        raise HfminiError(
            f"{resume_from_checkpoint} is not an hfmini checkpoint (no {STATE_FILE}): point "
            f"--resume_from_checkpoint at output_dir/checkpoints/step-N or use 'latest'"
        )
    reason = damage(path)
    if reason is not None:
        raise HfminiError(
            f"checkpoint {path} is damaged ({reason}): resume from an older one or use 'latest', "
            "which skips damaged checkpoints"
        )
    return path


def check_output_dir(args) -> Path | None:
    """Refuse to mix runs; returns the checkpoint to resume from, if any. Runs before any work."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise HfminiError(f"output_dir {out} is a file: choose a folder path")
    if args.resume_from_checkpoint:
        if args.overwrite_output_dir:
            raise HfminiError("use either --resume_from_checkpoint or --overwrite_output_dir")
        if holds_finished_model(out):
            raise HfminiError(
                f"{out} already holds a finished model: there is nothing to resume; pick a new "
                "output_dir or add --overwrite_output_dir to start again"
            )
        return resolve_resume_path(out, args.resume_from_checkpoint)
    has_run = holds_finished_model(out) or list_checkpoints(out) or (out / "metrics.jsonl").exists()
    if has_run and not args.overwrite_output_dir:
        hint = "--resume_from_checkpoint latest to continue or " if list_checkpoints(out) else ""
        raise HfminiError(
            f"output_dir {out} already holds a run: add {hint}--overwrite_output_dir to replace "
            "it, or choose another output_dir"
        )
    return None


def clear_previous_run(output_dir: Path) -> None:
    """With --overwrite_output_dir: remove what hfmini wrote before, and only that."""
    names = ["checkpoints", "metrics.jsonl", "loss_curve.png", "eval_results.json"]
    # evaluate.save names its file after the time of writing: result-<date>-<time>.json.
    names += [path.name for path in output_dir.glob("result-*.json")]
    for name in names:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    state: TrainState,
    scheduler,
    tokenizer,
    save_total_limit: int | None,
    ema=None,
) -> Path:
    """Write step-N atomically on all processes (each saves its own RNG state); main renames.
    `ema` (hfmini.ema.WeightAverage), when given, is saved with it.

    Cost: a full copy of model + optimizer state (about 3× the weights in fp32) to disk.
    """
    import torch

    root = checkpoints_dir(output_dir)
    final = root / f"step-{state.step}"
    tmp = root / f"step-{state.step}.tmp"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            tokenizer.save_pretrained(tmp / "tokenizer")
            (tmp / STATE_FILE).write_text(state.to_json())
            if ema is not None:
                ema.save(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    except Exception as err:
        # A full disk reaches us as OSError, as safetensors' or tokenizers' own error, or from
        # torch.save as a RuntimeError that names no cause: tell it by the free space left,
        # measured before the half-written folder is removed.
        full = disk_full(err, root)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if not full and not isinstance(err, OSError):
            raise
        raise _write_error(final, err, full) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and save_total_limit:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(accelerator, path: Path, scheduler) -> TrainState:
    """Restore model, optimizer, RNG (via accelerate), scheduler and counters from `path`.

    Every tensor file is read with torch.load(weights_only=True) or as safetensors: a checkpoint
    cannot run code.
    """
    import torch

    try:
        accelerator.load_state(str(path))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    except (
        Exception
    ) as err:  # unpickling, shape or I/O errors: all mean "this checkpoint is unusable"
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise HfminiError(
            f"checkpoint {path} could not be loaded ({reason}): it is damaged or from another "
            "model shape; resume from an older checkpoint or start fresh"
        ) from None
    _warn_if_rng_state_unreadable(path, accelerator.process_index)
    return TrainState.from_json((path / STATE_FILE).read_text())


# ---------------------------------------------------------------------------------------------
# What makes a checkpoint usable, and what a failed save says


def damage(path: Path) -> str | None:
    """Why the resume could not read checkpoint `path` ("optimizer.bin is unreadable"), or None.

    Checks every file the resume reads: the state and tokenizer JSON are parsed; safetensors
    files (weights, weight average) must have a header that parses and covers the file; torch
    files (optimizer, scheduler) are opened as `torch.load(mmap=True, weights_only=True)` does,
    which parses their pickle and maps the tensor data without reading it. The RNG states are
    not required: accelerate goes on without them (load_checkpoint warns).
    """
    try:
        TrainState.from_json((path / STATE_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return f"{STATE_FILE} is unreadable"
    if not list(path.glob("model*.safetensors")):
        return "no model*.safetensors weights"
    if not list(path.glob("optimizer*")):
        return "no optimizer state"
    for name in ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{name} is unreadable"
    checks = [(p, _weights_readable) for p in sorted(path.glob("*.safetensors"))]
    checks += [(p, _torch_file_readable) for p in sorted(path.glob("optimizer*.bin"))]
    checks += [(path / "scheduler.pt", _torch_file_readable)]
    for file, readable in checks:
        if not readable(file):
            return f"{file.name} is unreadable"
    return None


def _torch_file_readable(path: Path) -> bool:
    from accelerate.utils.other import load  # torch.load(weights_only=True) as load_state calls it

    try:
        load(path, map_location="cpu", mmap=True)
        return True
    except Exception:  # missing, truncated, not a zip archive, a forbidden global: unreadable
        return False


def _warn_if_rng_state_unreadable(path: Path, process_index: int) -> None:
    """accelerate.load_state skips an unreadable RNG state file with an info line: say it louder."""
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils.other import load

    file = path / f"{RNG_STATE_NAME}_{process_index}.pkl"
    try:
        states = load(file)
        readable = isinstance(states, dict) and "torch_manual_seed" in states
    except Exception:  # missing, truncated or garbage: accelerate skipped it
        readable = False
    if not readable:
        logger.warning(
            "could not read the random states in %s: resuming with the current ones, so the data "
            "order and dropout differ and the run will not repeat an uninterrupted run exactly",
            file,
        )


def _write_error(final: Path, err: BaseException, full: bool) -> HfminiError:
    reason = "No space left on device" if full else (err.strerror or str(err))
    kept = list_checkpoints(final.parent.parent)  # final is output_dir/checkpoints/step-N
    hint = (
        f"{kept[-1].name} is untouched; resume from it with --resume_from_checkpoint latest"
        if kept
        else "no checkpoint was saved before this one"
    )
    return HfminiError(f"could not write checkpoint {final} ({reason}): free disk space; {hint}")
