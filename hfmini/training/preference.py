"""Preference objectives (TRL's DPO, robust DPO, IPO; CPO's SimPO): a pair's loss from the
log-probabilities of its two answers under the model and under a frozen reference.

    batch (2B, T): chosen rows, then rejected ─► one forward ─► sequence_logps (2B,)
    ─► reference_logps (2B,): a frozen copy of the starting weights, the LoRA base with the
       adapter off (no second copy), or computed once before training (precompute_ref_log_probs)
    ─► pair_losses (B,) and the rewards ─► LossSum(Σ losses, B pairs, the metric sums)

Rewards are beta × (log π(answer) − log π_ref(answer)) (SimPO: beta × the length-averaged
log-probability); the metrics, under TRL's names, are sums over pairs that the loop divides by
the pairs it logged: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
logps/chosen, logps/rejected. TRL's DPOTrainer gives the same numbers (tests/test_preference_trl.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model

from hfmini.config import Config
from hfmini.data.packing import IGNORE_INDEX
from hfmini.errors import HfminiError
from hfmini.training.objectives import LossSum

logger = logging.getLogger("hfmini")

METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def sequence_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B,) each row's summed log-probability of its label tokens, and (2B,) their count.
    Costs the (2B, T, V) logits once; the log-softmax is taken by gather − logsumexp."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()  # (2B, T-1, V)
    labels = batch["labels"][:, 1:]  # (2B, T-1): row t is predicted from the tokens before it
    mask = labels != IGNORE_INDEX
    picked = torch.gather(logits, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return token_logps.sum(dim=1), mask.sum(dim=1)


def pair_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    counts: torch.Tensor,
    args,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) losses, chosen rewards and rejected rewards, from (2B,) log-probs of the chosen
    rows then the rejected rows, the reference's (None for SimPO), and the answer lengths."""
    beta, smoothing = args.beta, args.label_smoothing
    chosen, rejected = logps.chunk(2)
    if args.loss_type == "simpo":  # no reference: the length-averaged log-probability
        average = logps / counts.clamp(min=1)
        chosen_avg, rejected_avg = average.chunk(2)
        logits = chosen_avg - rejected_avg - args.simpo_gamma / beta
        losses = (
            -F.logsigmoid(beta * logits) * (1 - smoothing)
            - F.logsigmoid(-beta * logits) * smoothing
        )
        return losses, beta * chosen_avg.detach(), beta * rejected_avg.detach()
    ref_chosen, ref_rejected = ref_logps.chunk(2)
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if args.loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif args.loss_type == "robust":  # unbiased under a label_smoothing share of flipped pairs
        losses = (
            -(1 - smoothing) * F.logsigmoid(beta * delta) + smoothing * F.logsigmoid(-beta * delta)
        ) / (1 - 2 * smoothing)
    else:  # ipo: the squared distance of the length-averaged margin from 1 / (2 beta)
        # Averaged over the scored tokens. With no prompt token, TRL's DPOTrainer also counts the
        # answer's first token, which nothing predicts: one more (tests/test_preference_trl.py).
        chosen_n, rejected_n = counts.chunk(2)
        margin = chosen_ratio / chosen_n.clamp(min=1) - rejected_ratio / rejected_n.clamp(min=1)
        losses = (margin - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def metric_sums(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, logps: torch.Tensor
) -> dict[str, torch.Tensor]:
    """TRL's metrics as sums over the B pairs (the loop divides by the pairs counted)."""
    chosen_logps, rejected_logps = logps.detach().chunk(2)
    return {
        "rewards/chosen": chosen_rewards.sum(),
        "rewards/rejected": rejected_rewards.sum(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
        "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
        "logps/chosen": chosen_logps.sum(),
        "logps/rejected": rejected_logps.sum(),
    }


class PreferenceObjective:
    """The run's objective on preference pairs: `objective(model, batch)` → LossSum whose
    items are pairs. Holds what the reference needs: a frozen module (`reference`), or nothing
    when the policy with its LoRA adapter off is the reference, and the log-probs computed ahead
    for the train and the held-out pairs (`computed`)."""

    def __init__(self, config: Config, reference: torch.nn.Module | None) -> None:
        self.args = config.train
        self.reference = reference
        self.computed: dict[str, torch.Tensor] = {}  # split → (2, N) chosen, rejected

    def __call__(self, model: torch.nn.Module, batch: dict, split: str = "train") -> LossSum:
        logps, counts = sequence_logps(model, batch)
        ref = self.reference_logps(model, batch, split)
        losses, chosen_rewards, rejected_rewards = pair_losses(logps, ref, counts, self.args)
        shown = logps / counts.clamp(min=1) if self.args.loss_type == "simpo" else logps
        pairs = torch.tensor(losses.numel(), device=losses.device)
        return LossSum(losses.sum(), pairs, metric_sums(chosen_rewards, rejected_rewards, shown))

    def reference_logps(self, model, batch: dict, split: str) -> torch.Tensor | None:
        """(2B,) the reference's log-probs of the batch's rows; None for SimPO."""
        if not self.args.needs_reference:
            return None
        if split in self.computed:
            chosen, rejected = self.computed[split][:, batch["pair_index"].cpu()]
            return torch.cat([chosen, rejected]).to(batch["input_ids"].device)
        return reference_forward(self.reference, model, batch)

    def precompute(self, splits: dict, model, batch_size: int, accelerator) -> None:
        """Score every pair of each split ({name: PreparedPairs-style dataset and collate}) once
        with the reference, then free the reference module: training holds one model."""
        for name, (dataset, collate) in splits.items():
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
            found = torch.zeros(2, len(dataset), dtype=torch.float32)
            for batch in loader:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.autocast():
                    ref = reference_forward(self.reference, model, batch)
                found[:, batch["pair_index"].cpu()] = ref.float().cpu().view(2, -1)
            self.computed[name] = found
        self.reference = None


@torch.no_grad()
def reference_forward(reference, model, batch: dict) -> torch.Tensor:
    """The reference's (2B,) log-probs: the frozen module, or the model with LoRA off."""
    if reference is not None:
        return sequence_logps(reference, batch)[0]
    with without_adapter(model) as plain:
        return sequence_logps(plain, batch)[0]


@contextlib.contextmanager
def without_adapter(model):
    """The LoRA model with its adapter off and dropout off: the starting model, as a frozen
    copy of it would compute (no second copy in memory)."""
    plain = model.module if hasattr(model, "module") else model  # DDP's wrapper holds no adapter
    if not is_peft_model(plain):
        raise HfminiError("a reference model is needed but none was built")  # a bug, not input
    was_training = plain.training
    plain.eval()
    try:
        with plain.disable_adapter():
            yield plain
    finally:
        plain.train(was_training)


def frozen_reference(config: Config, model: torch.nn.Module) -> torch.nn.Module | None:
    """The reference module a run keeps beside the model: a frozen copy of the starting
    weights for full fine-tuning with a loss that needs one (memory for a second model); none
    with LoRA (the base, adapter off, is the reference) or SimPO."""
    args = config.train
    if not args.needs_reference or config.model.use_peft:
        return None
    if config.model.from_scratch:
        if args.is_grpo:
            raise HfminiError(
                f"beta {args.beta} weighs a KL penalty to a reference model, the one training "
                "starts from: set model_name_or_path (a trained model), or beta 0"
            )
        raise HfminiError(
            f"loss_type {args.loss_type} compares with a reference model, the one training "
            "starts from: set model_name_or_path (a trained model), or loss_type simpo, which "
            "needs none"
        )
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def score_pairs(
    objective: PreferenceObjective,
    model,
    data,
    batch_size: int,
    accelerator,
    max_pairs: int | None = None,
) -> dict[str, float]:
    """The held-out pairs' loss and TRL's metrics, means over pairs; each process scores every
    P-th batch, the sums are all-reduced."""
    device = accelerator.device
    loader = data.eval_loader(batch_size)
    totals = torch.zeros(len(METRICS) + 2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        seen = 0
        for number, batch in enumerate(loader):
            if max_pairs is not None and seen >= max_pairs:
                break
            seen += batch["pair_index"].numel()
            if number % accelerator.num_processes != accelerator.process_index:
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            with accelerator.autocast():
                loss = objective(model, batch, split="validation")
            sums = [loss.total, loss.items] + [loss.metrics[name] for name in METRICS]
            totals += torch.stack([value.double() for value in sums])
    model.train(was_training)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    values = totals.tolist()
    pairs = max(1.0, values[1])
    scored = {"pair_loss": values[0] / pairs}
    scored.update({name: value / pairs for name, value in zip(METRICS, values[2:], strict=True)})
    return scored
