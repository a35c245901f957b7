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
import logging
import math
import sys
from collections.abc import Collection
from pathlib import Path

import torch

from hfmini.config import DEFAULT_MAX_NEW_TOKENS, SAMPLING_DEFAULTS
from hfmini.errors import HfminiError
from hfmini.models.chat_template import stop_token_ids
from hfmini.models.device import default_device
from hfmini.models.pretrained import load_for_inference
from hfmini.models.size import context_length

logger = logging.getLogger(__name__)


def load_model_and_tokenizer(model_dir: str | Path, device: str | None = None):
    """Load a model folder for sampling (safetensors only, never remote code): an output_dir, a
    checkpoint, any save_pretrained folder, or a LoRA adapter folder merged into its base.

    The files are checked first (`hfmini.models.pretrained.check_model_folder`), so that a damaged or
    foreign folder is a one-line error rather than a traceback from deep inside transformers.
    `device`: "cuda", "mps" or "cpu"; default CUDA, else Apple silicon (MPS), else the CPU.
    """

    model, tokenizer = load_for_inference(model_dir)
    device = device or default_device()
    return model.to(device).eval(), tokenizer


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
    `past_key_values` to `cache` (the old name warns, and goes in 5.40). A peft model passes its
    keyword arguments through to the model it wraps, whose signature decides."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


@torch.inference_mode()
def decode(
    model,
    ids: list[int],
    steps: int,
    warpers=None,
    sample: bool = False,
    eos_token_id: int | Collection[int] | None = None,
    on_token=None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Up to `steps` new tokens after `ids` (which must fit the context with them): one prefill
    forward over the prompt, then one single-token forward per new token on the KV cache.

    Greedy unless `sample`; `warpers` reshape the (1, vocab) logits first. Stops after
    `eos_token_id`, or after any of them when it is a collection (eos and end of turn).
    `generator`: the random numbers to sample with (None: torch's process-wide ones).
    Cost: O(context) attention per token instead of recomputing the prefix.
    """
    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    device = next(model.parameters()).device
    cache_name = _cache_argument(model)
    sequence = torch.tensor([ids], device=device)  # (1, T): what the warpers see
    step_input, cache, new = sequence, None, []
    # Nothing is padded: an all-ones mask over the past and the new tokens, given so that
    # transformers does not warn "We strongly recommend passing in an attention_mask".
    mask = torch.ones_like(sequence)
    for _ in range(steps):
        output = model(
            input_ids=step_input, attention_mask=mask, use_cache=True, **{cache_name: cache}
        )
        cache = output[cache_name]
        scores = output.logits[:, -1, :].float()  # (1, vocab)
        if warpers:
            scores = warpers(sequence, scores)
        if sample:
            probs = torch.softmax(scores, dim=-1)
            step_input = torch.multinomial(probs, num_samples=1, generator=generator)
        else:
            step_input = scores.argmax(dim=-1, keepdim=True)  # (1, 1)
        sequence = torch.cat([sequence, step_input], dim=1)
        mask = torch.ones_like(sequence)  # (1, T + 1): the cache's tokens and the next one
        token = int(step_input)  # host sync: the caller streams and checks EOS per token
        new.append(token)
        if on_token is not None:
            on_token(token)
        if token in stops:
            break
    return new


def seeded_generator(model, seed: int | None) -> torch.Generator | None:
    """A random-number generator of its own for one sampling call, on the model's device: a seed
    then fixes that call's text whatever other calls (the playground's other users, a training
    loop) draw meanwhile, and leaves torch's process-wide generator as it was. On a CPU it draws
    what torch.manual_seed(seed) would have. None without a seed."""
    if seed is None:
        return None
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed)


def generate_text(
    model,
    tokenizer,
    prompt: str = "",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int | None = SAMPLING_DEFAULTS["top_k"],
    top_p: float | None = SAMPLING_DEFAULTS["top_p"],
    seed: int | None = None,
    on_text=None,
    chat: bool = False,
) -> str:
    """Generate up to `max_new_tokens` after `prompt` (fewer if the model emits EOS); returns the
    new text without the prompt. temperature 0 means greedy decoding. `on_text(str)` receives
    text as it is produced. `chat`: the prompt is a rendered chat template (no leading bos, as
    `apply_chat_template` gives none) and the end of a turn stops generation too.
    """

    check_sampling(max_new_tokens, temperature, top_k, top_p)
    generator = seeded_generator(model, seed)
    context = context_length(model.config)
    # verbose=False: not transformers' "longer than the specified maximum sequence length"
    # warning; the cut below says what happens instead.
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"] if prompt else []
    if not chat:
        ids = [tokenizer.bos_token_id] + ids  # GPT-2 style: documents start after <|endoftext|>
    stop = set(stop_token_ids(tokenizer)) if chat else {tokenizer.eos_token_id}
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
            eos_token_id=stop,
            on_token=printer.put if printer else None,
            generator=generator,
        )
        generated.extend(new)
        if len(new) < step or new[-1] in stop:
            break  # the model ended the document
        ids = (ids + new)[-window:]
    if printer:
        printer.end()
    return tokenizer.decode(generated, skip_special_tokens=True)


def stream_to_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
