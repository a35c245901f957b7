"""DataArguments: where the text comes from and how it becomes blocks of token ids."""

from __future__ import annotations

from dataclasses import dataclass, field

from hfmini.config.chat_template_option import read_chat_template
from hfmini.config.checks import require_positive
from hfmini.config.mixture import parse_mixture
from hfmini.errors import HfminiError


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
    # or messages; see hfmini/data/sft.py).
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
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "preference rows (prompt, chosen, rejected): tokens of prompt + answer at "
            "most; an answer is cut from the right to fit. Default: block_size."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "preference and GRPO prompt rows: a longer prompt keeps its last this many "
            "tokens (cut from the left, as TRL). Default: preference pairs, no cut (a pair whose "
            "prompt leaves no room for an answer is dropped and counted in the log); GRPO, "
            "block_size - max_completion_length, which also bounds it."
        },
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
        for name in ("max_length", "max_prompt_length"):
            if getattr(self, name) is not None:
                require_positive(self, name)
        if self.max_length is not None and self.max_length > self.block_size:
            raise HfminiError(
                f"max_length {self.max_length} is above block_size {self.block_size}, the "
                "longest sequence a batch holds: lower max_length or raise block_size"
            )
        if self.max_prompt_length is not None and self.max_prompt_length >= self.pair_length:
            raise HfminiError(
                f"max_prompt_length {self.max_prompt_length} leaves no room for an answer in "
                f"max_length {self.pair_length}: lower max_prompt_length"
            )
        if self.preprocessing_num_workers is not None:
            require_positive(self, "preprocessing_num_workers")
        if self.max_eval_samples is not None:
            require_positive(self, "max_eval_samples")
        if self.dataset_mixture is not None:
            self._check_mixture()
        if self.validation_file and not (self.train_file or self.dataset_mixture):
            raise HfminiError("validation_file is set but train_file is not: set --train_file too")
        if self.dataset_name and self.train_file:
            raise HfminiError("set either dataset_name or train_file, not both")
        if self.chat_template is not None:
            read_chat_template(self.chat_template)  # a missing file or bad Jinja: now, not later

    @property
    def pair_length(self) -> int:
        """Preference rows: the most tokens of prompt + answer (max_length, or block_size)."""
        return self.max_length or self.block_size

    def _check_mixture(self) -> None:
        """dataset_mixture replaces the single-source keys; its entries parse (no data read)."""
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
