"""`make bench` section 3: KV-cached decoding against recomputing the context, and `generate`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hfmini.bench.timing import VocabularyOnly, timed_rounds
from hfmini.config import parse_config
from hfmini.models.gpt2 import build_model
from hfmini.models.sampling import decode

if TYPE_CHECKING:
    pass


def bench_generation(recipe: str, new_tokens: int = 256, repeats: int = 5) -> dict:
    """Greedy decoding of `new_tokens` tokens, same model: hfmini's KV-cache loop (what
    `hfmini generate` and training samples run), transformers' `generate` (also KV cache), and
    recomputing the whole context for each new token."""

    config = parse_config(["--config", recipe])
    tokenizer = VocabularyOnly(config.model.vocab_size)  # speed needs only the vocabulary size
    prompt_len = 16
    # The recipe's model, with a context that holds the prompt and every new token, so neither
    # method has to slide.
    model = build_model(config.model, tokenizer, context_length=prompt_len + new_tokens).eval()
    prompt = torch.randint(1, len(tokenizer), (1, prompt_len))

    def with_cache() -> None:
        decode(model, prompt[0].tolist(), new_tokens)

    @torch.inference_mode()
    def transformers_generate() -> None:
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )

    @torch.inference_mode()
    def recompute() -> None:  # what a from-scratch implementation without a cache does
        ids = prompt
        for _ in range(new_tokens):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)

    variants = {"cache": with_cache, "generate": transformers_generate, "recompute": recompute}
    rates = timed_rounds(variants, repeats, 1, new_tokens)
    return {
        "new_tokens": new_tokens,
        "kv_cache_tokens_per_second": rates["cache"],
        "transformers_generate_tokens_per_second": rates["generate"],
        "recompute_tokens_per_second": rates["recompute"],
        "speedup": rates["cache"] / rates["recompute"],
        "generate_speedup": rates["generate"] / rates["recompute"],
    }
