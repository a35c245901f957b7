"""Where metrics go: always `output_dir/metrics.jsonl`, plus Accelerate's trackers (W&B,
TensorBoard, trackio).

W&B needs no account here: without an API key or a login, the run is recorded offline under
`output_dir/wandb/` and the log says how to `wandb sync` it later. trackio is local-first: a SQLite
file per project under TRACKIO_DIR (default HF_HOME/trackio), no server unless `trackio show`
starts one (a Space only with TRACKIO_SPACE_ID set). The start-up lines that describe a run
(model, data, batch) are written here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
from pathlib import Path

from hfmini.data.preference import sequences_per_row
from hfmini.errors import HfminiError, disk_full, no_space
from hfmini.models.size import context_length, count_parameters
from hfmini.outputs.export import resume_hint
from hfmini.run_folder import METRICS_FILE, read_metrics

logger = logging.getLogger("hfmini")


def resolve_trackers(report_to: list[str]) -> list[str]:
    """'all' → the trackers hfmini installs (trackio, an optional extra, is named on its own);
    'none' → []."""
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


def truncate_metrics_after(run_dir: str | Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step, so the file never holds two
    versions of the same steps."""
    path = Path(run_dir) / METRICS_FILE
    rows = [row for row in read_metrics(run_dir) if row.get("step", 0) <= step]
    if not path.is_file():
        return
    # Written beside and renamed: a full disk here must not cost the rows already logged.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if disk_full(err):
            raise no_space(METRICS_FILE, path.parent, then=", then resume again") from None
        raise


class RunLogger:
    """Logs on the main process only; every call is a no-op elsewhere."""

    def __init__(self, accelerator, output_dir: str | Path):
        self.accelerator = accelerator
        self.path = Path(output_dir) / METRICS_FILE

    def log(self, metrics: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        self._append({"step": step, **metrics})
        if self.accelerator.trackers:
            self.accelerator.log(metrics, step=step)

    def _append(self, row: dict) -> None:
        """One JSON line onto metrics.jsonl; a full disk or a read-only folder is one line."""
        line = (json.dumps(row) + "\n").encode("utf-8")
        size = self.path.stat().st_size if self.path.is_file() else 0
        try:
            with self.path.open("ab") as handle:
                handle.write(line)
        except OSError as err:
            # A line cut short would glue onto the next one a resume appends: cut it off again
            # (truncating needs no room).
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            if disk_full(err):
                raise no_space(
                    METRICS_FILE, self.path.parent, len(line), resume_hint(self.path.parent)
                ) from None
            raise HfminiError(
                f"cannot write {self.path} ({err.strerror or err}): make {self.path.parent} "
                "writable, then resume with --resume_from_checkpoint latest"
            ) from None

    def log_completions(self, rows: list[dict], step: int) -> None:
        """GRPO's newest sampled completions with their rewards and advantages: one line of
        metrics.jsonl ({"step", "completions": [...]}) and a table on W&B (text on TensorBoard)."""
        if not self.accelerator.is_main_process or not rows:
            return
        self._append({"step": step, "completions": rows})
        columns = list(rows[0])
        for tracker in self.accelerator.trackers:
            if tracker.name == "wandb":
                import wandb

                table = wandb.Table(
                    columns=["step", *columns], data=[[step, *r.values()] for r in rows]
                )
                tracker.log({"train/completions": table}, step=step)
            elif tracker.name == "tensorboard":
                text = "\n\n".join(
                    " | ".join(f"**{k}** {v}" for k, v in row.items()) for row in rows
                )
                tracker.writer.add_text("train/completions", text, global_step=step)

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


def start_trackers(accelerator, config) -> None:
    """Start Accelerate's trackers with the full resolved config, and say where metrics go."""
    args = config.train
    named = {"name": args.run_name} if args.run_name else {}
    # W&B files go under output_dir/wandb, next to the run they describe. trackio's go to its own
    # folder, where its dashboard looks; embed=False: no dashboard server, even in a notebook.
    init_kwargs = {"wandb": {"dir": args.output_dir, **named}, "trackio": {"embed": False, **named}}
    accelerator.init_trackers(
        args.project_name, config=config.to_flat_dict(), init_kwargs=init_kwargs
    )
    names = [tracker.name for tracker in accelerator.trackers]
    if "wandb" in names and os.environ.get("WANDB_MODE") == "offline":
        logger.info(
            "W&B: no API key or login found, so the run is recorded offline under %s/wandb; "
            "upload it later with `wandb sync %s/wandb/offline-run-*` (after `wandb login`)",
            args.output_dir,
            args.output_dir,
        )
    logger.info(
        "tracking: %s, always %s/%s",
        ", ".join(names) or "no tracker",
        args.output_dir,
        METRICS_FILE,
    )


def log_run_start(config, accelerator, data, model, length) -> None:
    """The three lines that describe a run before its first step: model, data, batch."""

    rows = sequences_per_row(data.format)
    tokens_per_step = config.tokens_per_step(accelerator.num_processes) * rows
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    shape = plain.config
    total = count_parameters(plain, trainable_only=False)
    trainable = count_parameters(plain)
    origin = (
        f"GPT-2 {config.model.model_size} from scratch"
        if config.model.from_scratch
        else f"{shape.model_type} from {config.model.model_name_or_path}"
    )
    if config.train.init_from_checkpoint:
        origin += f", continued from checkpoint {config.train.init_from_checkpoint}"
    logger.info(
        "model: %s, %d layers, %d heads, %d wide, context %d, vocabulary %d: %.2fM parameters, "
        "%s trainable",
        origin,
        shape.num_hidden_layers,
        shape.num_attention_heads,
        shape.hidden_size,
        context_length(shape) or 0,
        shape.vocab_size,
        total / 1e6,
        "all" if trainable == total else f"{trainable / 1e6:.2f}M ({100 * trainable / total:.2f}%)",
    )
    logger.info("%s", data.describe())
    _log_batch(config, accelerator, data, tokens_per_step, length)


def _log_batch(config, accelerator, data, tokens_per_step: int, length) -> None:
    tokens = (
        f" ({length.total_steps * tokens_per_step / 1e6:.2f}M tokens)"
        if length.total_steps and not length.has_budget
        else ""
    )
    logger.info(
        "processes: %d (%s on %s); global batch: %d per device × %d accumulation × %d processes "
        "= %d %s = %d tokens per optimizer step; %s%s",
        accelerator.num_processes,
        accelerator.distributed_type.value,
        accelerator.device,
        config.train.per_device_train_batch_size,
        config.train.gradient_accumulation_steps,
        accelerator.num_processes,
        tokens_per_step // data.block_size,
        {"preference": "sequences (chosen and rejected)", "prompt_only": "completions"}.get(
            data.format, "blocks"
        ),
        tokens_per_step,
        length.describe(),
        tokens,
    )
