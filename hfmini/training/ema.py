"""An exponential moving average (EMA) of the weights, exported in their place at the end.

    average ← average + (1 - decay_t) · (weights - average)    after every optimizer step t,
    decay_t = min(decay, (1 + t) / (10 + t))

The ramp on decay_t (as in timm's ModelEmaV2) lets the average follow the weights closely in the
first steps instead of keeping the random initialisation for ~1/(1 - decay) steps.

With a time budget that ends the run before max_steps (budget.py), the average's window
1/(1 - decay) shrinks in proportion to the steps the run is expected to reach: the decay was set
for max_steps, and the average should span the same fraction of a shorter run.

Why: on the default recipe the average with decay 0.995 (a half-life of ~140 steps) scored a few
thousandths of a bit per byte below the final weights in every paired run (docs/results.md):
averaging removes part of the step-to-step noise that the last weights still carry.
Cost: one fp32 copy of the weights, and one fused lerp over them per optimizer step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hfmini.errors import HfminiError
from hfmini.models.device import is_sharded
from hfmini.run_folder import WEIGHT_AVERAGE_FILE


class WeightAverage:
    """The EMA of a model's trainable parameters, kept on their device in fp32.

    `model` is the plain module (no DDP or torch.compile wrapper), so that the names are those
    of the exported checkpoint; the optimizer updates its parameters in place, so references
    taken here stay valid for the whole run.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.average = [p.detach().float().clone() for p in self.params]

    def current_decay(self, window_scale: float = 1.0) -> float:
        """decay_t; `window_scale` (0 to 1] shortens the window 1/(1 - decay) in proportion."""
        decay = max(0.0, 1.0 - (1.0 - self.decay) / window_scale)
        return min(decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, window_scale: float = 1.0) -> None:
        """Fold in the weights after an optimizer step. No host synchronisation."""
        self.updates += 1
        weights = [p.detach().float() for p in self.params]
        torch._foreach_lerp_(self.average, weights, 1.0 - self.current_decay(window_scale))

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the model's parameters with the average (at the end of training)."""
        for param, average in zip(self.params, self.average, strict=True):
            param.copy_(average)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {name: t.contiguous() for name, t in zip(self.names, self.average, strict=True)}
        save_file(
            tensors,
            str(Path(folder) / WEIGHT_AVERAGE_FILE),
            metadata={"updates": str(self.updates)},
        )

    def load(self, folder: Path) -> bool:
        """Restore from a checkpoint folder; False if it holds no average (made without EMA)."""
        from safetensors import safe_open

        path = Path(folder) / WEIGHT_AVERAGE_FILE
        if not path.is_file():
            return False
        with safe_open(str(path), framework="pt", device="cpu") as saved:
            self.updates = int(saved.metadata()["updates"])
            for name, average in zip(self.names, self.average, strict=True):
                average.copy_(saved.get_tensor(name))
        return True


def weight_average_for(accelerator, model, decay: float, resume_path: Path | None):
    """The run's moving average when `decay` is set (None when 0), restored when resuming.

    `model` is the prepared model; the average tracks the plain module inside it.
    """
    import logging

    if not decay:
        return None
    if is_sharded(accelerator):
        raise HfminiError(
            "ema_decay needs the whole model on every process, which FSDP and DeepSpeed shard: "
            "set ema_decay 0 or train with DDP"
        )
    ema = WeightAverage(accelerator.unwrap_model(model, keep_torch_compile=False), decay)
    if resume_path is not None and not ema.load(resume_path):
        logging.getLogger("hfmini").warning(
            "%s holds no weight average: starting one from its weights", resume_path
        )
    return ema
