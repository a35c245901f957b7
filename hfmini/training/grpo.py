"""GRPO (TRL's GRPOTrainer): sample a group of completions per prompt, score them with reward
functions, and push each completion's tokens up or down by how far its reward is from its group's
mean, with PPO's clipped ratio to the policy that sampled it.

    batch: b prompts (b, Tp) ─► rollout: sample_batch, G completions each (b·G, Tc), KV-cached
    ─► rewards (b·G, F) (rewards.py) ─► group_advantages (b·G,) ─► [old log-probs, when each
       rollout serves num_iterations steps; the reference's, when beta > 0]
    ─► completion_logps (b·G, Tc) under the model ─► policy_loss ─► LossSum

The losses sum over the micro-batch and name their items, so that the loop's weighing over the
accumulation window and the processes gives TRL's normalisation exactly:
    dapo      Σ token losses / Σ completion tokens of the step       items: tokens
    grpo      Σ (each completion's mean token loss) / completions    items: completions
    dr_grpo   Σ token losses / (completions × max_completion_length) items: completions
Metrics, under TRL's names, are sums with their own counts (`DIVISORS`), divided at logging time:
reward, reward_std, frac_reward_zero_std, rewards/<function>/mean, completions/mean_length,
completions/clipped_ratio, kl, entropy, clip_ratio/{low,high,region}_mean. TRL's GRPOTrainer
computes the same loss and gradients (tests/test_grpo_trl.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from hfmini.config import Config
from hfmini.data.prompts import PreparedPrompts, PromptSet
from hfmini.models.batch_sampling import sample_batch
from hfmini.models.chat_template import stop_token_ids
from hfmini.models.sampling import sampling_warpers
from hfmini.training.grpo_loss import (
    TOKENS,
    completion_logps,
    group_advantages,
    nanstd,
    policy_loss,
)
from hfmini.training.objectives import LossSum
from hfmini.training.preference import without_adapter
from hfmini.training.rewards import RewardFunction, load_reward_funcs, score

logger = logging.getLogger("hfmini")

# Counts that metrics divide by (summed like the metrics; not logged themselves).
COMPLETIONS, ROLLOUTS, SCORED = "_completions", "_rollouts", "_scored"


@dataclass
class Rollout:
    """One micro-batch's sampled completions, scored: what the policy loss reads (N = b·G)."""

    prompt_ids: torch.Tensor  # (N, Tp) left-padded, each prompt repeated G times
    prompt_mask: torch.Tensor  # (N, Tp)
    completion_ids: torch.Tensor  # (N, Tc) pad after the stop token
    completion_mask: torch.Tensor  # (N, Tc) the tokens the loss covers
    advantages: torch.Tensor  # (N,)
    old_logps: torch.Tensor | None  # (N, Tc) when reused over num_iterations steps
    ref_logps: torch.Tensor | None  # (N, Tc) when beta > 0
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # sums, counted once
    table: list[dict] = field(default_factory=list)  # prompt, completion, rewards (for the log)


class GRPOObjective:
    """The run's objective on prompt batches: `objective(model, batch)` → LossSum. Holds the
    reward functions, the sampler's own random generator (saved in checkpoints, so a resumed
    run samples what the unbroken run sampled), the reference when beta > 0, and the rollouts
    kept for the next num_iterations - 1 passes over the same prompts."""

    def __init__(self, config: Config, data: PreparedPrompts, tokenizer, reference, accelerator):
        args = config.train
        self.args, self.data, self.tokenizer = args, data, tokenizer
        self.reference, self.accelerator = reference, accelerator
        self.functions: list[RewardFunction] = load_reward_funcs(args.reward_funcs)
        weights = args.reward_weights or [1.0] * len(self.functions)
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.warpers = sampling_warpers(args.temperature, args.top_k, args.top_p)
        stops = stop_token_ids(tokenizer) if data.conversational else [tokenizer.eos_token_id]
        self.stop_ids = sorted(set(stops))
        self.generator = torch.Generator(device=accelerator.device)
        self.generator.manual_seed(args.seed + 1000 * accelerator.process_index)
        self.kept: dict[tuple, Rollout] = {}  # prompt indices → rollout, for the later passes
        self.latest: list[dict] = []  # the newest rollout's table, for logging
        self.divisors = {
            "reward": SCORED,
            "reward_std": ROLLOUTS,
            "frac_reward_zero_std": COMPLETIONS,
            "completions/mean_length": COMPLETIONS,
            "completions/clipped_ratio": COMPLETIONS,
            "kl": TOKENS,
            "entropy": TOKENS,
            "clip_ratio/low_mean": TOKENS,
            "clip_ratio/high_mean": TOKENS,
            "clip_ratio/region_mean": TOKENS,
        }
        for function in self.functions:
            self.divisors[f"rewards/{function.name}/mean"] = f"_rewards/{function.name}/n"

    # -- the loss ------------------------------------------------------------------------------

    def __call__(self, model, batch: dict, split: str = "train") -> LossSum:
        rollout = self.rollout_for(model, batch)
        logps, entropy = completion_logps(
            model,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.completion_ids,
            rollout.completion_mask,
            self.args.temperature,
        )
        total, items, metrics = policy_loss(
            logps,
            rollout.old_logps,
            rollout.ref_logps,
            rollout.advantages,
            rollout.completion_mask,
            self.args,
        )
        metrics["entropy"] = (entropy * rollout.completion_mask).sum()
        return LossSum(total, items, {**rollout.metrics, **metrics})

    def rollout_for(self, model, batch: dict) -> Rollout:
        """The batch's rollout: sampled now on a window's first pass, else the one kept."""
        key = tuple(batch["prompt_index"].tolist())
        iteration = int(batch["iteration"][0])  # host sync, once per micro-batch
        if iteration > 0 and key in self.kept:
            rollout = self.kept[key]
        else:
            rollout = self.sample(model, batch)
        if self.args.num_iterations > 1:
            if iteration + 1 < self.args.num_iterations:
                self.kept[key] = rollout
            else:
                self.kept.pop(key, None)
        return rollout

    # -- sampling and scoring ------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, model, batch: dict) -> Rollout:
        """G completions of each of the batch's prompts, scored, with their advantages."""
        args, G = self.args, self.args.num_generations
        prompt_ids = batch["prompt_ids"].repeat_interleave(G, dim=0)  # (N, Tp)
        prompt_mask = batch["prompt_mask"].repeat_interleave(G, dim=0)
        plain = model.module if hasattr(model, "module") else model  # DDP: sample without sync
        completion_ids, completion_mask = sample_batch(
            plain,
            prompt_ids,
            prompt_mask,
            args.max_completion_length,
            self.warpers,
            self.stop_ids,
            self.tokenizer.pad_token_id,
            generator=self.generator,
        )
        truncated = ~ended_turn(completion_ids, completion_mask, self.stop_ids)  # (N,)
        lengths = completion_mask.sum(1)
        rewards_per_func, table = self.rewards(batch, completion_ids, completion_mask)
        rewards_per_func = rewards_per_func.to(completion_ids.device)
        advantages, rewards, std = group_advantages(
            rewards_per_func,
            self.weights.to(completion_ids.device),
            G,
            args.scale_rewards,
            batch_std=self.batch_std if args.scale_rewards == "batch" else None,
        )
        loss_mask = completion_mask
        if args.mask_truncated_completions:
            loss_mask = completion_mask * (~truncated).unsqueeze(1).to(completion_mask.dtype)
        old = ref = None
        if args.num_iterations > 1:  # the sampling policy's log-probs, for the ratio later
            old = completion_logps(
                model, prompt_ids, prompt_mask, completion_ids, loss_mask, args.temperature
            )[0]
        if args.beta != 0.0:
            ref = self.reference_logps(model, prompt_ids, prompt_mask, completion_ids, loss_mask)
        scored = ~torch.isnan(rewards)
        metrics = {
            "reward": torch.nansum(rewards),
            SCORED: scored.sum(),
            "reward_std": torch.nan_to_num(nanstd(rewards)),
            ROLLOUTS: torch.ones((), device=rewards.device),
            "frac_reward_zero_std": torch.isclose(std, torch.zeros_like(std)).sum(),
            COMPLETIONS: torch.tensor(float(len(rewards)), device=rewards.device),
            "completions/mean_length": lengths.sum().float(),
            "completions/clipped_ratio": truncated.sum().float(),
        }
        for k, function in enumerate(self.functions):
            column = rewards_per_func[:, k]
            metrics[f"rewards/{function.name}/mean"] = torch.nansum(column)
            metrics[f"_rewards/{function.name}/n"] = (~torch.isnan(column)).sum().float()
        for row, advantage in zip(table, advantages.tolist(), strict=True):
            row["advantage"] = advantage
        if self.accelerator.is_main_process:
            self.latest = table
        return Rollout(
            prompt_ids,
            prompt_mask,
            completion_ids,
            loss_mask,
            advantages,
            old,
            ref,
            {name: value.float() for name, value in metrics.items()},
            table,
        )

    def batch_std(self, rewards: torch.Tensor) -> torch.Tensor:
        """scale_rewards batch: the std of the micro-batch's rewards over every process."""
        if self.accelerator.num_processes > 1:
            rewards = self.accelerator.gather(rewards)
        return nanstd(rewards)

    def rewards(self, batch: dict, completion_ids, completion_mask) -> tuple[torch.Tensor, list]:
        """(N, F) rewards of the N completions, and the rows of the completions table."""
        return score_completions(
            self.functions,
            self.data.train_prompts,
            batch["prompt_index"].tolist(),
            completion_ids,
            completion_mask,
            self.tokenizer,
            self.args.num_generations,
            self.data.conversational,
        )

    def reference_logps(self, model, prompt_ids, prompt_mask, completion_ids, mask):
        """(N, Tc) the reference's token log-probs: a frozen copy, or the model with LoRA off."""
        temperature = self.args.temperature
        if self.reference is not None:
            return completion_logps(
                self.reference, prompt_ids, prompt_mask, completion_ids, mask, temperature
            )[0]
        with without_adapter(model) as plain:
            return completion_logps(
                plain, prompt_ids, prompt_mask, completion_ids, mask, temperature
            )[0]

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """This process's sampler state and the rollouts kept for later passes."""
        kept = {
            key: {
                name: getattr(rollout, name)
                for name in (
                    "prompt_ids",
                    "prompt_mask",
                    "completion_ids",
                    "completion_mask",
                    "advantages",
                    "old_logps",
                    "ref_logps",
                    "metrics",
                )
            }
            for key, rollout in self.kept.items()
        }
        return {"generator": self.generator.get_state(), "kept": kept}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.kept = {key: Rollout(**values) for key, values in state["kept"].items()}


def ended_turn(completion_ids, completion_mask, stop_ids: list[int]) -> torch.Tensor:
    """(N,) whether each completion ended on a stop token (eos, end of turn) within the limit."""
    stops = torch.tensor(stop_ids, device=completion_ids.device)
    return (completion_mask.bool() & torch.isin(completion_ids, stops)).any(dim=1)


def score_completions(
    functions,
    prompts: PromptSet,
    indices: list[int],
    completion_ids,
    completion_mask,
    tokenizer,
    num_generations: int,
    conversational: bool,
) -> tuple[torch.Tensor, list[dict]]:
    """(N, F) rewards of N = len(indices) × G completions, group after group, by calling each
    function as TRL does; and one table row per completion (prompt, completion, rewards)."""
    columns = prompts.columns(indices)
    repeated = {
        name: [value for value in values for _ in range(num_generations)]
        for name, values in columns.items()
    }
    prompt_values = repeated.pop("prompt")
    ids = [
        row[mask.bool()].tolist()
        for row, mask in zip(completion_ids.cpu(), completion_mask.cpu(), strict=True)
    ]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    completions = (
        [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    )
    rewards = score(functions, prompt_values, completions, ids, repeated)
    table = []
    for n, text in enumerate(texts):
        prompt = prompt_values[n]
        shown = prompt[-1].get("content", "") if isinstance(prompt, list) else prompt
        row = {"prompt": shown, "completion": text}
        row |= {
            f.name: (None if math.isnan(v) else v)
            for f, v in zip(functions, rewards[n].tolist(), strict=True)
        }
        table.append(row)
    return rewards, table


def score_prompts(
    objective: GRPOObjective,
    model,
    data: PreparedPrompts,
    batch_size: int,
    accelerator,
    max_prompts: int | None = None,
) -> dict[str, float]:
    """The held-out prompts' mean reward (per function too), completion length and clipped
    share: one completion of each, sampled with a generator seeded the same at every
    evaluation, so that evaluations differ only by the model. Each process samples every P-th
    batch; the sums are all-reduced."""
    args, device = objective.args, accelerator.device
    prompts = data.eval_prompts
    count = len(prompts) if max_prompts is None else min(max_prompts, len(prompts))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    names = [f.name for f in objective.functions]
    # reward, scored, length, clipped, completions, then each function's sum and count
    totals = torch.zeros(5 + 2 * len(names), dtype=torch.float64)
    plain = model.module if hasattr(model, "module") else model
    for number, start in enumerate(range(0, count, batch_size)):
        if number % accelerator.num_processes != accelerator.process_index:
            continue
        indices = list(range(start, min(start + batch_size, count)))
        batch = data.collate([prompts[k] for k in indices])
        ids, mask = sample_batch(
            plain,
            batch["prompt_ids"].to(device),
            batch["prompt_mask"].to(device),
            args.max_completion_length,
            objective.warpers,
            objective.stop_ids,
            objective.tokenizer.pad_token_id,
            generator=generator,
        )
        per_func, _ = score_completions(
            objective.functions,
            prompts,
            indices,
            ids,
            mask,
            objective.tokenizer,
            1,
            data.conversational,
        )
        rewards = (per_func * objective.weights).nansum(1)
        scored = ~torch.isnan(per_func).all(1)
        ended = ended_turn(ids, mask, objective.stop_ids).cpu()
        sums = [rewards[scored].sum(), scored.sum(), mask.sum().cpu(), (~ended).sum(), len(indices)]
        for k in range(len(names)):
            sums += [torch.nansum(per_func[:, k]), (~torch.isnan(per_func[:, k])).sum()]
        totals += torch.tensor([float(v) for v in sums], dtype=torch.float64)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals.to(device), reduction="sum").cpu()
    values = totals.tolist()
    completions = max(1.0, values[4])
    scored = {
        "reward": values[0] / max(1.0, values[1]),
        "completions/mean_length": values[2] / completions,
        "completions/clipped_ratio": values[3] / completions,
    }
    for k, name in enumerate(names):
        scored[f"rewards/{name}/mean"] = values[5 + 2 * k] / max(1.0, values[6 + 2 * k])
    return scored
