"""Loss curves drawn headless from `metrics.jsonl`: one run or several overlaid."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from hfmini.errors import HfminiError, disk_full, no_space
from hfmini.run_folder import METRICS_FILE, read_metrics


def check_run_dirs(run_dirs: list[str | Path]) -> None:
    """Every folder asked for exists and holds metrics: none is left out of the plot silently."""
    missing = [str(d) for d in run_dirs if not Path(d).is_dir()]
    if missing:
        raise HfminiError(
            f"{', '.join(missing)}: no such folder; pass run folders (training output_dirs) "
            "that exist"
        )
    empty = [str(d) for d in run_dirs if not (Path(d) / METRICS_FILE).is_file()]
    if empty and len(empty) < len(run_dirs):
        raise HfminiError(
            f"{', '.join(empty)} holds no {METRICS_FILE}: pass only run folders written by hfmini "
            "train (or drop those)"
        )


def plot_runs(
    run_dirs: list[str | Path],
    out_path: str | Path,
    labels: list[str] | None = None,
    then: str = ", or choose another -o path",
) -> Path:
    """Train and validation loss against optimizer step (left) and tokens seen (right).

    The image is rendered in memory, written under a temporary name and renamed: a full disk
    leaves the previous curve (or none), never a truncated PNG; `then` ends that error's line."""
    out_path = Path(out_path)
    check_run_dirs(run_dirs)
    blocker = next((p for p in out_path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # checked first: mkdir would say "File exists", about the folder
        raise HfminiError(
            f"cannot write the plot to {out_path}: {blocker} is a file, not a folder; choose "
            "another -o path"
        )
    # A Figure of its own, not pyplot's: no display needed, and the backend of a notebook or a
    # program around us (matplotlib.use is process-wide) is left as it was.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    by_step, by_tokens = fig.subplots(1, 2)
    accuracy = None  # preference runs: the reward accuracy, on its own scale beside the loss
    preference = False
    drawn = 0
    for index, run_dir in enumerate(run_dirs):
        rows = read_metrics(run_dir)
        label = labels[index] if labels else Path(run_dir).name
        color = f"C{index % 10}"
        train = [r for r in rows if "train/loss" in r]
        # A preference run trains on a pair loss: its held-out pairs' is the one to compare
        # (its eval/loss is the chosen answers' cross-entropy, the drift).
        eval_key = "eval/pair_loss" if any("eval/pair_loss" in r for r in rows) else "eval/loss"
        evals = [r for r in rows if eval_key in r]
        preference |= eval_key == "eval/pair_loss"
        if not train and not evals:
            continue
        drawn += 1
        for axis, x_key in ((by_step, "step"), (by_tokens, "train/tokens_seen")):
            if train:
                axis.plot(
                    [r.get(x_key, 0) for r in train],
                    [r["train/loss"] for r in train],
                    color=color,
                    alpha=0.55,
                    linewidth=1.2,
                    label=f"{label} train",
                )
            if evals:
                axis.plot(
                    [r.get(x_key, 0) for r in evals],
                    [r[eval_key] for r in evals],
                    color=color,
                    marker="o",
                    markersize=4,
                    linewidth=2,
                    label=f"{label} validation",
                )
        accuracy = draw_reward_accuracy(by_step, accuracy, rows, label, color)
    if not drawn:
        raise HfminiError(
            f"no metrics to plot in {', '.join(map(str, run_dirs))}: each run folder needs a "
            "metrics.jsonl written by hfmini train"
        )
    by_step.set_xlabel("optimizer step")
    by_tokens.set_xlabel("tokens seen")
    for axis in (by_step, by_tokens):
        axis.set_ylabel(
            "loss (preference runs: per pair)" if preference else "cross-entropy loss (nats/token)"
        )
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle("hfmini loss curve")
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format=(out_path.suffix.lstrip(".") or "png").lower())
    write_atomically(out_path, image.getvalue(), "the loss curve", then)
    return out_path


# What a run's right-hand axis shows, by the metric it logged: a preference run's reward
# accuracy, a GRPO run's mean reward of its sampled completions.
SECOND_AXES = (
    ("rewards/accuracies", "reward accuracy (chosen above rejected)", (-0.02, 1.02)),
    ("reward", "mean reward of the sampled completions", None),
)


def draw_reward_accuracy(axis, accuracy, rows: list[dict], label: str, color: str):
    """A preference run's reward accuracy, or a GRPO run's mean reward (train dashed, held-out
    marked), on a right-hand axis of `axis`, made on first use; returns that axis (None while no
    run has one)."""
    candidates = [(t, lim, second_axis_series(rows, name)) for name, t, lim in SECOND_AXES]
    found = next((c for c in candidates if any(points for _, points, _ in c[2])), None)
    if found is None:
        return accuracy
    title, limits, series = found
    if accuracy is None:
        accuracy = axis.twinx()
        accuracy.set_ylabel(title)
        if limits:
            accuracy.set_ylim(*limits)
    for key, points, style in series:
        if points:
            accuracy.plot(
                [r["step"] for r in points],
                [r[key] for r in points],
                color=color,
                label=f"{label} {key.split('/')[0]} {title.split(' (')[0]}",
                **style,
            )
    accuracy.legend(fontsize=8, loc="lower right")
    return accuracy


def second_axis_series(rows: list[dict], name: str) -> list[tuple[str, list[dict], dict]]:
    """(key, its rows, line style) of train/<name> (dashed) and eval/<name> (marked)."""
    return [
        (key, [r for r in rows if key in r], style)
        for key, style in (
            (f"train/{name}", {"linestyle": "--", "alpha": 0.55}),
            (f"eval/{name}", {"marker": "s", "markersize": 4}),
        )
    ]


def write_atomically(path: Path, data: bytes, what: str, then: str) -> None:
    """`data` into `path` through a temporary file in the same folder and a rename; a full disk
    is one line naming the folder, the bytes needed and the bytes free."""
    # Only a regular file (or none) is replaced by a rename: a device or a pipe given as -o
    # (/dev/stdout, /dev/full) is written into, never swapped for a file.
    special = path.exists() and not path.is_file()
    tmp = path if special else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        if not special:
            os.replace(tmp, path)
    except OSError as err:
        if not special:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if disk_full(err):
            raise no_space(what, path.parent, len(data), then) from None
        raise HfminiError(
            f"cannot write the plot to {path} ({err.strerror or err}): choose another -o path"
        ) from None
