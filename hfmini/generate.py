"""Sampling text from a saved model with the KV cache, streamed as it is produced.

Decoding is a short loop over the model's forward with its KV cache and transformers' own
logits warpers (temperature, top-k, top-p), so it picks the same tokens as `model.generate`
(tested). It skips `generate`'s per-token bookkeeping, which at this model size is a noticeable
share of each new token's time on a CPU (`make bench` measures both; docs/results.md).

A GPT-2 cannot attend past `n_positions` tokens. A prompt longer than the context keeps its most
recent tokens (and says so); generating past the context slides a window: each round restarts from
the last half-context of text, so arbitrarily long samples work at the cost of a fresh prefill.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import sys
from pathlib import Path

import torch

from hfmini.config import SAMPLING_DEFAULTS
from hfmini.errors import HfminiError

logger = logging.getLogger(__name__)


def load_model_and_tokenizer(model_dir: str | Path, device: str | None = None):
    """Load from a folder (safetensors only, never remote code).

    The files are checked first (JSON parses, model_type is one transformers knows, safetensors
    headers cover their files, the model's vocabulary holds the tokenizer's), so that a damaged or
    foreign folder is a one-line error rather than a traceback from deep inside transformers.
    """
    from safetensors import SafetensorError, safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise HfminiError(
            f"{model_dir} holds no model (no config.json): point at a training output_dir"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise HfminiError(f"{model_dir} has no .safetensors weights: hfmini loads safetensors only")
    config = _read_json(path / "config.json")
    _check_model_type(path, config)
    for file in weights:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise HfminiError(
                f"{file} is truncated or damaged ({_first_line(err)}): copy or export the model "
                "again"
            ) from None
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (path / name).is_file():
            _read_json(path / name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise HfminiError(
            f"could not load the tokenizer in {model_dir} ({_first_line(err)}): copy or export "
            "the model again"
        ) from None
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, int) and vocab_size < len(tokenizer):
        raise HfminiError(
            f"{path / 'config.json'} has vocab_size {vocab_size} but the tokenizer has "
            f"{len(tokenizer)} tokens: they do not belong together; use the tokenizer the model "
            "was trained with (hfmini train exports both into one folder)"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise HfminiError(
            f"could not load the model in {model_dir} ({_first_line(err)}): copy or export it again"
        ) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise HfminiError(
            f"{file} is not valid JSON ({_first_line(err)}): the folder is damaged; copy or export "
            "the model again"
        ) from None


def _check_model_type(path: Path, config) -> None:
    """transformers must know the architecture by itself: hfmini never runs a folder's code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not isinstance(config, dict):
        raise HfminiError(f"{path / 'config.json'} is not a model configuration (a JSON object)")
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise HfminiError(
            f"{path} has model_type {model_type!r}, which transformers does not know: hfmini "
            "never runs code shipped with a model (trust_remote_code), so it loads only the "
            "architectures transformers has built in, such as gpt2"
        )


# A positive temperature below this samples like greedy decoding anyway, and a tiny one (1e-45)
# turns the logits it divides into infinities, which cannot be sampled from.
MIN_TEMPERATURE = 1e-3


def check_sampling(
    max_new_tokens: int,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
) -> None:
    if max_new_tokens <= 0:
        raise HfminiError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if not math.isfinite(temperature):
        raise HfminiError(f"temperature must be a finite number, got {temperature}")
    if temperature < 0:
        raise HfminiError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise HfminiError(
            f"temperature {temperature:g} is too small to sample with: use 0 for greedy decoding "
            f"or at least {MIN_TEMPERATURE:g}"
        )
    if top_k is not None and top_k < 0:
        raise HfminiError(f"top_k must be >= 0 (0: no top-k filtering), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise HfminiError(f"top_p must be in (0, 1] (1: no nucleus filtering), got {top_p}")


def check_prompt(prompt: str) -> None:
    """A prompt from the command line holds the bytes it was given; they must be UTF-8 (Python
    keeps undecodable bytes as lone surrogates, which no tokenizer accepts)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        char = prompt[err.start]
        byte = ord(char) - 0xDC00 if 0xDC80 <= ord(char) <= 0xDCFF else None
        shown = f"byte {byte:#04x}" if byte is not None else f"character {char!r}"
        position = len(prompt[: err.start].encode("utf-8"))
        raise HfminiError(
            f"--prompt is not valid UTF-8 ({shown} at position {position}): pass UTF-8 text"
        ) from None


class _Printer:
    """Decodes tokens incrementally and hands new text to `on_text`.

    Decoding the whole pending token list each time (not token by token) keeps multi-byte
    characters split across tokens intact.
    """

    def __init__(self, tokenizer, on_text):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.pending: list[int] = []
        self.printed = 0

    def put(self, token: int) -> None:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # half a character; wait for the rest of its bytes
        self.on_text(text[self.printed :])
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.pending, skip_special_tokens=True)
        if len(text) > self.printed:
            self.on_text(text[self.printed :])


def sampling_warpers(temperature: float, top_k: int | None, top_p: float | None):
    """transformers' logits warpers in `generate`'s order; an empty list for greedy decoding."""
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if temperature > 0:
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _cache_argument(model) -> str:
    """The KV cache's name in forward's arguments and outputs: transformers 5 renamed
    `past_key_values` to `cache` (the old name warns, and goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def decode(
    model,
    ids: list[int],
    steps: int,
    warpers=None,
    sample: bool = False,
    eos_token_id: int | None = None,
    on_token=None,
) -> list[int]:
    """Up to `steps` new tokens after `ids` (which must fit the context with them): one prefill
    forward over the prompt, then one single-token forward per new token on the KV cache.

    Greedy unless `sample`; `warpers` reshape the (1, vocab) logits first. Stops after
    `eos_token_id`. Cost: O(context) attention per token instead of recomputing the prefix.
    """
    device = next(model.parameters()).device
    cache_name = _cache_argument(model)
    sequence = torch.tensor([ids], device=device)  # (1, T): what the warpers see
    step_input, cache, new = sequence, None, []
    for _ in range(steps):
        output = model(input_ids=step_input, use_cache=True, **{cache_name: cache})
        cache = output[cache_name]
        scores = output.logits[:, -1, :].float()  # (1, vocab)
        if warpers:
            scores = warpers(sequence, scores)
        if sample:
            step_input = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
        else:
            step_input = scores.argmax(dim=-1, keepdim=True)  # (1, 1)
        sequence = torch.cat([sequence, step_input], dim=1)
        token = int(step_input)  # host sync: the caller streams and checks EOS per token
        new.append(token)
        if on_token is not None:
            on_token(token)
        if token == eos_token_id:
            break
    return new


def generate_text(
    model,
    tokenizer,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int | None = SAMPLING_DEFAULTS["top_k"],
    top_p: float | None = SAMPLING_DEFAULTS["top_p"],
    seed: int | None = None,
    on_text=None,
) -> str:
    """Generate up to `max_new_tokens` after `prompt` (fewer if the model emits EOS); returns the
    new text without the prompt. temperature 0 means greedy decoding. `on_text(str)` receives text as it is produced.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if seed is not None:
        torch.manual_seed(seed)
    context = model.config.n_positions
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    ids = [tokenizer.bos_token_id] + ids  # GPT-2 style: documents start after <|endoftext|>
    window = max(1, context // 2)  # tokens of history kept when sliding past the context
    if len(ids) > context - 1:
        logger.warning(
            "prompt is %d tokens, longer than the model's context %d: keeping the most recent %d",
            len(ids),
            context,
            window,
        )
        ids = ids[-window:]
    warpers = sampling_warpers(temperature, top_k, top_p)
    generated: list[int] = []
    printer = _Printer(tokenizer, on_text) if on_text else None
    while len(generated) < max_new_tokens:
        step = min(context - len(ids), max_new_tokens - len(generated))
        new = decode(
            model,
            ids,
            step,
            warpers,
            sample=temperature > 0,
            eos_token_id=tokenizer.eos_token_id,
            on_token=printer.put if printer else None,
        )
        generated.extend(new)
        if len(new) < step or new[-1] == tokenizer.eos_token_id:
            break  # the model ended the document
        ids = (ids + new)[-window:]
    if printer:
        printer.end()
    return tokenizer.decode(generated, skip_special_tokens=True)


def stream_to_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
