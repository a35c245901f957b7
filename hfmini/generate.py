"""Sampling text from a saved model with `generate` (KV cache), streamed as it is produced.

A GPT-2 cannot attend past `n_positions` tokens. A prompt longer than the context keeps its most
recent tokens (and says so); generating past the context slides a window: each round restarts from
the last half-context of text, so arbitrarily long samples work at the cost of a fresh prefill.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from hfmini.errors import HfminiError

logger = logging.getLogger(__name__)


def load_model_and_tokenizer(model_dir: str | Path, device: str | None = None):
    """Load from a folder (safetensors only, never remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise HfminiError(
            f"{model_dir} holds no model (no config.json): point at a training output_dir"
        )
    if not list(path.glob("*.safetensors")):
        raise HfminiError(f"{model_dir} has no .safetensors weights: hfmini loads safetensors only")
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def check_sampling(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens <= 0:
        raise HfminiError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise HfminiError(f"temperature must be >= 0 (0 means greedy), got {temperature}")


class _Printer:
    """A streamer for `generate`: decodes incrementally and hands new text to `on_text`.

    Decoding the whole pending token list each time (not token by token) keeps multi-byte
    characters split across tokens intact.
    """

    def __init__(self, tokenizer, on_text):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.pending: list[int] = []
        self.printed = 0
        self.skip_prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt:  # generate() first hands over the prompt
            self.skip_prompt = False
            return
        self.pending.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.pending, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # half a character; wait for the rest of its bytes
        self.on_text(text[self.printed :])
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.pending, skip_special_tokens=True)
        if len(text) > self.printed:
            self.on_text(text[self.printed :])
        self.skip_prompt = True
        self.pending, self.printed = [], 0


@torch.no_grad()
def generate_text(
    model,
    tokenizer,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    seed: int | None = None,
    on_text=None,
) -> str:
    """Generate up to `max_new_tokens` after `prompt` (fewer if the model emits EOS); returns the
    new text without the prompt. temperature 0 means greedy decoding. `on_text(str)` receives text as it is produced.
    """
    check_sampling(max_new_tokens, temperature)
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
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
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    generated: list[int] = []
    printer = _Printer(tokenizer, on_text) if on_text else None
    while len(generated) < max_new_tokens:
        room = context - len(ids)
        step = min(room, max_new_tokens - len(generated))
        output = model.generate(
            torch.tensor([ids], device=device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
            max_new_tokens=step,
            pad_token_id=tokenizer.pad_token_id,
            streamer=printer,
            **sampling,
        )
        new = output[0, len(ids) :].tolist()
        generated.extend(new)
        if len(new) < step or new[-1] == tokenizer.eos_token_id:
            break  # the model ended the document
        ids = (ids + new)[-window:]
    return tokenizer.decode(generated, skip_special_tokens=True)


def stream_to_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
