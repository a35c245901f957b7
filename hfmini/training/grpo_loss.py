"""GRPO's arithmetic, as TRL's GRPOTrainer does it: completion log-probs, group advantages,
and the clipped policy-gradient loss of each loss_type, as sums over a micro-batch with the items
they sum over (training/grpo.py explains the normalisations). Pure functions of tensors, so that
tests/test_grpo_trl.py can hold them against TRL's on the same numbers.
"""

from __future__ import annotations

import torch

TOKENS = "_tokens"  # the count the token metrics divide by (summed, not logged)


def completion_logps(
    model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, Tc) each completion token's log-probability under `model` at the sampling temperature
    (TRL scores logits / temperature, the distribution that sampled them), and (N, Tc) the
    entropy of that distribution. One forward over (N, Tp + Tc); the (N, Tc, V) logits are the
    memory peak. Position ids count real tokens only, so a left-padded prompt starts at 0."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    width = completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
    logits = out.logits[:, -width - 1 : -1].float() / temperature  # (N, Tc, V)
    normaliser = torch.logsumexp(logits, dim=-1)
    picked = torch.gather(logits, 2, completion_ids.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(logits.detach(), dim=-1)
    entropy = normaliser.detach() - (probs * logits.detach()).sum(-1)
    return picked - normaliser, entropy


def nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The standard deviation of the non-NaN values (Bessel-corrected, as TRL's)."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(values)).sum(dim=dim, keepdim=True)
    variance = variance * torch.where(count > 1, count / (count - 1), torch.nan)
    std = variance.sqrt()
    return std.squeeze(dim) if dim is not None else std.reshape(())


def group_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str,
    batch_std=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) advantages, (N,) rewards (NaN where no function scored) and (N,) the std they were
    scaled by, from (N, F) rewards of N = b groups × G completions, group after group.

    A completion's reward is the weighted sum of what its functions gave (None skipped); its
    advantage is its distance from its group's mean, divided by the group's std + 1e-4 (group),
    the batch's (batch; `batch_std` computes it over every process), or by nothing (none).
    Completions no function scored get advantage 0."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    groups = rewards.view(-1, num_generations)  # (b, G)
    mean = torch.nanmean(groups, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = (batch_std or nanstd)(rewards).expand_as(rewards)
    else:
        std = nanstd(groups, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), rewards, std


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    args,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy-gradient loss of (N, Tc) token log-probs: its sum over the micro-batch,
    the items it sums over (tokens for dapo, completions else), and the metric sums.
    `old_logps`: the sampling policy's (None: this very model, ratio 1); `ref_logps`: the
    reference's, for the KL penalty (beta > 0)."""
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)  # (N, Tc)
    low, high = 1 - args.epsilon, 1 + (args.epsilon_high or args.epsilon)
    gain = advantages.unsqueeze(1)  # (N, 1)
    per_token = -torch.min(ratio * gain, torch.clamp(ratio, low, high) * gain)
    metrics = {}
    if args.beta != 0.0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1  # k3, an unbiased estimate of KL(π ‖ π_ref) ≥ 0
        # Weighted by the (differentiable) ratio to the sampling policy, as TRL ≥ 1.16 does by
        # default (use_bias_correction_kl): the unbiased reverse-KL gradient of DeepSeek-V3.2.
        # It changes the gradient even on-policy, where the ratio is 1 but its gradient is not 0.
        if getattr(args, "use_bias_correction_kl", True):
            kl = kl * ratio
        per_token = per_token + args.beta * kl
        metrics["kl"] = (kl.detach() * mask).sum()
    tokens = mask.sum()
    if args.loss_type == "grpo":
        total = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
        items = torch.tensor(logps.shape[0], device=logps.device)
    elif args.loss_type == "dr_grpo":
        total = (per_token * mask).sum() / args.max_completion_length
        items = torch.tensor(logps.shape[0], device=logps.device)
    else:  # dapo
        total = (per_token * mask).sum()
        items = tokens.detach().long()
    low_clipped = (ratio < low) & (gain < 0)
    high_clipped = (ratio > high) & (gain > 0)
    metrics |= {
        "clip_ratio/low_mean": (low_clipped * mask).sum().detach(),
        "clip_ratio/high_mean": (high_clipped * mask).sum().detach(),
        "clip_ratio/region_mean": ((low_clipped | high_clipped) * mask).sum().detach(),
        TOKENS: tokens.detach(),
    }
    return total, items, metrics
