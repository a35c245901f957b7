"""Plain text for language modelling: one flat token stream per split, the training stream cut into
blocks of block_size. Packing is a view of the flat stream: only the final partial block of the
training split is dropped (and counted).

Validation scores the whole stream in non-overlapping blocks of block_size, the tail too if it
holds at least two tokens; in each block every token after the first is predicted from the ones
before it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from hfmini.data.training_data import TEXT_FORMAT, InMemoryData
from hfmini.errors import HfminiError


def pack(tokens: torch.Tensor, block_size: int, split: str) -> tuple[torch.Tensor, int]:
    """Trim a flat stream to whole blocks; returns (trimmed tokens, dropped token count)."""
    n_blocks = tokens.numel() // block_size
    if n_blocks == 0:
        raise HfminiError(
            f"the {split} split has {tokens.numel()} tokens, fewer than one block of {block_size}: "
            f"lower block_size or add text"
        )
    return tokens[: n_blocks * block_size], tokens.numel() - n_blocks * block_size


class BlockDataset(torch.utils.data.Dataset):
    """Block i of a flat token tensor as {"input_ids": (block_size,) int64}."""

    def __init__(self, tokens: torch.Tensor, block_size: int):
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return self.tokens.numel() // self.block_size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * self.block_size
        return {"input_ids": self.tokens[start : start + self.block_size].long()}


def block_ranges(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """[start, end) of each non-overlapping block; a tail shorter than 2 tokens is skipped."""
    starts = range(0, n_tokens, block_size)
    return [
        (s, min(s + block_size, n_tokens)) for s in starts if min(s + block_size, n_tokens) - s >= 2
    ]


def group_blocks(ranges: list[tuple[int, int]], block_size: int, batch_size: int) -> list[list]:
    """Full blocks in batches of `batch_size`; the short tail (if any) alone."""
    full = [r for r in ranges if r[1] - r[0] == block_size]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    return groups + [[r] for r in ranges if r[1] - r[0] != block_size]


@dataclass
class TokenValidation:
    """A validation token stream, scored in blocks: every token after a block's first a label."""

    tokens: torch.Tensor  # (n,)
    block_size: int

    def units(self) -> list[tuple[int, int]]:
        return block_ranges(self.tokens.numel(), self.block_size)

    def batches(self, units: list, batch_size: int) -> list[list]:
        return group_blocks(units, self.block_size, batch_size)

    def batch(self, group: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([self.tokens[s:e] for s, e in group]).long()  # (B, T)
        return {"input_ids": input_ids, "labels": input_ids}


@dataclass
class PreparedData(InMemoryData):
    """Training blocks and the validation stream, as views into flat int32 token tensors
    (a TrainingData, see training_data.py)."""

    format: ClassVar[str] = TEXT_FORMAT

    # Memory-mapped token files (uint16, or int32 for vocabularies over 65,536), see token_file.
    train_tokens: torch.Tensor  # (n_train_blocks * block_size,)
    eval_tokens: torch.Tensor  # (n_validation_tokens,); scored in blocks, tail included
    block_size: int
    dropped_train_tokens: int  # the final partial block, not trained on
    train_bytes: int  # UTF-8 bytes of training text, for throughput figures

    @property
    def num_train_blocks(self) -> int:
        return self.train_tokens.numel() // self.block_size

    @property
    def validation(self) -> TokenValidation:
        return TokenValidation(self.eval_tokens, self.block_size)

    def train_dataset(self) -> BlockDataset:
        return BlockDataset(self.train_tokens, self.block_size)

    def fingerprint(self) -> str:
        """A hash of both token streams as int32, to tell data apart on resume. One pass over the
        tokens, a slice at a time (memory stays flat; about a second per GB of tokens)."""
        digest = hashlib.sha256()
        step = 1 << 24
        for tokens in (self.train_tokens, self.eval_tokens):
            for start in range(0, tokens.numel(), step):
                digest.update(tokens[start : start + step].to(torch.int32).numpy().tobytes())
        return digest.hexdigest()[:16]
