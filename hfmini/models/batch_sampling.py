"""Sampling completions for a batch of prompts at once with the KV cache, as GRPO needs (several
completions per prompt, scored by rewards, then trained on).

    prompt_ids (B, Tp), left-padded  --prefill-->  cache  --one (B, 1) forward per token-->
    completion_ids (B, Tc), completion_mask (B, Tc)

Left padding puts every row's last prompt token in the same column, so one (B, 1) step extends all
rows together. GPT-2's learned positions would count the padding, so each row's positions are given
explicitly (cumsum(mask) - 1) and advance by one per step. A row that has produced a stop token is
finished: it is fed `pad_id`, masked out, and its later logits are ignored; the loop ends once all
rows are finished. Same warpers and draws as `decode` in sampling.py, which does one row.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection
from contextlib import contextmanager

import torch

from hfmini.models.sampling import _cache_argument


@contextmanager
def _eval_mode(model):
    """The model in eval mode (no dropout) inside, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _unwrapped(model):
    """The module whose forward signature tells the argument names: DDP's forward takes *args and
    **kwargs and passes them on, so its `.module` decides (a peft model is handled further down)."""
    return getattr(model, "module", model)


def _keeps_last_logits_only(model) -> bool:
    """Whether forward accepts `logits_to_keep` (transformers' causal LMs do): the prefill then
    projects only the last position onto the vocabulary, not all B x Tp of them (at a 50k vocab,
    B=16 and Tp=512 that is 1.6 GB of fp32 logits saved)."""
    inner = _unwrapped(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


@torch.no_grad()
def sample_batch(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    warpers,
    stop_ids: Collection[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_ids (B, Tp) LEFT-padded (prompt_mask (B, Tp) 1 on real tokens, 0 on padding) ->
    completion_ids (B, Tc) and completion_mask (B, Tc), Tc <= max_new_tokens = the longest row's length;
    each row's tokens up to and including its first stop token are 1 in the mask; after it, pad_id and 0.

    `warpers` (e.g. `sampling_warpers(...)`, empty or None for none) reshape the (B, vocab) fp32
    logits; then a multinomial draw with `generator`, or argmax when not `sample`. Runs in eval mode
    (no dropout), restoring the model's mode afterwards; no_grad rather than inference_mode, so that
    the outputs can be used freely next to autograd (and under DDP). The model is called as given.
    Cost: one host sync per token, the "all rows stopped" check.
    """
    with _eval_mode(model):
        batch, device = prompt_ids.shape[0], prompt_ids.device
        cache_name = _cache_argument(_unwrapped(model))
        extra = {"logits_to_keep": 1} if _keeps_last_logits_only(model) else {}
        stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
        mask = prompt_mask.to(device=device, dtype=torch.long)  # (B, T): grows a column per step
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, Tp): 0 at the first real token
        next_position = positions[:, -1:] + 1  # (B, 1): left padding, so the last column is real
        sequence = prompt_ids  # (B, T): what the warpers see
        step_input, cache = prompt_ids, None
        finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
        tokens, kept = [], []  # max_new_tokens x (B, 1) each
        for _ in range(max_new_tokens):
            output = model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_name: cache},
                **extra,
            )
            cache = output[cache_name]
            scores = output.logits[:, -1, :].float()  # (B, vocab)
            if warpers:
                scores = warpers(sequence, scores)
            if sample:
                probs = torch.softmax(scores, dim=-1)
                token = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            else:
                token = scores.argmax(dim=-1, keepdim=True)  # (B, 1)
            alive = ~finished[
                :, None
            ]  # (B, 1): rows still producing, this step's stop token included
            token = torch.where(alive, token, torch.full_like(token, pad_id))
            tokens.append(token)
            kept.append(alive)
            finished = finished | torch.isin(token[:, 0], stops)
            sequence = torch.cat([sequence, token], dim=1)
            mask = torch.cat(
                [mask, alive.long()], dim=1
            )  # a finished row's pads are never attended
            step_input, positions = token, next_position
            next_position = next_position + 1
            if bool(finished.all()):  # host sync: the one per token, to stop early
                break
        if not tokens:
            empty = torch.empty(batch, 0, dtype=torch.long, device=device)
            return empty, empty.clone()
        return torch.cat(tokens, dim=1), torch.cat(kept, dim=1).long()
