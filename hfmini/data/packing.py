"""Examples → sequences of at most block_size tokens, and the batches the model takes.

    tokenized rows (sft.py: input_ids, answer_mask) ─► flat token / label-mask tensors ─►
    pack_examples (best-fit decreasing, or one example a sequence) ─► SequenceDataset ─►
    pad_sequences (a batch: input_ids, labels, position_ids, each (B, T))

Packed examples are kept apart by their position ids, which restart at 0 for each example: given
no attention_mask and no KV cache, transformers turns that into a block-diagonal causal mask
(eager and sdpa; flash-attention takes the restarts as varlen boundaries), so no token attends
across examples, and the first token of an example is never a label. The cost: sdpa runs with an
explicit mask instead of its is_causal path.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from hfmini.data.tokens import flat_tokens, row_lengths
from hfmini.data.training_data import InMemoryData
from hfmini.errors import HfminiError

IGNORE_INDEX = -100  # labels transformers' loss skips


def pack_examples(lengths: np.ndarray, block_size: int, packing: bool) -> list[list[int]]:
    """Example indices per sequence. Packing: best-fit decreasing (each example, longest first,
    goes where it leaves the least room), which fills sequences to within a few tokens. Costs
    O(n log n) plus a list insertion per example."""
    if not packing:
        return [[i] for i in range(len(lengths))]
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, bin index), sorted
    for index in np.argsort(-lengths, kind="stable").tolist():
        need = int(lengths[index])
        at = bisect.bisect_left(room, (need, -1))
        if at < len(room):
            free, b = room.pop(at)
        else:
            free, b = block_size, len(bins)
            bins.append([])
        bins[b].append(index)
        if free - need > 0:
            bisect.insort(room, (free - need, b))
    return bins


class SequenceDataset(torch.utils.data.Dataset):
    """Sequence k: its examples' tokens one after another, as {"input_ids", "labels",
    "position_ids"}: (T,) int64 each, T ≤ block_size.

    Labels are the tokens where `trained` marks them, else IGNORE_INDEX; an example's first token
    is never a label (it would be predicted from the example before it)."""

    def __init__(self, tokens, trained, starts, lengths, sequences):
        self.tokens = tokens  # (n_tokens,) int32: all examples, concatenated
        self.trained = trained  # (n_tokens,) bool
        self.starts = starts  # (n_examples,) int64: where each example begins in `tokens`
        self.lengths = lengths  # (n_examples,) int64: tokens kept (truncated to block_size)
        self.sequences = sequences  # example indices per sequence

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        ids, labels, positions = [], [], []
        for i in self.sequences[k]:
            start, length = int(self.starts[i]), int(self.lengths[i])
            piece = self.tokens[start : start + length].long()
            label = torch.where(self.trained[start : start + length], piece, IGNORE_INDEX)
            label[0] = IGNORE_INDEX
            ids.append(piece)
            labels.append(label)
            positions.append(torch.arange(length))
        return {
            "input_ids": torch.cat(ids),
            "labels": torch.cat(labels),
            "position_ids": torch.cat(positions),
        }


def pad_sequences(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: (B, T). Padding is never a label, and its position ids go
    on counting from the last example's, so it starts no example of its own: a batch of single
    examples then keeps attention's plain causal path. (Causal attention means real tokens never
    see the padding after them.)"""
    longest = max(row["input_ids"].numel() for row in rows)
    batch = {name: [] for name in ("input_ids", "labels", "position_ids")}
    for row in rows:
        pad = longest - row["input_ids"].numel()
        last = int(row["position_ids"][-1])
        batch["input_ids"].append(torch.cat([row["input_ids"], torch.full((pad,), pad_id)]))
        batch["labels"].append(torch.cat([row["labels"], torch.full((pad,), IGNORE_INDEX)]))
        batch["position_ids"].append(
            torch.cat([row["position_ids"], torch.arange(last + 1, last + 1 + pad)])
        )
    return {name: torch.stack(values) for name, values in batch.items()}


@dataclass
class ExampleValidation:
    """Validation sequences scored in padded batches: their labels (the answers) only."""

    sequences: SequenceDataset
    pad_id: int

    def units(self) -> list[int]:
        return list(range(len(self.sequences)))

    def batches(self, units: list, batch_size: int) -> list[list]:
        return [units[i : i + batch_size] for i in range(0, len(units), batch_size)]

    def batch(self, group: list[int]) -> dict[str, torch.Tensor]:
        return pad_sequences([self.sequences[k] for k in group], self.pad_id)


@dataclass
class PreparedExamples(InMemoryData):
    """Training and validation sequences of prompt-completion or conversational examples (a
    TrainingData, see training_data.py)."""

    train_sequences: SequenceDataset  # labels: what the loss covers (answers, or everything)
    eval_sequences: SequenceDataset  # labels: the answers, always
    block_size: int
    format: str
    pad_id: int
    train_bytes: int  # UTF-8 bytes of the training tokens
    truncated_examples: int  # longer than block_size, cut
    dropped_train_tokens: int  # cut off by truncation

    @property
    def num_train_blocks(self) -> int:
        return len(self.train_sequences)

    @property
    def train_tokens(self) -> torch.Tensor:
        return self.train_sequences.tokens

    @property
    def eval_tokens(self) -> torch.Tensor:
        return self.eval_sequences.tokens

    @property
    def validation(self) -> ExampleValidation:
        return ExampleValidation(self.eval_sequences, self.pad_id)

    def train_dataset(self) -> SequenceDataset:
        return self.train_sequences

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return pad_sequences(rows, self.pad_id)

    def fingerprint(self) -> str:
        """A hash of the tokens, labels and sequences of both splits, to tell data apart."""
        digest = hashlib.sha256(self.format.encode())
        for part in (self.train_sequences, self.eval_sequences):
            for array in (part.tokens, part.trained, part.lengths):
                digest.update(array.numpy().tobytes())
            digest.update(repr(part.sequences).encode())
        return digest.hexdigest()[:16]


def sequences_of(tokenized, block_size: int, packing: bool, answers_only: bool, split: str):
    """A tokenized split as a SequenceDataset; returns (dataset, truncated examples, tokens cut)."""
    tokens = flat_tokens(tokenized)
    answer = flat_tokens(tokenized, "answer_mask", torch.bool)
    full_lengths = row_lengths(tokenized)
    if len(full_lengths) == 0:
        raise HfminiError(f"the {split} split has no examples: add rows")
    starts = np.concatenate([[0], np.cumsum(full_lengths)[:-1]])
    lengths = np.minimum(full_lengths, block_size)
    trained = answer if answers_only else torch.ones_like(answer)
    dataset = SequenceDataset(
        tokens,
        trained,
        torch.from_numpy(starts),
        torch.from_numpy(lengths),
        pack_examples(lengths, block_size, packing),
    )
    kept_answers = sum(
        bool(answer[s : s + n].any())
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)
    )
    if kept_answers == 0:
        raise HfminiError(
            f"every {split} example's answer lies beyond block_size {block_size}: raise block_size"
        )
    return dataset, int((full_lengths > block_size).sum()), int((full_lengths - lengths).sum())
