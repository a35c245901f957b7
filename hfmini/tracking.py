"""Where metrics go: always `output_dir/metrics.jsonl`, plus Accelerate's trackers (W&B, TensorBoard).

W&B needs no account here: without an API key or a login, the run is recorded offline under
`./wandb/` and the log says how to `wandb sync` it later.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def resolve_trackers(report_to: list[str]) -> list[str]:
    """'all' → every installed tracker we support; 'none' → []."""
    if "none" in report_to:
        return []
    if "all" in report_to:
        return ["wandb", "tensorboard"]
    return list(dict.fromkeys(report_to))


def wandb_has_credentials() -> bool:
    """An API key in the environment or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base_url.split("://", 1)[-1].split("/", 1)[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def prepare_wandb_mode() -> str:
    """Choose online/offline before `wandb.init`; an explicit WANDB_MODE always wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"
        return "offline"
    return "online"


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the rest of the file is fine
    return rows


def truncate_metrics_after(run_dir: str | Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step, so the file never holds two
    versions of the same steps."""
    path = Path(run_dir) / METRICS_FILE
    rows = [row for row in read_metrics(run_dir) if row.get("step", 0) <= step]
    if path.is_file():
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


class RunLogger:
    """Logs on the main process only; every call is a no-op elsewhere."""

    def __init__(self, accelerator, output_dir: str | Path):
        self.accelerator = accelerator
        self.path = Path(output_dir) / METRICS_FILE

    def log(self, metrics: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log(metrics, step=step)

    def log_samples(self, samples: list[tuple[str, str]], step: int) -> None:
        """A table of (prompt, generated text) on trackers that show tables (W&B)."""
        if not self.accelerator.is_main_process:
            return
        for tracker in self.accelerator.trackers:
            if tracker.name == "wandb":
                import wandb

                table = wandb.Table(
                    columns=["step", "prompt", "generation"],
                    data=[[step, p, g] for p, g in samples],
                )
                tracker.log({"eval/samples": table}, step=step)
            elif tracker.name == "tensorboard":
                text = "\n\n".join(f"**{p or '(BOS)'}** {g}" for p, g in samples)
                tracker.writer.add_text("eval/samples", text, global_step=step)
