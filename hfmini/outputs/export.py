"""The final model as a standard Hub folder that loads without hfmini.

output_dir/
  config.json  model.safetensors  generation_config.json     ← save_pretrained (+ n_ctx)
  (LoRA with merge_adapters false: adapter_config.json  adapter_model.safetensors instead)
  tokenizer.json  tokenizer_config.json (+ chat template)     ← tokenizer.save_pretrained, made
                                                                 loadable by transformers 4.x too
  training_config.yaml  eval_results.json                    ← how it was made, what it scored

Everything is first written to output_dir/.hfmini-export/ and then moved into place, the weights
last: a kill or a full disk never leaves what looks like a finished model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import yaml

from hfmini.config import DEFAULT_MAX_NEW_TOKENS, SAMPLING_DEFAULTS
from hfmini.errors import HfminiError, disk_full, room_left
from hfmini.models.chat_template import stop_token_ids
from hfmini.models.size import context_length
from hfmini.models.tokenizer import save_tokenizer
from hfmini.run_folder import EVAL_RESULTS_FILE, EXPORT_TMP, TRAINING_CONFIG_FILE, list_checkpoints


def generation_config_for(model, tokenizer):
    """Sampling defaults that `pipeline("text-generation")` and `generate` pick up. A chat model
    stops at the end of its turn as well as at eos."""
    from transformers import GenerationConfig

    stop = stop_token_ids(tokenizer)
    context = context_length(model.config) or 2 * DEFAULT_MAX_NEW_TOKENS
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop if len(stop) > 1 else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        **SAMPLING_DEFAULTS,
        # transformers' generate cannot run past the context (hfmini's sampling slides), so the
        # default length leaves room for a prompt of half the context.
        max_new_tokens=max(1, min(DEFAULT_MAX_NEW_TOKENS, context // 2)),
    )


def add_n_ctx(config) -> None:
    """GPT-2's original config.json names its context twice, `n_positions` and `n_ctx`; transformers
    reads the first, llama.cpp's convert_hf_to_gguf.py the second (a KeyError without it)."""
    if getattr(config, "model_type", None) == "gpt2":
        config.n_ctx = config.n_positions


def save_model(
    model,
    tokenizer,
    output_dir: str | Path,
    config_dict: dict | None = None,
    eval_results: dict | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write the Hub layout into output_dir (weights as safetensors, never pickle).

    `state_dict`: full weights gathered from a sharded model; default the model's own. A peft
    model saves its adapters only, with the base model's id or folder in adapter_config.json.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config_for(model, tokenizer)
    add_n_ctx(model.config)
    model.save_pretrained(output_dir, state_dict=state_dict)  # safetensors: the only format in v5
    save_tokenizer(tokenizer, output_dir)
    if config_dict is not None:
        (output_dir / TRAINING_CONFIG_FILE).write_text(
            yaml.safe_dump(config_dict, sort_keys=False), encoding="utf-8"
        )
    if eval_results is not None:
        (output_dir / EVAL_RESULTS_FILE).write_text(json.dumps(eval_results, indent=2) + "\n")
    return output_dir


def git_commit() -> str | None:
    """The commit checked out in the working directory, or None outside a git repository or
    without git installed; git's own complaint ("fatal: not a git repository") is not shown."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def save_evaluate_results(folder: str | Path, results: dict, config_dict: dict) -> Path:
    """`result-<date>-<time>.json` as `evaluate.save(folder, **results, config=...)` writes it
    (same keys), without its git call: that one prints git's "fatal: not a git repository" on
    stderr outside a repository and raises where git is not installed."""
    now = datetime.now()
    path = Path(folder) / f"result-{now.strftime('%Y_%m_%d-%H_%M_%S')}.json"
    data = {
        **results,
        "config": config_dict,
        "_timestamp": now.isoformat(),
        "_git_commit_hash": git_commit(),
        "_evaluate_version": version("evaluate"),
        "_python_version": sys.version,
        "_interpreter_path": sys.executable,
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def resume_hint(output_dir: str | Path) -> str:
    """What to run once the disk has room: resume from the newest checkpoint, or start again."""
    kept = list_checkpoints(output_dir)
    if kept:
        return (
            ", then run the same command with --resume_from_checkpoint latest "
            f"({kept[-1].name} is untouched)"
        )
    return ", then run again (no checkpoint was saved)"


def weights_bytes(model) -> int:
    """The bytes of the model's weights as safetensors holds them, about what an export needs."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@contextlib.contextmanager
def atomic_export(output_dir: str | Path, needed: int | None = None):
    """Yields output_dir/.hfmini-export/ to write the final model's files into; then moves them into
    output_dir, weights last. On any failure (a full disk, say) the temporary folder is removed
    and the error is one line (with a full disk, the room `needed`, in bytes, and the room
    left); what output_dir held before is untouched."""
    output_dir = Path(output_dir)
    tmp = output_dir / EXPORT_TMP
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        # Renames within one folder: no copy, no extra space. Weights last (see the docstring).
        for path in sorted(tmp.iterdir(), key=lambda p: p.name.endswith(".safetensors")):
            os.replace(path, output_dir / path.name)
    except Exception as err:
        # As for checkpoints: a full disk is told apart by errors.disk_full (torch and safetensors
        # do not raise OSError for it); any other failure that is not an OSError is a bug to show.
        full = disk_full(err, output_dir)
        if not full and not isinstance(err, OSError):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # first: the free space below counts its room
        if full:
            room = room_left(output_dir, needed or None)
            reason = "; ".join(["No space left on device", *room])
        else:
            reason = err.strerror or str(err)
        raise HfminiError(
            f"could not write the model to {output_dir} ({reason}): free disk space"
            f"{resume_hint(output_dir)}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
