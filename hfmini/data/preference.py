"""Preference pairs (TRL's preference formats) → token ids → batches of chosen and rejected.

    load_raw (sources.py) ─► check_pair_rows (a bad row is one line naming its file and row)
    ─► [hold out validation rows] ─► tokenizer + chat template ─► tokenize_pairs (batched map,
    cached): two rows per pair, prompt + chosen and prompt + rejected, answer_mask on the
    answers, cut to fit ─► PreparedPairs: batches (2B, T), the B chosen rows then the B rejected

Formats, as TRL names them, detected from the columns:
    standard         prompt, chosen, rejected (strings)       prompt + answer + eos
    conversational   prompt, chosen, rejected (message lists) the model's chat template
    implicit prompt  chosen, rejected only                    the shared beginning is the prompt

Tokenized as TRL's DPOTrainer does, so that both give the same tokens: prompt + answer as one
text (a conversation rendered whole), the answer being what follows the longest common prefix
with the prompt alone. Cut as TRL does: the prompt keeps its last max_prompt_length tokens, then
prompt + answer its first max_length; a pair whose prompt leaves no room is dropped (counted).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hfmini.data.packing import ExampleValidation, SequenceDataset, pad_sequences
from hfmini.data.readers import row_location
from hfmini.data.sft import _clean, _message_problem
from hfmini.data.tokens import flat_tokens, row_lengths, tokenizer_fingerprint
from hfmini.data.training_data import InMemoryData
from hfmini.errors import HfminiError

PREFERENCE_FORMAT = "preference"
ANSWERS = ("chosen", "rejected")


def sequences_per_row(data_format: str) -> int:
    """Sequences a training row puts through the model: a pair's two, else one."""
    return 2 if data_format == PREFERENCE_FORMAT else 1


def is_preference(columns: list[str]) -> bool:
    """Rows with chosen and rejected answers; one without the other is an error."""
    has = [name for name in ANSWERS if name in columns]
    if len(has) == 1:
        other = "rejected" if has[0] == "chosen" else "chosen"
        raise HfminiError(
            f"the data has a {has[0]!r} column but no {other!r}: preference rows need both "
            "(the preferred answer and the other one)"
        )
    return len(has) == 2


def extract_prompt(row: dict) -> dict:
    """An implicit-prompt row split as TRL's extract_prompt does: the longest shared beginning
    of chosen and rejected (whole messages, or characters less a trailing space) is the prompt."""
    chosen, rejected = row["chosen"], row["rejected"]
    index = min(len(chosen), len(rejected))
    for index in range(min(len(chosen), len(rejected))):
        if chosen[index] != rejected[index]:
            if index and chosen[index - 1] == " ":  # the space goes with the answer
                index -= 1
            break
    return {"prompt": chosen[:index], "chosen": chosen[index:], "rejected": rejected[index:]}


def pair_problem(row: dict) -> str | None:
    """What is wrong with one preference row (its prompt already extracted), or None."""
    values = {name: row.get(name) for name in ("prompt", *ANSWERS)}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    kinds = {type(value) for value in values.values()}
    if kinds == {str}:
        for name in ANSWERS:
            if not values[name].strip():
                return f"the {name} answer is empty"
    elif kinds == {list}:
        for name, value in values.items():
            problem = _message_problem(value, name)
            if problem:
                return problem
        for name in ANSWERS:
            if not values[name]:
                return f"the {name} answer holds no message"
            if not any(m["content"].strip() for m in values[name]):
                return f"the {name} answer is empty"
    else:
        shown = ", ".join(f"{name} is a {type(v).__name__}" for name, v in values.items())
        return f"prompt, chosen and rejected must be all text or all message lists, got {shown}"
    if values["chosen"] == values["rejected"]:
        return "chosen and rejected are the same answer, so there is no preference to learn"
    return None


def with_prompt(row: dict) -> dict:
    return row if row.get("prompt") is not None else extract_prompt(row)


def check_pair_rows(raw, origins: dict) -> bool:
    """The first bad row of any split as a one-line error naming its file and row. Returns
    whether the rows are conversations (message lists)."""
    conversational = None
    for split, ds in raw.items():
        columns = [name for name in ("prompt", *ANSWERS) if name in ds.column_names]
        for number, row in enumerate(ds.select_columns(columns)):
            problem = pair_problem(with_prompt(row))
            if problem is None:
                conversational = isinstance(row["chosen"], list)
                continue
            raise HfminiError(
                f"{row_location(origins, split, number)}: {problem}: fix or remove the row"
            )
    return bool(conversational)


def pair_text_batch(batch: dict) -> dict:
    """Every prompt and answer text of a batch of rows, for training a tokenizer."""
    texts = []
    for name in ("prompt", *ANSWERS):
        for value in batch.get(name) or []:
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts.extend(m.get("content") or "" for m in value if isinstance(m, dict))
    return {"text": texts}


def _ids(tokenizer, value, generation_prompt: bool = False) -> list[int]:
    if isinstance(value, list):
        encoded = tokenizer.apply_chat_template(
            _clean(value),
            tokenize=True,
            return_dict=True,
            add_generation_prompt=generation_prompt,
        )
        return list(encoded["input_ids"])
    return tokenizer(value)["input_ids"]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(row: dict, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids, as TRL's DPOTrainer makes them."""
    row = with_prompt(row)
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if isinstance(prompt, str):  # text answers end on eos, as generation should
        eos = tokenizer.eos_token
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
    prompt_ids = _ids(tokenizer, prompt, generation_prompt=True)
    with_chosen = _ids(tokenizer, prompt + chosen)
    with_rejected = _ids(tokenizer, prompt + rejected)
    # The answer starts where the tokenized prompt and prompt + answer part (a token may merge
    # across the boundary).
    shared = min(
        common_prefix_length(prompt_ids, with_chosen),
        common_prefix_length(prompt_ids, with_rejected),
    )
    return prompt_ids[:shared], with_chosen[shared:], with_rejected[shared:]


def fit_pair(prompt: list[int], answers: list[list[int]], max_length: int, max_prompt: int | None):
    """The pair cut to fit, or None when the prompt leaves no room for an answer token.
    Returns (prompt, answers, tokens cut)."""
    cut = 0
    if max_prompt is not None and len(prompt) > max_prompt:
        cut += len(prompt) - max_prompt
        prompt = prompt[-max_prompt:]
    if len(prompt) >= max_length:
        return None
    room = max_length - len(prompt)
    cut += sum(max(0, len(a) - room) for a in answers)
    return prompt, [a[:room] for a in answers], cut


def _encode_pairs(batch: dict, tokenizer, max_length: int, max_prompt: int | None) -> dict:
    ids_column, mask_column, cut_column = [], [], []
    columns = list(batch)
    for offset in range(len(batch[columns[0]])):
        row = {c: batch[c][offset] for c in columns}
        prompt, chosen, rejected = tokenize_pair(row, tokenizer)
        fitted = fit_pair(prompt, [chosen, rejected], max_length, max_prompt)
        if fitted is None:
            continue  # counted by the caller: fewer rows out than pairs in
        prompt, answers, cut = fitted
        for answer in answers:  # chosen then rejected
            ids_column.append(prompt + answer)
            mask_column.append([False] * len(prompt) + [True] * len(answer))
            cut_column.append(cut)
            cut = 0
    return {"input_ids": ids_column, "answer_mask": mask_column, "cut": cut_column}


def tokenize_pairs(splits, tokenizer, max_length: int, max_prompt: int | None, num_proc):
    """Each pair as two rows (prompt + chosen, prompt + rejected): input_ids (int32),
    answer_mask, and the tokens cut (on the chosen row). Batched, cached."""
    from datasets import DatasetDict, Features, Sequence, Value

    key = f"{tokenizer_fingerprint(tokenizer)}-{tokenizer.chat_template}-{max_length}"
    key += f"-{max_prompt}-pairs-v1"
    out = {}
    for split, ds in splits.items():
        columns = [name for name in ("prompt", *ANSWERS) if name in ds.column_names]
        out[split] = ds.select_columns(columns).map(
            _encode_pairs,
            batched=True,
            batch_size=256,
            fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "max_prompt": max_prompt},
            remove_columns=columns,
            features=Features(
                {
                    "input_ids": Sequence(Value("int32")),
                    "answer_mask": Sequence(Value("bool")),
                    "cut": Value("int64"),
                }
            ),
            num_proc=num_proc,
            new_fingerprint=hashlib.sha256(f"{ds._fingerprint}-{key}".encode()).hexdigest()[:16],
            desc=f"Tokenizing {split} pairs",
        )
    return DatasetDict(out)


class PairDataset(torch.utils.data.Dataset):
    """Pair k: {"chosen", "rejected"} (each input_ids, labels, position_ids: (T,)) and "index".
    Labels are the answer tokens; the prompt and the padding are IGNORE_INDEX."""

    def __init__(self, rows: SequenceDataset) -> None:
        self.rows = rows  # sequence 2k: prompt + chosen; 2k + 1: prompt + rejected

    def __len__(self) -> int:
        return len(self.rows) // 2

    def __getitem__(self, k: int) -> dict[str, Any]:
        return {"chosen": self.rows[2 * k], "rejected": self.rows[2 * k + 1], "index": k}

    def chosen_only(self) -> SequenceDataset:
        """The chosen rows alone, scored for the held-out bits per byte of the chosen answers."""
        rows = self.rows
        chosen = [[2 * k] for k in range(len(self))]
        return SequenceDataset(rows.tokens, rows.trained, rows.starts, rows.lengths, chosen)


def collate_pairs(pairs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs as one batch for one concatenated forward: input_ids, labels and position_ids
    (2B, T), the B chosen rows first, then the B rejected rows in the same order (TRL's layout);
    pair_index (B,) for the reference log-probs computed ahead."""
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    batch = pad_sequences(rows, pad_id)
    batch["pair_index"] = torch.tensor([p["index"] for p in pairs], dtype=torch.int64)
    return batch


def pair_rows(tokenized, split: str) -> tuple[PairDataset, int]:
    """A tokenized split as a PairDataset; returns it and the tokens cut to fit."""
    tokens = flat_tokens(tokenized)
    answer = flat_tokens(tokenized, "answer_mask", torch.bool)
    lengths = row_lengths(tokenized)
    if len(lengths) == 0:
        raise HfminiError(
            f"the {split} split has no pair left whose prompt fits max_length: raise max_length "
            "(up to block_size) or set max_prompt_length to cut prompts from the left"
        )
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = SequenceDataset(
        tokens,
        answer,
        torch.from_numpy(starts),
        torch.from_numpy(lengths),
        [[i] for i in range(len(lengths))],
    )
    cut = int(np.asarray(tokenized.with_format("arrow")[:]["cut"]).sum())
    return PairDataset(rows), cut


@dataclass
class PreparedPairs(InMemoryData):
    """Training and validation preference pairs (a TrainingData, see training_data.py)."""

    train_pairs: PairDataset
    eval_pairs: PairDataset
    block_size: int  # max_length: the most tokens of prompt + answer
    pad_id: int
    train_bytes: int  # UTF-8 bytes of the training tokens
    dropped_pairs: int  # whose prompt left no room for an answer
    dropped_train_tokens: int  # cut off to fit
    format: str = PREFERENCE_FORMAT

    @property
    def num_train_blocks(self) -> int:
        return len(self.train_pairs)

    @property
    def train_tokens(self) -> torch.Tensor:
        return self.train_pairs.rows.tokens

    @property
    def eval_tokens(self) -> torch.Tensor:
        return self.eval_pairs.rows.tokens

    @property
    def validation(self) -> ExampleValidation:
        """The chosen answers of the held-out pairs: their bits per byte show drift."""
        return ExampleValidation(self.eval_pairs.chosen_only(), self.pad_id)

    def train_dataset(self) -> PairDataset:
        return self.train_pairs

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return collate_pairs(rows, self.pad_id)

    def eval_loader(self, batch_size: int) -> torch.utils.data.DataLoader:
        """The held-out pairs in order, for the reward metrics."""
        return torch.utils.data.DataLoader(
            self.eval_pairs, batch_size=batch_size, collate_fn=self.collate
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.format.encode())
        for part in (self.train_pairs.rows, self.eval_pairs.rows):
            for array in (part.tokens, part.trained, part.lengths):
                digest.update(array.numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"data: {len(self.train_pairs)} preference pairs, {len(self.eval_pairs)} held out; "
            f"prompt + answer at most {self.block_size} tokens"
        )
