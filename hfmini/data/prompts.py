"""Prompt-only rows (TRL's prompt-only formats), the data of GRPO → token ids → batches of prompts.

    load_raw (sources.py) ─► check_prompt_rows (a bad row is one line naming its file and row)
    ─► [hold out validation rows] ─► tokenizer + chat template ─► tokenize_prompts (batched
    map, cached): each prompt's ids, cut from the left to leave max_completion_length of the
    block ─► PreparedPrompts: batches of left-padded prompts (b, Tp), b = B / num_generations

Formats, as TRL names them, detected from the columns (a `prompt` and no answer column):
    standard         prompt (a string)          bos + the prompt: the text to continue
    conversational   prompt (a message list)    the chat template with its generation prompt

Every other column of a row goes to the reward functions beside the completions, as TRL passes
them (`**kwargs`: one value per completion). With num_iterations above 1, each window of an
optimizer step's prompts comes round num_iterations times (TRL's RepeatSampler): the objective
samples on the first pass and reuses those completions on the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hfmini.data.packing import ExampleValidation, SequenceDataset
from hfmini.data.readers import row_location
from hfmini.data.sft import _clean, _message_problem
from hfmini.data.tokens import flat_tokens, row_lengths, tokenizer_fingerprint
from hfmini.data.training_data import InMemoryData
from hfmini.errors import HfminiError

PROMPT_FORMAT = "prompt_only"
ANSWER_COLUMNS = ("completion", "chosen", "rejected", "messages")


def is_prompt_only(columns: list[str]) -> bool:
    """Rows with a prompt and no answer: what GRPO samples answers for."""
    return "prompt" in columns and not any(name in columns for name in ANSWER_COLUMNS)


def prompt_problem(prompt: Any) -> str | None:
    """What is wrong with one row's prompt, or None."""
    if prompt is None:
        return "the prompt is missing"
    if isinstance(prompt, str):
        return None if prompt.strip() else "the prompt is empty"
    if isinstance(prompt, list):
        problem = _message_problem(prompt, "the prompt")
        if problem:
            return problem
        return None if prompt else "the prompt holds no message"
    return f"the prompt must be text or a list of messages, got a {type(prompt).__name__}"


def check_prompt_rows(raw, origins: dict) -> bool:
    """The first bad prompt of any split as a one-line error naming its file and row. Returns
    whether the prompts are conversations (message lists)."""
    conversational = None
    for split, ds in raw.items():
        for number, row in enumerate(ds.select_columns(["prompt"])):
            problem = prompt_problem(row["prompt"])
            if problem is None and conversational is not None:
                if isinstance(row["prompt"], list) != conversational:
                    problem = "prompts must be all text or all message lists, not a mix"
            if problem is None:
                conversational = isinstance(row["prompt"], list)
                continue
            raise HfminiError(
                f"{row_location(origins, split, number)}: {problem}: fix or remove the row"
            )
    return bool(conversational)


def prompt_text_batch(batch: dict) -> dict:
    """Every prompt text of a batch of rows, for training a tokenizer."""
    texts = []
    for value in batch.get("prompt") or []:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(m.get("content") or "" for m in value if isinstance(m, dict))
    return {"text": texts}


def prompt_ids(tokenizer, prompt) -> list[int]:
    """A prompt as the model continues it: a conversation rendered with the generation prompt
    (the assistant's turn begins), a text after bos (documents start after <|endoftext|>)."""
    if isinstance(prompt, list):
        encoded = tokenizer.apply_chat_template(
            _clean(prompt), tokenize=True, return_dict=True, add_generation_prompt=True
        )
        return list(encoded["input_ids"])
    return [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def _encode_prompts(batch: dict, tokenizer, max_prompt: int) -> dict:
    ids_column, cut_column = [], []
    for prompt in batch["prompt"]:
        ids = prompt_ids(tokenizer, prompt)
        cut_column.append(max(0, len(ids) - max_prompt))
        ids_column.append(ids[-max_prompt:])  # the end of a long prompt leads to the answer
    return {"input_ids": ids_column, "cut": cut_column}


def tokenize_prompts(splits, tokenizer, max_prompt: int, num_proc):
    """Each prompt's input_ids (int32, its last max_prompt tokens) and the tokens cut. Batched,
    cached."""
    from datasets import DatasetDict, Features, Sequence, Value

    key = f"{tokenizer_fingerprint(tokenizer)}-{tokenizer.chat_template}-{max_prompt}-prompts-v1"
    out = {}
    for split, ds in splits.items():
        out[split] = ds.select_columns(["prompt"]).map(
            _encode_prompts,
            batched=True,
            batch_size=256,
            fn_kwargs={"tokenizer": tokenizer, "max_prompt": max_prompt},
            remove_columns=["prompt"],
            features=Features({"input_ids": Sequence(Value("int32")), "cut": Value("int64")}),
            num_proc=num_proc,
            new_fingerprint=hashlib.sha256(f"{ds._fingerprint}-{key}".encode()).hexdigest()[:16],
            desc=f"Tokenizing {split} prompts",
        )
    return DatasetDict(out)


class PromptSet(torch.utils.data.Dataset):
    """The prompts of one split: their token ids, and each row as the reward functions see it
    (the prompt as given and every other column)."""

    def __init__(self, tokenized, rows) -> None:
        self.tokens = flat_tokens(tokenized)  # (n_tokens,) int32: every prompt, concatenated
        self.lengths = torch.from_numpy(row_lengths(tokenized))  # (n,)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.int64), self.lengths.cumsum(0)[:-1]])
        self.rows = rows  # the split's rows as loaded (a datasets.Dataset)
        self.cut = int(np.asarray(tokenized.with_format("arrow")[:]["cut"]).sum())

    def __len__(self) -> int:
        return len(self.lengths)

    def ids(self, k: int) -> torch.Tensor:
        start = int(self.starts[k])
        return self.tokens[start : start + int(self.lengths[k])].long()

    def __getitem__(self, k: int) -> dict[str, Any]:
        return {"input_ids": self.ids(k), "index": k}

    def columns(self, indices: list[int]) -> dict[str, list]:
        """The rows' columns as lists, one value per row: `prompt` and every other column."""
        picked = self.rows.select(indices)
        return {name: picked[name] for name in picked.column_names}

    def as_sequences(self) -> SequenceDataset:
        """The prompts as scored sequences (every token after the first a label): the held-out
        prompts' bits per byte show whether the policy still models the text it is asked about."""
        trained = torch.ones(self.tokens.numel(), dtype=torch.bool)
        groups = [[k] for k in range(len(self))]
        return SequenceDataset(self.tokens, trained, self.starts, self.lengths, groups)


class RepeatedPrompts(torch.utils.data.Dataset):
    """A PromptSet seen `iterations` times: item iteration × N + k is prompt k on that pass."""

    def __init__(self, prompts: PromptSet, iterations: int) -> None:
        self.prompts, self.iterations = prompts, iterations

    def __len__(self) -> int:
        return len(self.prompts) * self.iterations

    def __getitem__(self, k: int) -> dict[str, Any]:
        iteration, index = divmod(k, len(self.prompts))
        return {**self.prompts[index], "iteration": iteration}


class WindowSampler(torch.utils.data.Sampler):
    """An epoch's shuffled prompts in windows of one optimizer step's (`window` prompts over
    every micro-batch and process), each window given `iterations` times in a row (indices of
    RepeatedPrompts). The last partial window is dropped. Its order depends on the seed and
    the epoch only (set_epoch), so a resumed run reads what the unbroken run read."""

    def __init__(self, size: int, window: int, iterations: int, seed: int) -> None:
        self.size, self.window, self.iterations, self.seed = size, window, iterations, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.size // self.window) * self.window * self.iterations

    def __iter__(self):
        order = torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()
        for start in range(0, self.size - self.window + 1, self.window):
            chunk = order[start : start + self.window]
            for iteration in range(self.iterations):
                yield from (iteration * self.size + k for k in chunk)


def collate_prompts(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """b prompts left-padded to the longest, so every completion starts at the same column:
    prompt_ids and prompt_mask (b, Tp), prompt_index and iteration (b,)."""
    longest = max(row["input_ids"].numel() for row in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), longest), dtype=torch.int64)
    for i, row in enumerate(rows):
        n = row["input_ids"].numel()
        ids[i, longest - n :] = row["input_ids"]
        mask[i, longest - n :] = 1
    return {
        "prompt_ids": ids,
        "prompt_mask": mask,
        "prompt_index": torch.tensor([row["index"] for row in rows], dtype=torch.int64),
        "iteration": torch.tensor([row.get("iteration", 0) for row in rows], dtype=torch.int64),
    }


@dataclass
class PreparedPrompts(InMemoryData):
    """Training and held-out prompts for GRPO (a TrainingData, see training_data.py). Batches
    hold per_device_train_batch_size / num_generations prompts: the objective samples
    num_generations completions of each."""

    train_prompts: PromptSet
    eval_prompts: PromptSet
    block_size: int  # prompt + completion at most
    pad_id: int
    train_bytes: int  # UTF-8 bytes of the training prompts' tokens
    num_generations: int
    num_iterations: int
    # Prompts of one optimizer step on one process: gradient_accumulation_steps batches.
    accumulation: int
    conversational: bool
    dropped_train_tokens: int = 0  # prompt tokens cut from the left
    format: str = PROMPT_FORMAT

    @property
    def num_train_blocks(self) -> int:
        return len(self.train_prompts)

    @property
    def train_tokens(self) -> torch.Tensor:
        return self.train_prompts.tokens

    @property
    def eval_tokens(self) -> torch.Tensor:
        return self.eval_prompts.tokens

    @property
    def validation(self) -> ExampleValidation:
        return ExampleValidation(self.eval_prompts.as_sequences(), self.pad_id)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return collate_prompts(rows, self.pad_id)

    def train_loader(self, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
        """Batches of batch_size / num_generations prompts (batch_size counts completions),
        windows of an optimizer step repeated num_iterations times. Accelerate deals the
        batches to the processes in turn, so a window spans every process's micro-batches."""
        from accelerate import PartialState

        prompts = batch_size // self.num_generations
        window = prompts * self.accumulation * PartialState().num_processes
        if len(self.train_prompts) < window:
            raise HfminiError(
                f"the train split has {len(self.train_prompts)} prompts, fewer than one optimizer "
                f"step's {window} (per_device_train_batch_size / num_generations × "
                "gradient_accumulation_steps × processes): add prompts or lower the batch"
            )
        sampler = WindowSampler(len(self.train_prompts), window, self.num_iterations, seed)
        return torch.utils.data.DataLoader(
            RepeatedPrompts(self.train_prompts, self.num_iterations),
            batch_size=prompts,
            sampler=sampler,
            collate_fn=self.collate,
            drop_last=True,
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.format.encode())
        for part in (self.train_prompts, self.eval_prompts):
            for array in (part.tokens, part.lengths):
                digest.update(array.numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"data: {len(self.train_prompts)} prompts, {len(self.eval_prompts)} held out; "
            f"{self.num_generations} completions each, prompt + completion at most "
            f"{self.block_size} tokens"
        )
