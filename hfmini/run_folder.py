"""The files of a run folder (`output_dir`), named once, and the readers that tell what it holds.

    output_dir/
      config.json  model*.safetensors  generation_config.json  tokenizer*.json   ← the model
      (LoRA with merge_adapters false: adapter_config.json  adapter_model.safetensors)
      training_config.yaml  eval_results.json  README.md                        ← how, what, card
      metrics.jsonl  loss_curve.png  wandb/                                     ← the run's log
      checkpoints/step-N/  (the model files, plus trainer_state.json, optimizer, scheduler, ...)
      gguf/<name>-<outtype>.gguf  gguf/Modelfile            ← `hfmini export --format gguf`
      .hfmini.lock                                                              ← hfmini made it

Every module that writes or reads one of these names imports it from here.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATION_CONFIG_FILE = "generation_config.json"
# A peft adapter folder (a LoRA run's checkpoints and its merge_adapters false export).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRAINING_CONFIG_FILE = "training_config.yaml"  # the run's settings; `hfmini eval` reads its data
EVAL_RESULTS_FILE = "eval_results.json"
MODEL_CARD_FILE = "README.md"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
CHECKPOINTS_DIR = "checkpoints"
GGUF_DIR = "gguf"  # llama.cpp's file and Ollama's Modelfile; `hfmini push --gguf` uploads it
MODELFILE = "Modelfile"
# Inside a checkpoint: trainer_state.json is written last, so its presence marks a complete one.
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"
OPTIMIZER_FILE = "optimizer.bin"  # accelerate's save_state, for the one optimizer
WEIGHT_AVERAGE_FILE = "ema.safetensors"
# Held (flock) by a run's main process for the whole run; it stays afterwards as the mark that
# hfmini made the folder, so a later run may write there again.
LOCK_FILE = ".hfmini.lock"
# The final model is written here inside output_dir, then moved into place (outputs/export.py).
# No suffix: evaluate.save takes a path with one for a file name.
EXPORT_TMP = ".hfmini-export"
# What hfmini writes into output_dir besides checkpoints; --overwrite_output_dir removes these only.
RUN_FILES = (
    METRICS_FILE,
    LOSS_CURVE_FILE,
    EVAL_RESULTS_FILE,
    TRAINING_CONFIG_FILE,
    MODEL_CARD_FILE,
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    "model.safetensors.index.json",
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    "wandb",
    EXPORT_TMP,
)
# What `hfmini push` and push_to_hub upload: the model folder's top-level files, never
# checkpoints/, wandb/ or runs/.
UPLOAD_PATTERNS = [
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    "*.safetensors",  # model.safetensors, its shards, adapter_model.safetensors
    "model.safetensors.index.json",  # the shard list, without which sharded weights do not load
    ADAPTER_CONFIG,  # peft: the base model and the LoRA settings
    "tokenizer*.json",
    "special_tokens_map.json",
    MODEL_CARD_FILE,
    LOSS_CURVE_FILE,
    EVAL_RESULTS_FILE,
    TRAINING_CONFIG_FILE,
    METRICS_FILE,
]

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def checkpoint_name(step: int) -> str:
    return f"step-{step}"


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


def weights_readable(path: Path) -> bool:
    """A safetensors file whose header parses and whose tensors all lie inside the file."""
    try:
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
        data_end = max(
            (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0
        )
        return path.stat().st_size >= 8 + header_len + data_end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def holds_finished_model(output_dir: str | Path) -> bool:
    """config.json with complete weights, or a LoRA adapter folder with complete adapter weights:
    an export cut short (kill, full disk) is not finished."""
    out = Path(output_dir)
    if (out / ADAPTER_CONFIG).is_file():
        return weights_readable(out / ADAPTER_WEIGHTS)
    weights = list(out.glob("model*.safetensors"))
    return (out / CONFIG_FILE).is_file() and bool(weights) and all(map(weights_readable, weights))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] when it has none)."""
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
