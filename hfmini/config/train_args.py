"""TrainArguments: the optimisation loop, logging, checkpoints and publishing; and the pure
decisions that follow from them and the hardware (device, precision, compile), which tests drive
without the hardware. The probing itself lives in hfmini.models.device."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

from hfmini.config.checks import require_finite_non_negative, require_positive
from hfmini.config.defaults import (
    COMPILE_MIN_CPU_MINUTES,
    COMPILE_MIN_CPU_STEPS,
    GRPO_LOSSES,
    OPTIMIZERS,
    PREFERENCE_LOSSES,
    SCALE_REWARDS,
)
from hfmini.errors import HfminiError


@dataclass
class TrainArguments:
    """The optimisation loop, logging, checkpoints and publishing."""

    output_dir: str = field(default="output/run", metadata={"help": "Where the model is saved."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished model or checkpoints in output_dir."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder to continue from."}
    )
    init_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder (or a run folder: its newest checkpoint) whose weights, "
            "tokenizer and optimizer state start a new run, on new data with a fresh schedule."
        },
    )
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Blocks per device."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Micro-batches summed into one optimizer step; the loss is the mean over "
            "every label token of the step, however it is split."
        },
    )
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak AdamW learning rate. Default: 1e-3 from scratch, 5e-5 full "
            "fine-tuning, 2e-4 LoRA."
        },
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay, on matrices only."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    optim: str = field(
        default="adamw_torch_fused",
        metadata={
            "help": "adamw_torch_fused (AdamW, one fused kernel), adamw_torch, or muon: hfmini's "
            "Muon on the hidden weight matrices (torch.optim.Muon's update, scaled to AdamW's "
            "size so learning_rate keeps its meaning, with its Newton-Schulz steps in fp32 on a "
            "CPU, where torch's bf16 ones are emulated), AdamW on embeddings, norms and biases."
        },
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's Nesterov momentum."})
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "preference rows: sigmoid (DPO, the default), robust (DPO robust to "
            "label_smoothing's share of flipped pairs), ipo (IPO, length-averaged as TRL) or "
            "simpo (SimPO: no reference model, length-averaged log-probs, margin simpo_gamma). "
            "GRPO (prompt rows with reward_funcs): dapo (the default: the mean over every "
            "completion token of the step), grpo (each completion's mean, then their mean) or "
            "dr_grpo (token sums over max_completion_length)."
        },
    )
    beta: float | None = field(
        default=None,
        metadata={
            "help": "preference rows: how far the model may move from the reference (DPO's beta, "
            "default 0.1; IPO's tau; SimPO's reward scale, where 2.0 is usual). GRPO: the KL "
            "penalty's weight against the starting model (default 0: no reference model kept)."
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "preference rows, loss_type robust or simpo: the share of pairs assumed "
            "flipped, in [0, 0.5)."
        },
    )
    simpo_gamma: float = field(
        default=0.5, metadata={"help": "loss_type simpo: the target reward margin (TRL's name)."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "preference rows: score every pair with the reference once before training "
            "and drop the reference model (memory for one model, not two, while training)."
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "GRPO on prompt rows: reward functions as path/to/file.py:function or "
            "package.module:function, each called as TRL calls them: (prompts, completions, "
            "completion_ids, **columns) -> one float (or None: not scored) per completion."
        },
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "GRPO: one weight per reward function (default: 1 each)."},
    )
    num_generations: int = field(
        default=8,
        metadata={
            "help": "GRPO: completions sampled per prompt, a group whose mean reward is each "
            "one's baseline; must divide per_device_train_batch_size (which counts completions)."
        },
    )
    max_completion_length: int = field(
        default=64,
        metadata={
            "help": "GRPO: tokens sampled per completion at most; prompts keep their last "
            "block_size - max_completion_length tokens."
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "GRPO: the sampling temperature of completions."}
    )
    top_p: float = field(default=1.0, metadata={"help": "GRPO: nucleus sampling; 1: off."})
    top_k: int = field(default=0, metadata={"help": "GRPO: top-k sampling; 0: off."})
    epsilon: float = field(
        default=0.2,
        metadata={"help": "GRPO: the policy ratio is clipped to [1 - epsilon, 1 + epsilon_high]."},
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={"help": "GRPO: the ratio's upper clip (DAPO's clip-higher); default: epsilon."},
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "GRPO: divide each reward's distance from its group mean by the group's "
            "standard deviation (group), the micro-batch's over every process (batch), or "
            "not at all (none: Dr. GRPO)."
        },
    )
    num_iterations: int = field(
        default=1,
        metadata={
            "help": "GRPO: optimizer steps on each batch of completions (GRPO's mu); above 1 the "
            "policy ratio to the sampling policy is clipped by epsilon."
        },
    )
    mask_truncated_completions: bool = field(
        default=False,
        metadata={"help": "GRPO: leave completions cut at max_completion_length out of the loss."},
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip gradients to this norm; 0: no clipping."}
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the weights with this decay and "
            "export it instead of the last weights; 0: off."
        },
    )
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={"help": "Any transformers scheduler name (cosine, linear, ...)."},
    )
    warmup_steps: float = field(
        default=100,
        metadata={
            "help": "Linear warmup: optimizer steps, or below 1 a fraction of the run (of "
            "max_train_minutes when set), as in transformers."
        },
    )
    max_steps: int = field(
        default=-1,
        metadata={
            "help": "Optimizer steps to run; -1 uses num_train_epochs, or with max_train_minutes "
            "no bound in steps."
        },
    )
    num_train_epochs: float = field(
        default=1.0,
        metadata={"help": "Passes over the train split (when neither bound above is set)."},
    )
    max_train_minutes: float = field(
        default=0.0,
        metadata={
            "help": "Time budget: stop after this many minutes of training steps (validation, "
            "samples and checkpoints not counted); the learning-rate schedule, warmup and "
            "weight average are laid out over it. With max_steps, whichever comes first. 0: "
            "no budget."
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    disable_tqdm: bool = field(
        default=False,
        metadata={"help": "Hide the progress bar (the log lines stay), e.g. in a notebook."},
    )
    eval_steps: int = field(
        default=200, metadata={"help": "Evaluate every N steps; 0: only at end."}
    )
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps; 0: never."})
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only the newest N checkpoints."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for weights, data order and dropout."})
    report_to: str = field(
        default="none",
        metadata={
            "help": "wandb, tensorboard, trackio (local: a SQLite file under TRACKIO_DIR, default "
            "HF_HOME/trackio; `trackio show` opens it), all (wandb and tensorboard) or none "
            "(comma-separated)."
        },
    )
    run_name: str | None = field(default=None, metadata={"help": "Name of the tracker run."})
    project_name: str = field(default="hfmini", metadata={"help": "W&B / tracker project."})
    use_cpu: bool = field(
        default=False,
        metadata={
            "help": "Train on the CPU even where CUDA or Apple silicon (MPS) is available "
            "(false: CUDA, else MPS, else the CPU)."
        },
    )
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 where the device computes it natively: a recent CUDA GPU, or a "
            "CPU with AVX512-BF16/AMX; else fp32, as on MPS), no, bf16 (on MPS: macOS 14+) or "
            "fp16 (CUDA or MPS)."
        },
    )
    torch_compile: str = field(
        default="auto",
        metadata={
            "help": "auto (on with CUDA; off on MPS; on a CPU only in bf16 autocast and for runs "
            "of 1000+ steps or a budget of 2+ minutes, where the warm-up pays; fp32 CPU runs stay "
            "eager), true or false."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory."}
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: [""],
        metadata={"help": "Prompts sampled at each evaluation and at the end ('' = from BOS)."},
    )
    sample_max_new_tokens: int = field(default=120, metadata={"help": "Length of samples."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model."})
    hub_model_id: str | None = field(default=None, metadata={"help": "user/name on the Hub."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repo private."})
    hub_strategy: str = field(
        default="end",
        metadata={"help": "end: push once at the end; every_save: also at each save."},
    )
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card."})

    def __post_init__(self) -> None:
        self._check_preference()
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "sample_max_new_tokens",
        ):
            require_positive(self, name)
        if self.learning_rate is not None:
            require_positive(self, "learning_rate")
        for name in ("warmup_steps", "eval_steps", "save_steps", "weight_decay", "max_grad_norm"):
            require_finite_non_negative(self, name)
        if not 0.0 <= self.ema_decay < 1.0:
            raise HfminiError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise HfminiError(
                f"max_steps must be positive (or -1 to use num_train_epochs), got {self.max_steps}"
            )
        if self.optim not in OPTIMIZERS:
            raise HfminiError(f"optim {self.optim!r} is not one of {', '.join(OPTIMIZERS)}")
        require_finite_non_negative(self, "max_train_minutes", "no time budget")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise HfminiError(f"num_train_epochs must be positive, got {self.num_train_epochs}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise HfminiError(f"save_total_limit must be >= 1, got {self.save_total_limit}")
        self.torch_compile = str(self.torch_compile).lower()
        if self.torch_compile not in ("auto", "true", "false"):
            raise HfminiError(
                f"torch_compile must be auto, true or false, got {self.torch_compile!r}"
            )
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise HfminiError(
                f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}"
            )
        known = {"wandb", "tensorboard", "trackio", "all", "none"}
        for name in self.trackers_requested():
            if name not in known:
                raise HfminiError(
                    f"unknown report_to {name!r}: use one of {', '.join(sorted(known))}"
                )
        # An optional extra: said before the data is prepared, not when the first step logs.
        if "trackio" in self.trackers_requested() and importlib.util.find_spec("trackio") is None:
            raise HfminiError("report_to trackio needs trackio: pip install 'hfmini[trackio]'")
        if self.hub_strategy not in ("end", "every_save"):
            raise HfminiError(f"hub_strategy must be end or every_save, got {self.hub_strategy!r}")
        if self.init_from_checkpoint is not None and not str(self.init_from_checkpoint).strip():
            raise HfminiError("init_from_checkpoint is empty: give a checkpoint or run folder")
        if self.push_to_hub and not self.hub_model_id:
            raise HfminiError("push_to_hub needs hub_model_id: add --hub_model_id user/name")

    @property
    def is_grpo(self) -> bool:
        """Reward functions make a run GRPO (on prompt rows); else pairs make it preference
        tuning, and anything else next-token prediction."""
        return bool(self.reward_funcs)

    def _check_preference(self) -> None:
        """loss_type and beta take their defaults here, by the method reward_funcs choose."""
        losses = GRPO_LOSSES if self.is_grpo else PREFERENCE_LOSSES
        if self.loss_type is None:
            self.loss_type = "dapo" if self.is_grpo else "sigmoid"
        if self.loss_type not in losses:
            method = "GRPO (reward_funcs are set)" if self.is_grpo else "preference pairs"
            other = "preference pairs" if self.is_grpo else "GRPO (with reward_funcs)"
            hint = (
                f"; {self.loss_type} is a loss of {other}"
                if self.loss_type in (GRPO_LOSSES + PREFERENCE_LOSSES)
                else ""
            )
            raise HfminiError(
                f"loss_type {self.loss_type!r} is not one of {method}'s: {', '.join(losses)}{hint}"
            )
        if self.beta is None:
            self.beta = 0.0 if self.is_grpo else 0.1
        require_finite_non_negative(self, "beta")
        if self.beta == 0 and not self.is_grpo:
            raise HfminiError("beta must be above 0 (0.1 is DPO's usual value, 2.0 SimPO's)")
        require_finite_non_negative(self, "simpo_gamma")
        require_finite_non_negative(self, "label_smoothing")
        if not self.label_smoothing < 0.5:
            raise HfminiError(f"label_smoothing must be below 0.5, got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type not in ("robust", "simpo"):
            # TRL's sigmoid loss reads no label_smoothing; its robust loss is the smoothed DPO.
            raise HfminiError(
                f"label_smoothing has no effect on loss_type {self.loss_type}: use loss_type "
                "robust (DPO with that share of flipped pairs) or simpo, or drop label_smoothing"
            )
        self._check_grpo()

    def _check_grpo(self) -> None:
        if self.reward_weights is not None:
            if not self.is_grpo:
                raise HfminiError("reward_weights needs reward_funcs: add --reward_funcs FILE:NAME")
            if len(self.reward_weights) != len(self.reward_funcs):
                raise HfminiError(
                    f"reward_weights has {len(self.reward_weights)} values for "
                    f"{len(self.reward_funcs)} reward_funcs: give one weight per function"
                )
            if not all(math.isfinite(w) for w in self.reward_weights):
                raise HfminiError(f"reward_weights must be finite, got {self.reward_weights}")
        if self.num_generations < 2:
            raise HfminiError(
                f"num_generations must be at least 2, got {self.num_generations}: GRPO's "
                "baseline is the mean reward of a prompt's completions"
            )
        if self.is_grpo and self.per_device_train_batch_size % self.num_generations:
            raise HfminiError(
                f"per_device_train_batch_size {self.per_device_train_batch_size} counts "
                f"completions and must be a multiple of num_generations {self.num_generations} "
                "(whole groups per batch): change either"
            )
        for name in ("max_completion_length", "num_iterations"):
            require_positive(self, name)
        require_finite_non_negative(self, "temperature")
        if self.temperature == 0:
            raise HfminiError(
                "temperature must be above 0: GRPO learns from the differences between sampled "
                "completions, and greedy ones of a prompt are all alike"
            )
        if not 0 < self.top_p <= 1:
            raise HfminiError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")
        if self.top_k < 0:
            raise HfminiError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        require_finite_non_negative(self, "epsilon")
        if self.epsilon_high is not None:
            require_finite_non_negative(self, "epsilon_high")
        if self.scale_rewards not in SCALE_REWARDS:
            raise HfminiError(
                f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got "
                f"{self.scale_rewards!r}"
            )

    @property
    def needs_reference(self) -> bool:
        """Does the loss compare with a reference model? Preference losses but SimPO; GRPO with
        a KL penalty (beta above 0)."""
        if self.is_grpo:
            return self.beta > 0
        return self.loss_type != "simpo"

    def device_on(self, cuda: bool, mps: bool) -> str:
        """The device to run on, given what the machine has: "cuda", else "mps" (Apple silicon),
        else "cpu"; use_cpu forces "cpu"."""
        if self.use_cpu:
            return "cpu"
        return "cuda" if cuda else "mps" if mps else "cpu"

    def precision_on(self, device: str, bf16_native: bool) -> str:
        """The mixed precision on `device` ("cuda", "mps" or "cpu"); `bf16_native` says whether
        it multiplies bf16 in hardware (CUDA, CPU) or, on MPS, computes bf16 at all (macOS 14+).

        auto is bf16 where native, else fp32 ("no"). On MPS auto is fp32, which every Apple GPU
        computes: whether bf16 or fp16 autocast is faster there depends on the chip, and nothing
        cheap tells, so they are there when asked. fp16 needs a GPU (CUDA or MPS) and bf16 on
        MPS needs macOS 14: asked for where they cannot run, they fall back to fp32."""
        if self.mixed_precision == "auto":
            return "bf16" if bf16_native and device != "mps" else "no"
        if self.mixed_precision == "fp16" and device == "cpu":
            return "no"
        if self.mixed_precision == "bf16" and device == "mps" and not bf16_native:
            return "no"
        return self.mixed_precision

    def compile_on(self, device: str, precision: str = "no") -> bool:
        """auto compiles with CUDA, and on a CPU for long runs in bf16 autocast: max_steps of at
        least COMPILE_MIN_CPU_STEPS or a budget of COMPILE_MIN_CPU_MINUTES. There compile gains a
        few tens of percent in tokens/s after a warm-up of several seconds, which a short run
        never earns back. In fp32 on a CPU the matmuls are most of the step and compile gained a
        few percent at most for a warm-up of tens of seconds (docs/results.md), so auto stays eager. Epoch-based runs
        stay eager on CPU. On MPS auto stays eager: torch's source calls inductor's Metal backend
        "an early prototype", so compiling costs a warm-up and risks a failed compile for a gain
        nobody has measured here; true still compiles."""
        if self.torch_compile != "auto":
            return self.torch_compile == "true"
        if device != "cpu":
            return device == "cuda"
        long_run = (
            self.max_steps >= COMPILE_MIN_CPU_STEPS
            or self.max_train_minutes >= COMPILE_MIN_CPU_MINUTES
        )
        return precision == "bf16" and long_run

    def trackers_requested(self) -> list[str]:
        return [name.strip() for name in self.report_to.split(",") if name.strip()]
