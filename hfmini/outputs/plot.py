"""Loss curves drawn headless from `metrics.jsonl`: one run or several overlaid."""

from __future__ import annotations

from pathlib import Path

from hfmini.errors import HfminiError
from hfmini.run_folder import read_metrics


def plot_runs(
    run_dirs: list[str | Path], out_path: str | Path, labels: list[str] | None = None
) -> Path:
    """Train and validation loss against optimizer step (left) and tokens seen (right)."""
    out_path = Path(out_path)
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
    drawn = 0
    for index, run_dir in enumerate(run_dirs):
        rows = read_metrics(run_dir)
        label = labels[index] if labels else Path(run_dir).name
        color = f"C{index % 10}"
        train = [r for r in rows if "train/loss" in r]
        evals = [r for r in rows if "eval/loss" in r]
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
                    [r["eval/loss"] for r in evals],
                    color=color,
                    marker="o",
                    markersize=4,
                    linewidth=2,
                    label=f"{label} validation",
                )
    if not drawn:
        raise HfminiError(
            f"no metrics to plot in {', '.join(map(str, run_dirs))}: each run folder needs a "
            "metrics.jsonl written by hfmini train"
        )
    by_step.set_xlabel("optimizer step")
    by_tokens.set_xlabel("tokens seen")
    for axis in (by_step, by_tokens):
        axis.set_ylabel("cross-entropy loss (nats/token)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle("hfmini loss curve")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=110)
    except OSError as err:
        raise HfminiError(
            f"cannot write the plot to {out_path} ({err.strerror or err}): choose another -o path"
        ) from None
    return out_path
