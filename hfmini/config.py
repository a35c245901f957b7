"""Run configuration: three dataclasses parsed from `--config FILE.yaml` plus `--key value` overrides.

Precedence is command line > YAML > dataclass defaults. YAML files are flat and use the same keys
as the command line; an unknown key in either is an error that suggests the nearest known key.
Names follow `transformers.TrainingArguments` wherever one exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hfmini.errors import HfminiError

if TYPE_CHECKING:
    from hfmini.budget import RunLength

# Byte-level BPE needs all 256 byte symbols plus the special tokens before it can merge anything.
MIN_VOCAB_SIZE = 256 + 1
# torch_compile auto on a CPU: shortest run (optimizer steps) whose time saved pays the warm-up.
COMPILE_MIN_CPU_STEPS = 1000
COMPILE_MIN_CPU_MINUTES = 2.0
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "muon")

# GPT-2 shapes; the context (n_positions) follows block_size unless set. `gpt2-small` is the
# 124M-parameter GPT-2 of Radford et al. (2019) with its 50257-token vocabulary replaced by ours.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "nano": {"n_layer": 2, "n_head": 2, "n_embd": 64},
    "micro": {"n_layer": 4, "n_head": 4, "n_embd": 128},
    "mini": {"n_layer": 6, "n_head": 6, "n_embd": 384},
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}

# Settings that only describe a model built from scratch; refused with model_name_or_path.
FROM_SCRATCH_ONLY = ("model_size", "n_layer", "n_head", "n_embd", "n_positions", "vocab_size")

# Peak learning rate when none is given: from scratch; full fine-tuning (transformers'
# TrainingArguments default); LoRA adapters (the usual choice with TRL and peft).
DEFAULT_LEARNING_RATES = {"scratch": 1e-3, "full": 5e-5, "lora": 2e-4}

# Sampling defaults of training samples, `hfmini generate` and the exported generation_config.json
# (what `pipeline("text-generation")` uses).
SAMPLING_DEFAULTS: dict[str, float | int] = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}


def hfmini_cache_dir() -> Path:
    """hfmini's own cache (built-in corpus files, trained tokenizers) under the Hugging Face cache
    root, read from HF_HOME at call time so that a changed HF_HOME is honoured."""
    root = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(root) / "hfmini"


def check_cache_writable() -> None:
    """The Hugging Face cache (datasets, trained tokenizers, the built-in corpus) must take files:
    checked before any work, so that a read-only HF_HOME is one line, not a traceback later."""
    folder = hfmini_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise HfminiError(
            f"the Hugging Face cache {folder.parent} cannot be written ({err.strerror or err}): "
            "set HF_HOME to a folder you can write to"
        ) from None


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes blocks of token ids."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id. With neither this nor train_file, the built-in "
            "Shakespeare corpus is used."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The Hub dataset's configuration name."}
    )
    train_file: list[str] | None = field(
        default=None,
        metadata={"help": "Local .txt/.json/.jsonl/.csv/.parquet files or a directory of them."},
    )
    validation_file: list[str] | None = field(
        default=None, metadata={"help": "Local validation files, same formats as train_file."}
    )
    # Strings, not YAML mappings: the YAML goes through the same argparse as the command line
    # (_yaml_to_argv), which types a list of strings but not a list of mappings.
    dataset_mixture: list[str] | None = field(
        default=None,
        metadata={
            "help": "Train on several text sources instead of train_file or dataset_name, one "
            "string per source, the same in a YAML list and on the command line: file=PATH "
            "(local files or a folder, as train_file) or dataset=ID (a Hub id or a dataset "
            "folder, as dataset_name), then optional ,config=NAME ,split=NAME (default train) "
            ",text_column=NAME (default text_column) ,weight=W (default 1), e.g. "
            "'file=data/books,weight=0.5'. A weight is the fraction of the source's rows kept "
            "after a fixed-seed shuffle (open-r1's dataset_mixture), above 1 repeating rows; rows "
            "are lines of .jsonl/.csv/.parquet, whole .txt files. Validation: validation_file, "
            "else every source's own validation split, else a held-out tail of the mixture "
            "(then weights above 1 are refused: the tail would repeat training rows)."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    validation_split_percentage: float = field(
        default=5.0,
        metadata={
            "help": "Percent of train held out for validation when no validation set exists."
        },
    )
    block_size: int = field(default=256, metadata={"help": "Tokens per training block (context)."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read, tokenize and pack the text as training goes, each process its own "
            "part (needs max_steps or max_train_minutes); for Hub datasets and files larger than the disk cache "
            "should hold. Validation: the source's split, else its first documents."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Score at most this many validation blocks in periodic evaluations "
            "(the final evaluation always scores the whole split)."
        },
    )
    # Instruction and chat data (TRL's SFT formats, detected from the columns: prompt/completion
    # or messages; see hfmini/sft.py).
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Conversations: a Jinja chat template, as a file path or the template text. "
            "Unset: the model's own, else hfmini's default (<|im_start|>role ... <|im_end|>)."
        },
    )
    completion_only_loss: bool = field(
        default=True,
        metadata={"help": "prompt/completion rows: train on the completion only (as TRL)."},
    )
    assistant_only_loss: bool = field(
        default=True,
        metadata={"help": "messages rows: train on the assistant turns only."},
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "prompt/completion and messages rows: pack several examples into each "
            "sequence of block_size, kept apart by position_ids (attention never crosses "
            "examples); false: one example per sequence, padded."
        },
    )

    def __post_init__(self) -> None:
        if not self.block_size >= 2:
            raise HfminiError(
                "block_size must be at least 2 (a block holds one input token and the target "
                f"after it), got {self.block_size}"
            )
        if not 0 < self.validation_split_percentage < 100:
            raise HfminiError(
                f"validation_split_percentage must be between 0 and 100, got "
                f"{self.validation_split_percentage}"
            )
        if self.preprocessing_num_workers is not None:
            _require_positive(self, "preprocessing_num_workers")
        if self.max_eval_samples is not None:
            _require_positive(self, "max_eval_samples")
        if self.dataset_mixture is not None:
            self._check_mixture()
        if self.validation_file and not (self.train_file or self.dataset_mixture):
            raise HfminiError("validation_file is set but train_file is not: set --train_file too")
        if self.dataset_name and self.train_file:
            raise HfminiError("set either dataset_name or train_file, not both")
        if self.chat_template is not None:
            from hfmini.chat_template import read_chat_template

            read_chat_template(self.chat_template)  # a missing file or bad Jinja: now, not later

    def _check_mixture(self) -> None:
        """dataset_mixture replaces the single-source keys; its entries parse (no data read)."""
        from hfmini.mixture import parse_mixture

        clashing = [
            k for k in ("train_file", "dataset_name", "dataset_config_name") if getattr(self, k)
        ]
        if clashing:
            raise HfminiError(
                f"dataset_mixture and {', '.join(clashing)} both name the training data: keep "
                "one (a mixture entry takes config=NAME for a dataset's configuration)"
            )
        if self.streaming:
            raise HfminiError(
                "streaming does not read a dataset_mixture yet: drop --streaming, or train on "
                "one source"
            )
        parse_mixture(self.dataset_mixture)


@dataclass
class ModelArguments:
    """Where the weights come from: a GPT-2 built from scratch (a preset shape and a tokenizer
    trained on the data), or an existing model to fine-tune, fully or with LoRA adapters."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune this model: a local folder (an hfmini output_dir or checkpoint, "
            "any save_pretrained folder) or a Hub id such as gpt2. Unset: build one from scratch."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "An existing tokenizer folder or Hub id. Unset: model_name_or_path's own "
            "tokenizer, or from scratch a new one trained on the data."
        },
    )
    vocab_size: int | None = field(
        default=None,
        metadata={"help": "Vocabulary size of a tokenizer trained from scratch (default 4096)."},
    )
    tokenizer_train_bytes: int = field(
        default=100_000_000,
        metadata={
            "help": "A tokenizer trained from scratch sees an evenly spread sample of at most "
            "this many bytes of the train split (0: all of it)."
        },
    )
    model_size: str | None = field(
        default=None,
        metadata={"help": "From scratch: nano, micro (default), mini or gpt2-small (124M)."},
    )
    n_layer: int | None = field(default=None, metadata={"help": "Override the preset's depth."})
    n_head: int | None = field(default=None, metadata={"help": "Override the preset's heads."})
    n_embd: int | None = field(default=None, metadata={"help": "Override the preset's width."})
    n_positions: int | None = field(
        default=None, metadata={"help": "Model context from scratch; defaults to block_size."}
    )
    dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout on residuals, embeddings, attention. Default: 0 from scratch, the "
            "model's own when fine-tuning."
        },
    )
    use_peft: bool = field(
        default=False,
        metadata={"help": "Fine-tune LoRA adapters (peft) instead of all the weights."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (alpha / r)."})
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the LoRA input (it slows CPU steps; docs/results.md)."},
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Layer names to adapt. Default: c_attn c_proj c_fc for GPT-2, every linear "
            "layer but the output (all-linear) for other architectures."
        },
    )
    merge_adapters: bool = field(
        default=True,
        metadata={
            "help": "Export LoRA merged into full weights (loads without peft); false: an "
            "adapter folder for peft's AutoPeftModelForCausalLM."
        },
    )

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "lora_r"):
            if getattr(self, name) is not None:
                _require_positive(self, name)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise HfminiError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise HfminiError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.tokenizer_train_bytes < 0:
            raise HfminiError(
                f"tokenizer_train_bytes must be >= 0 (0: the whole train split), got "
                f"{self.tokenizer_train_bytes}"
            )
        if self.model_name_or_path is not None:
            self._check_fine_tuning()
            return
        if self.use_peft:
            raise HfminiError(
                "use_peft adapts an existing model: add --model_name_or_path (a folder or Hub "
                "id), or drop --use_peft to train from scratch"
            )
        # From scratch: the defaults the help names.
        self.model_size = self.model_size or "micro"
        self.vocab_size = self.vocab_size or 4096
        self.dropout = 0.0 if self.dropout is None else self.dropout
        if self.model_size not in MODEL_PRESETS:
            raise HfminiError(
                f"unknown model_size {self.model_size!r}: choose one of {', '.join(MODEL_PRESETS)}"
            )
        if self.tokenizer_name is None and self.vocab_size < MIN_VOCAB_SIZE:
            raise HfminiError(
                f"vocab_size {self.vocab_size} is too small: a byte-level BPE needs at least "
                f"{MIN_VOCAB_SIZE} (256 bytes + <|endoftext|>); raise vocab_size"
            )
        n_head, n_embd = self.shape()[1:]
        if n_embd % n_head:
            raise HfminiError(
                f"n_embd {n_embd} is not divisible by n_head {n_head}: pick n_embd as a "
                f"multiple of n_head (e.g. {n_head * max(1, round(n_embd / n_head))})"
            )

    def _check_fine_tuning(self) -> None:
        """The shape, context and vocabulary are the model's own when starting from weights."""
        if not str(self.model_name_or_path).strip():
            raise HfminiError("model_name_or_path is empty: give a folder or a Hub id")
        clashing = [name for name in FROM_SCRATCH_ONLY if getattr(self, name) is not None]
        if clashing:
            listed = ", ".join(clashing)
            raise HfminiError(
                f"{listed} shape a model built from scratch, but model_name_or_path "
                f"{self.model_name_or_path} brings its own shape and vocabulary: drop {listed}, "
                "or drop model_name_or_path to train from scratch"
            )

    @property
    def from_scratch(self) -> bool:
        return self.model_name_or_path is None

    def shape(self) -> tuple[int, int, int]:
        """(n_layer, n_head, n_embd) of a model built from scratch: the preset with overrides."""
        preset = MODEL_PRESETS[self.model_size or "micro"]
        return (
            self.n_layer or preset["n_layer"],
            self.n_head or preset["n_head"],
            self.n_embd or preset["n_embd"],
        )


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
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Blocks per device."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches summed into one optimizer step."}
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
            "help": "adamw_torch_fused (AdamW, one fused kernel), adamw_torch, or muon: Muon "
            "(torch.optim.Muon, its update scaled to AdamW's size so learning_rate keeps its "
            "meaning) on the hidden weight matrices, AdamW on embeddings, norms and biases."
        },
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's Nesterov momentum."})
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
        default="none", metadata={"help": "wandb, tensorboard, all or none (comma-separated)."}
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
            "help": "auto (on with CUDA; off on MPS; on CPU for runs of 1000+ steps, where the "
            "warm-up pays), true or false."
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
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "sample_max_new_tokens",
        ):
            _require_positive(self, name)
        if self.learning_rate is not None:
            _require_positive(self, "learning_rate")
        for name in ("warmup_steps", "eval_steps", "save_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise HfminiError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise HfminiError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise HfminiError(
                f"max_steps must be positive (or -1 to use num_train_epochs), got {self.max_steps}"
            )
        if self.optim not in OPTIMIZERS:
            raise HfminiError(f"optim {self.optim!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.max_train_minutes < 0:
            raise HfminiError(
                f"max_train_minutes must be >= 0 (0: no time budget), got {self.max_train_minutes}"
            )
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
        known = {"wandb", "tensorboard", "all", "none"}
        for name in self.trackers_requested():
            if name not in known:
                raise HfminiError(
                    f"unknown report_to {name!r}: use one of {', '.join(sorted(known))}"
                )
        if self.hub_strategy not in ("end", "every_save"):
            raise HfminiError(f"hub_strategy must be end or every_save, got {self.hub_strategy!r}")
        if self.push_to_hub and not self.hub_model_id:
            raise HfminiError("push_to_hub needs hub_model_id: add --hub_model_id user/name")

    def device_on(self, cuda: bool, mps: bool) -> str:
        """The device to run on, given what the machine has: "cuda", else "mps" (Apple silicon),
        else "cpu"; use_cpu forces "cpu"."""
        if self.use_cpu:
            return "cpu"
        return "cuda" if cuda else "mps" if mps else "cpu"

    @staticmethod
    def _device_name(device: str | bool) -> str:
        # The methods below once took on_gpu (CUDA or not), and bench.py still passes
        # torch.cuda.is_available(): True meant CUDA, False the CPU.
        if isinstance(device, bool):
            return "cuda" if device else "cpu"
        return device

    def precision_on(self, device: str, bf16_native: bool) -> str:
        """The mixed precision on `device` ("cuda", "mps" or "cpu"); `bf16_native` says whether
        it multiplies bf16 in hardware (CUDA, CPU) or, on MPS, computes bf16 at all (macOS 14+).

        auto is bf16 where native, else fp32 ("no"). On MPS auto is fp32, which every Apple GPU
        computes: whether bf16 or fp16 autocast is faster there depends on the chip, and nothing
        cheap tells, so they are there when asked. fp16 needs a GPU (CUDA or MPS) and bf16 on
        MPS needs macOS 14: asked for where they cannot run, they fall back to fp32."""
        device = self._device_name(device)
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
        device = self._device_name(device)
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


@dataclass
class Config:
    """Everything one run needs; `to_dict()` is what trackers and the model card record."""

    data: DataArguments
    model: ModelArguments
    train: TrainArguments

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.data),
            **dataclasses.asdict(self.model),
            **dataclasses.asdict(self.train),
        }

    def to_flat_dict(self) -> dict[str, str | int | float | bool]:
        """to_dict() with lists joined and None spelled out: TensorBoard's hparams take scalars."""
        return {
            key: ", ".join(map(str, value))
            if isinstance(value, list)
            else ("None" if value is None else value)
            for key, value in self.to_dict().items()
        }

    def __post_init__(self) -> None:
        """Checks that span two argument groups; run for a Config built in Python too."""
        if self.train.learning_rate is None:
            self.train.learning_rate = DEFAULT_LEARNING_RATES[self.training_kind()]
        # Fine-tuning: the model's own context is checked against block_size once it is read.
        if self.model.from_scratch and self.data.block_size > self.context_length():
            raise HfminiError(
                f"block_size {self.data.block_size} is above the model's context n_positions "
                f"{self.context_length()}: lower block_size or raise n_positions"
            )
        if self.data.streaming and self.train.max_steps <= 0 and not self.train.max_train_minutes:
            raise HfminiError(
                "streaming reads the data as training goes, so its length is unknown: set "
                "max_steps (the run's length in optimizer steps) or max_train_minutes"
            )

    def context_length(self) -> int:
        """The context of a model built from scratch."""
        return self.model.n_positions or self.data.block_size

    def training_kind(self) -> str:
        """scratch, full (fine-tuning every weight) or lora."""
        if self.model.from_scratch:
            return "scratch"
        return "lora" if self.model.use_peft else "full"

    def tokens_per_step(self, num_processes: int) -> int:
        """Tokens per optimizer step over all processes and accumulation micro-batches."""
        args = self.train
        return (
            args.per_device_train_batch_size
            * self.data.block_size
            * args.gradient_accumulation_steps
            * num_processes
        )

    def run_length(self, batches_per_epoch: int) -> RunLength:
        """The run's bounds: max_steps (or, with no time budget, epochs) and max_train_minutes."""
        from hfmini.budget import RunLength

        args = self.train
        budget = args.max_train_minutes * 60 if args.max_train_minutes else None
        steps = None
        if args.max_steps > 0 or budget is None:
            steps = self.total_train_steps(batches_per_epoch)
        return RunLength(total_steps=steps, budget_seconds=budget)

    def total_train_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps the run will take: max_steps, or epochs over the sharded data."""
        if self.train.max_steps > 0:
            return self.train.max_steps
        steps_per_epoch = math.ceil(batches_per_epoch / self.train.gradient_accumulation_steps)
        return max(1, math.ceil(self.train.num_train_epochs * steps_per_epoch))


ARG_GROUPS = (DataArguments, ModelArguments, TrainArguments)


def known_keys() -> list[str]:
    return [f.name for group in ARG_GROUPS for f in dataclasses.fields(group)]


def _require_positive(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not value > 0:
        raise HfminiError(f"{name} must be positive, got {value}")


def _unknown_key_error(key: str, where: str) -> HfminiError:
    nearest = difflib.get_close_matches(key, known_keys(), n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else "; run with --help to list the keys"
    return HfminiError(f"unknown config key {key!r} {where}{hint}")


def read_yaml(path: str | Path, name: str, fix: str):
    """The values of a YAML file; one that is not UTF-8 or not YAML is a one-line error naming the
    file as `name` and ending in `fix`."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise HfminiError(
            f"{name} is not UTF-8 text (byte {err.object[err.start]:#04x} at position "
            f"{err.start}): {fix}"
        ) from None
    except yaml.YAMLError as err:
        first_line = str(err).splitlines()[0]
        raise HfminiError(f"{name} is not valid YAML ({first_line}): {fix}") from None


def _yaml_to_argv(path: str) -> list[str]:
    """Turn a flat YAML file into `--key value` strings so argparse type-checks them too."""
    if not os.path.isfile(path):
        raise HfminiError(f"config file {path!r} not found: check the path given to --config")
    values = read_yaml(path, f"config file {path}", "save it as UTF-8 YAML") or {}
    if not isinstance(values, dict):
        raise HfminiError(f"config file {path} must be a flat mapping of key: value")
    return _values_to_argv(values, f"in {path}")


def _values_to_argv(values: dict, where: str) -> list[str]:
    keys = set(known_keys())
    argv: list[str] = []
    for key, value in values.items():
        if key not in keys:
            raise _unknown_key_error(str(key), where)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        argv.append(f"--{key}")
        argv.extend(str(v).lower() if isinstance(v, bool) else str(v) for v in items)
    return argv


def make_parser():
    """The HfArgumentParser over all three groups; shared by the CLI, the recipe and tests."""
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        def error(self, message: str):  # argparse would print usage and exit; we want one line
            raise HfminiError(f"{message} (see --help)")

    parser = _Parser(ARG_GROUPS, prog="hfmini train")
    parser.add_argument("--config", default=None, help="A flat YAML file of key: value.")
    return parser


def _check_cli_keys(argv: list[str]) -> None:
    keys = set(known_keys()) | {"config", "help"}
    for token in argv:
        if token.startswith("--"):
            # HfArgumentParser also registers dash forms (--max-steps), and --help lists them.
            key = token[2:].split("=", 1)[0].replace("-", "_")
            if key not in keys:
                raise _unknown_key_error(key, "on the command line")


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse `[--config FILE] [--key value ...]` into a validated Config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _check_cli_keys(argv)
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise HfminiError("--config needs a YAML file path")
        config_path = argv[index + 1]
        del argv[index : index + 2]
    else:
        for token in argv:
            if token.startswith("--config="):
                config_path = token.split("=", 1)[1]
                argv.remove(token)
                break
    yaml_argv = _yaml_to_argv(config_path) if config_path else []
    parser = make_parser()
    # argparse keeps the last occurrence of a flag, so command-line values override the YAML.
    namespace, remaining = parser.parse_known_args(yaml_argv + argv)
    if remaining:
        raise HfminiError(f"unexpected arguments {' '.join(remaining)} (see --help)")
    values = vars(namespace)
    values.pop("config", None)
    groups = []
    for group in ARG_GROUPS:
        names = {f.name for f in dataclasses.fields(group) if f.init}
        groups.append(group(**{k: v for k, v in values.items() if k in names}))
    return Config(*groups)


def make_config(config_file: str | Path | None = None, **values: Any) -> Config:
    """A Config from Python: `make_config(model_size="micro", max_steps=200)`, optionally on top of
    a recipe (`make_config("recipes/tiny/config.yaml", max_steps=50)`). The keys and checks are
    exactly those of the YAML and the command line: the values go through the same parser."""
    argv = ["--config", str(config_file)] if config_file is not None else []
    return parse_config(argv + _values_to_argv(values, "passed to make_config"))


def reference_markdown() -> str:
    """docs/configuration.md: every key with its default and help, from the dataclasses alone."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the dataclasses in `hfmini/config.py` by `make docs`; a test checks that",
        "it is current. Precedence: command line > YAML (`--config`) > these defaults.",
    ]
    for group in ARG_GROUPS:
        lines += ["", f"## {group.__name__}", "", " ".join((group.__doc__ or "").split()), ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(group):
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            meaning = f.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{default!r}` | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m hfmini.config > docs/configuration.md
    sys.stdout.write(reference_markdown())
