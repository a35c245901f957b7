"""ModelArguments: a GPT-2 built from scratch from a preset, or existing weights to fine-tune."""

from __future__ import annotations

from dataclasses import dataclass, field

from hfmini.config.checks import require_positive
from hfmini.config.defaults import FROM_SCRATCH_ONLY, MIN_VOCAB_SIZE, MODEL_PRESETS
from hfmini.errors import HfminiError


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
                require_positive(self, name)
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
