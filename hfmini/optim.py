"""The optimizer (AdamW, or Muon with AdamW) and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from hfmini.errors import HfminiError

if TYPE_CHECKING:
    from hfmini.budget import Progress, RunLength


def build_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    """`args.optim`: AdamW over every trainable weight, or Muon on the hidden matrices with AdamW
    on the rest. Weight decay on matrices (dim ≥ 2) only, not on biases, LayerNorms or gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optim != "muon":
        return _adamw(params, args)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    hidden = [p for p in params if p.dim() == 2 and id(p) not in embeddings]
    others = [p for p in params if id(p) not in {id(h) for h in hidden}]
    muon = Muon(
        hidden,
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        momentum=args.muon_momentum,
        orthogonalize_dtype=torch.bfloat16 if hidden and hidden[0].is_cuda else torch.float32,
    )
    return MuonWithAdamW(muon, _adamw(others, args))


def _adamw(params: list[torch.nn.Parameter], args) -> torch.optim.AdamW:
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel updates all tensors in one pass (CUDA, and CPU since torch 2.4): several
    # times faster than the foreach implementation for this step on a small CPU.
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=args.optim != "adamw_torch",
        foreach=None if args.optim != "adamw_torch" else True,
    )


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al., 2024), as torch.optim.Muon with adjust_lr_fn "match_rms_adamw":

        momentum ← μ·momentum + (1 - μ)·grad;   update ← grad + μ·(momentum - grad)   (Nesterov)
        W ← W·(1 - lr·weight_decay) - lr · 0.2·√max(rows, cols) · orthogonalise(update)

    orthogonalise: 5 quintic Newton-Schulz steps towards U·Vᵀ of update = U·S·Vᵀ; the 0.2·√max
    factor gives the update the RMS of a typical AdamW update, so one learning rate serves both.

    Why not torch.optim.Muon itself: it runs the Newton-Schulz steps in bf16, which a CPU without
    bf16 in hardware emulates; on an AVX2 CPU that made the default recipe's training step several
    times slower (docs/results.md). Here the steps run in `orthogonalize_dtype`: bf16 on a GPU, fp32
    on a CPU, where they cost 4·m²·n + 2·m³ FLOPs per step and m×n matrix (m ≤ n), a fraction of
    the forward and backward at the default recipe's size and batch.
    """

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        ns_steps: int = 5,
        orthogonalize_dtype: torch.dtype = torch.float32,
    ):
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum}
        super().__init__(params, defaults)
        self.ns_steps, self.orthogonalize_dtype = ns_steps, orthogonalize_dtype

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer's)
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, decay, mu = group["lr"], group["weight_decay"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - mu)
                update = param.grad.lerp(buffer, mu)
                update = orthogonalize(update, self.ns_steps, self.orthogonalize_dtype)
                param.mul_(1 - lr * decay)
                param.add_(update, alpha=-lr * 0.2 * max(param.shape) ** 0.5)
        return loss


def orthogonalize(matrix: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz towards the nearest semi-orthogonal matrix, with the quintic coefficients of
    Muon (they push singular values to about 0.7-1.2 rather than exactly 1, in 5 steps)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix.to(dtype)
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T  # (m, n) with m ≤ n: the Gram matrix is the smaller m × m
    x = x / x.norm().clamp(min=1e-7)  # spectral norm ≤ Frobenius norm ≤ 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(matrix.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for the hidden matrices and AdamW for the other weights, stepped as one optimizer:
    accelerate prepares it, the scheduler sets the learning rate of every group (the groups are
    the two optimizers' own), and a checkpoint holds both states."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW):
        self.parts = (muon, adamw)
        params = [p for part in self.parts for group in part.param_groups for p in group["params"]]
        super().__init__(params, {})
        self.param_groups = [group for part in self.parts for group in part.param_groups]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer's)
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.parts[0].state_dict(), "adamw": self.parts[1].state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.parts[0].load_state_dict(state_dict["muon"])
        self.parts[1].load_state_dict(state_dict["adamw"])
        self.param_groups = [group for part in self.parts for group in part.param_groups]


def warmup_steps_for(warmup: float, total_steps: int) -> int:
    """transformers' reading of warmup_steps: at least 1 counts steps, below 1 a fraction."""
    steps = int(warmup) if warmup >= 1 else math.ceil(warmup * total_steps)
    return min(steps, total_steps)


def build_scheduler(optimizer, args, length: RunLength, progress: Progress):
    """The learning-rate schedule: transformers' `lr_scheduler_type`, over the run's steps, or
    over its progress (budget.py) when it has a time budget. Stepped once per optimizer step,
    after `progress` is updated."""
    from transformers import get_scheduler

    if not length.has_budget:
        try:
            return get_scheduler(
                args.lr_scheduler_type,
                optimizer,
                num_warmup_steps=warmup_steps_for(args.warmup_steps, length.total_steps),
                num_training_steps=length.total_steps,
            )
        except ValueError as err:
            raise HfminiError(f"lr_scheduler_type {args.lr_scheduler_type!r}: {err}") from None
    shape = _schedule_shape(args.lr_scheduler_type)
    warmup = args.warmup_steps

    def factor(_: int) -> float:
        if warmup >= 1:  # warmup in steps, then the shape over the whole run
            return min(1.0, progress.step / warmup) * shape(progress.done)
        if progress.done < warmup:  # warmup over the first fraction of the run
            return progress.done / warmup
        return shape((progress.done - warmup) / (1.0 - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# Positions of a named schedule sampled when it is laid out over a fraction of the run.
_SHAPE_RESOLUTION = 1_000_000


def _schedule_shape(name: str) -> Callable[[float], float]:
    """transformers' schedule `name` without warmup, as a function of the fraction done (0 to 1):
    the factor its LambdaLR gives a run of _SHAPE_RESOLUTION steps at that step."""
    from transformers import get_scheduler

    throwaway = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        scheduler = get_scheduler(
            name, throwaway, num_warmup_steps=0, num_training_steps=_SHAPE_RESOLUTION
        )
    except ValueError as err:
        raise HfminiError(f"lr_scheduler_type {name!r}: {err}") from None
    if type(scheduler) is not torch.optim.lr_scheduler.LambdaLR:
        raise HfminiError(
            f"lr_scheduler_type {name!r} cannot be laid out over a time budget: choose linear, "
            "cosine, polynomial, constant or constant_with_warmup, or set max_steps instead of "
            "max_train_minutes"
        )
    at_step = scheduler.lr_lambdas[0]
    return lambda done: at_step(round(min(1.0, max(0.0, done)) * _SHAPE_RESOLUTION))
