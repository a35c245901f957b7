"""The final model as a standard Hub folder that loads without hfmini.

output_dir/
  config.json  model.safetensors  generation_config.json     ← save_pretrained
  tokenizer.json  tokenizer_config.json                      ← tokenizer.save_pretrained
  training_config.yaml  eval_results.json                    ← how it was made, what it scored
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hfmini.config import SAMPLING_DEFAULTS

FINISHED_MARKERS = ("config.json", "model.safetensors")


def holds_finished_model(output_dir: str | Path) -> bool:
    return any((Path(output_dir) / name).exists() for name in FINISHED_MARKERS)


def generation_config_for(model, tokenizer):
    """Sampling defaults that `pipeline("text-generation")` and `generate` pick up."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        **SAMPLING_DEFAULTS,
        max_new_tokens=min(200, model.config.n_positions),
    )


def save_model(
    model,
    tokenizer,
    output_dir: str | Path,
    config_dict: dict | None = None,
    eval_results: dict | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write the Hub layout into output_dir (weights as safetensors, never pickle).

    `state_dict`: full weights gathered from a sharded model; default the model's own.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config_for(model, tokenizer)
    model.save_pretrained(output_dir, state_dict=state_dict)  # safetensors: the only format in v5
    tokenizer.save_pretrained(output_dir)
    if config_dict is not None:
        (output_dir / "training_config.yaml").write_text(
            yaml.safe_dump(config_dict, sort_keys=False), encoding="utf-8"
        )
    if eval_results is not None:
        (output_dir / "eval_results.json").write_text(json.dumps(eval_results, indent=2) + "\n")
    return output_dir
