"""The optimizer: AdamW, or Muon on the hidden matrices with AdamW on the rest."""

from __future__ import annotations

import torch


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
