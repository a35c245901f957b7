"""hfmini from Python: the stages `hfmini train`, `eval` and `generate` run, as a few calls.

    from hfmini.config.parsing import make_config
    from hfmini import train
    from hfmini.api import evaluate
    from hfmini.api import generate

    config = make_config(model_size="micro", max_steps=200, output_dir="output/api")
    results = train(config)               # tokenizer, model, AdamW loop, export to output_dir
    evaluate("output/api")                # {'eval_loss': ..., 'bits_per_byte': ..., ...}
    generate("output/api", "ROMEO:", seed=0)

Preference tuning is the same call on rows of prompt, chosen and rejected answers:

    dpo = make_config(model_name_or_path="output/api", train_file=["pairs.jsonl"],
                      loss_type="sigmoid", beta=0.1, output_dir="output/api-dpo")
    train(dpo)                            # {..., 'rewards/accuracies': ..., 'start_rewards/...': ...}

`train` is the whole run; to look at its stages one at a time, `prepare_data(config)` returns the
training blocks and the tokenizer trained for them, and `build_model(config, tokenizer)` the fresh
GPT-2 the loop starts from. `output_dir` is a Hub folder that transformers reads without hfmini.
Mistakes raise `HfminiError`, whose message says what to change.
"""

from __future__ import annotations

from pathlib import Path

# Re-exported (F401): hfmini/__init__.py lists the API's names, once, in `_API`.
from hfmini.config import (  # noqa: F401
    DEFAULT_MAX_NEW_TOKENS,
    MODEL_PRESETS,
    SAMPLING_DEFAULTS,
    Config,
    DataArguments,
    ModelArguments,
    TrainArguments,
    make_config,
)
from hfmini.data.prepare import prepare_data  # noqa: F401
from hfmini.errors import HfminiError
from hfmini.models.gpt2 import build_model as build_gpt2
from hfmini.models.sampling import check_prompt, check_sampling, generate_text
from hfmini.models.sampling import load_model_and_tokenizer as load_model
from hfmini.models.size import count_parameters  # noqa: F401
from hfmini.run_folder import read_metrics  # noqa: F401
from hfmini.training.evaluation import evaluate_model
from hfmini.training.trainer import run_training


def build_model(config: Config, tokenizer):
    """The freshly initialised GPT2LMHeadModel a from-scratch run starts from: the preset's shape,
    the tokenizer's vocabulary, a context of n_positions (default: block_size)."""

    if not config.model.from_scratch:
        raise HfminiError(
            f"build_model makes a model from scratch, but model_name_or_path is set "
            f"({config.model.model_name_or_path!r}): load it with load_model instead"
        )
    return build_gpt2(config.model, tokenizer, config.context_length())


def train(config: Config) -> dict[str, float]:
    """Run training as `accelerate launch recipes/train.py` would, in this process; returns the
    final validation metrics (eval_loss, perplexity, bits_per_byte, …), {} when stopped by Ctrl-C
    (a checkpoint to resume from is saved). Can be called again for another run."""
    from accelerate.state import AcceleratorState

    try:
        return run_training(config)
    finally:
        # Accelerate fixes a process's precision and device with its first Accelerator; forget
        # them so that a second run in this notebook or script is set up as a fresh process.
        AcceleratorState._reset_state(reset_partial_state=True)


def evaluate(
    model_dir: str | Path,
    validation_file: str | Path | list[str | Path] | None = None,
    block_size: int | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """`hfmini eval`: validation loss, perplexity and bits per byte of a saved model, on the
    validation split it was trained with, or on `validation_file` (one path or several)."""

    if isinstance(validation_file, str | Path):
        validation_file = [validation_file]
    files = [str(f) for f in validation_file] if validation_file else None
    return evaluate_model(model_dir, files, block_size=block_size, batch_size=batch_size)


def generate(
    model_dir: str | Path,
    prompt: str = "",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int | None = SAMPLING_DEFAULTS["top_k"],
    top_p: float | None = SAMPLING_DEFAULTS["top_p"],
    seed: int | None = None,
) -> str:
    """`hfmini generate`: text after `prompt` from a saved model, without the prompt. Sampling as
    the exported generation_config.json; temperature 0 is greedy; `seed` makes it repeatable."""

    check_sampling(max_new_tokens, temperature, top_k, top_p)
    check_prompt(prompt)
    model, tokenizer = load_model(model_dir)
    return generate_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed)
