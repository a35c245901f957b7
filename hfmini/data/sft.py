"""Instruction and chat data (TRL's SFT formats) → token ids with an answer mask → sequences.

    load_raw (sources.py) ─► data_format (from the columns) ─► check_rows (a bad row is one
    line naming its file and row) ─► [hold out validation rows] ─► tokenizer (loaded, or trained
    on the train rows' text) + chat template ─► render and tokenize (batched map, cached):
    input_ids and answer_mask per row ─► packing.py: sequences of examples

Formats, as TRL names them, detected from the columns:
    language modelling   text                                → blocks.py (one packed stream)
    prompt-completion    prompt, completion (strings)        → prompt + completion + eos
    conversational       messages: [{role, content}, ...]    → the chat template
                         prompt, completion (message lists)  → the chat template

The answer mask marks what the model learns to write: the completion and its eos, or each
assistant turn through its end-of-turn token. With completion_only_loss / assistant_only_loss
(both on by default) only those tokens are labels. Validation always scores the answers.

prepare.prepare_examples composes these steps. Packing, and how packed examples are kept apart:
packing.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hfmini.data.readers import row_location
from hfmini.data.tokens import bos_ids, encode_batch, tokenizer_fingerprint
from hfmini.errors import HfminiError
from hfmini.models.chat_template import KNOWN_ROLES, end_of_turn_token


def data_format(columns: list[str], text_column: str) -> str:
    """language_modeling, prompt_completion or conversational, from a split's column names."""
    if "messages" in columns:
        return "conversational"
    has = [name for name in ("prompt", "completion") if name in columns]
    if len(has) == 1 and text_column not in columns:
        other = "completion" if has[0] == "prompt" else "prompt"
        raise HfminiError(
            f"the data has a {has[0]!r} column but no {other!r}: prompt-completion rows need "
            "both (or give a 'messages' column, or a text column)"
        )
    return "prompt_completion" if len(has) == 2 else "language_modeling"


def _mixes_formats(row: dict) -> bool:
    """A row without messages that holds prompt-completion, in a file that also has messages."""
    return row.get("messages") is None and any(
        row.get(name) is not None for name in ("prompt", "completion")
    )


def _message_problem(messages: Any, what: str) -> str | None:
    if not isinstance(messages, list):
        return f"{what} is not a list of messages"
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"{what} message {number} is not an object with role and content"
        role, content = message.get("role"), message.get("content")
        if role not in KNOWN_ROLES:
            return f"{what} message {number} has role {role!r}, not one of {', '.join(KNOWN_ROLES)}"
        if not isinstance(content, str):
            return f"{what} message {number} ({role}) has no text content"
    return None


def row_problem(row: dict, fmt: str, answers_only: bool) -> str | None:
    """What is wrong with one row of `fmt`, or None."""
    if fmt == "conversational":
        messages = row["messages"]
        if _mixes_formats(row):
            return (
                "this row is prompt-completion but the data also has 'messages' rows: use one "
                "format (one file each, trained separately)"
            )
        if not messages:
            return "the conversation is empty"
        problem = _message_problem(messages, "messages")
        answers = (
            [m["content"] for m in messages if m["role"] == "assistant"] if not problem else []
        )
        if problem is None and answers_only and not answers:
            problem = "the conversation has no assistant message, so nothing to learn"
        elif problem is None and answers_only and not any(a.strip() for a in answers):
            problem = "every assistant message is empty, so nothing to learn"
        return problem
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return None if completion else "the completion is empty"
    if isinstance(prompt, list) and isinstance(completion, list):
        if not completion:
            return "the completion holds no message"
        return _message_problem(prompt, "prompt") or _message_problem(completion, "completion")
    shown = ", ".join(
        f"{n} {_kind(v)}" for n, v in (("prompt", prompt), ("completion", completion))
    )
    return f"prompt and completion must be both text or both lists of messages, got {shown}"


def _kind(value: Any) -> str:
    return {str: "is text", list: "is a list", type(None): "is missing"}.get(
        type(value), f"is a {type(value).__name__}"
    )


def check_rows(ds, fmt: str, answers_only: bool, where) -> None:
    """The first bad row as a one-line error; `where(row)` names its file and row. One Python
    pass over the rows (the columns that matter only)."""
    columns = ["messages"] if fmt == "conversational" else ["prompt", "completion"]
    if fmt == "conversational":  # prompt-completion rows mixed in are named, not "empty"
        columns += [name for name in ("prompt", "completion") if name in ds.column_names]
    batch_size = 1000
    for start, batch in enumerate(ds.select_columns(columns).iter(batch_size=batch_size)):
        for offset in range(len(batch[columns[0]])):
            row = {name: batch[name][offset] for name in columns}
            problem = row_problem(row, fmt, answers_only)
            if problem is not None:
                raise HfminiError(
                    f"{where(start * batch_size + offset)}: {problem}: fix or remove the row"
                )


def tokenizer_text_batch(batch: dict) -> dict:
    columns = list(batch)
    rows = range(len(batch[columns[0]]))
    return {"text": [row_text({c: batch[c][i] for c in columns}) for i in rows]}


def row_text(row: dict) -> str:
    """Every message content and prompt/completion text of a row, for training a tokenizer."""
    parts = []
    for value in row.values():
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(m.get("content") or "" for m in value if isinstance(m, dict))
    return "\n".join(parts)


def _clean(messages: list[dict]) -> list[dict]:
    # Arrow gives every message all keys seen in the column, missing ones as None.
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as err:
        # A template's raise_exception(), or a filter or key it uses that this row lacks.
        roles = ", ".join(str(m.get("role")) for m in messages)
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise HfminiError(
            f"the chat template fails on a conversation of roles ({roles}): {reason}: fix "
            "chat_template or the rows it refuses"
        ) from None


def _answer_end(text: str, start: int, end: int, end_token: str | None) -> int:
    """An answer ends just after its end-of-turn token; what the template writes after that (a
    newline) belongs to the next prompt, since generation stops at the token."""
    if end_token:
        found = text.rfind(end_token, start, end)
        if found >= 0:
            return found + len(end_token)
    return end


def _check_prefix(full: str, prefix: str) -> None:
    if not full.startswith(prefix):
        raise HfminiError(
            "the chat template does not render a conversation turn by turn (an earlier turn "
            "renders differently once later turns follow), so the answers cannot be located: "
            "set chat_template to one that does"
        )


def render_pieces(row: dict, fmt: str, tokenizer, end_token: str | None) -> list[tuple[str, bool]]:
    """A row as consecutive (text, is_answer) pieces. The answers are found by rendering each
    prefix of the conversation with the generation prompt: the answer is what follows it."""
    if fmt == "prompt_completion" and isinstance(row["prompt"], str):
        return [(row["prompt"], False), (row["completion"] + tokenizer.eos_token, True)]
    if fmt == "conversational":
        messages = _clean(row["messages"])
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    else:  # prompt and completion as message lists: the whole completion is the answer
        messages = _clean(row["prompt"]) + _clean(row["completion"])
        answers = [len(row["prompt"])]
    full = _render(tokenizer, messages)
    pieces, done = [], 0
    for index in answers:
        prefix = _render(tokenizer, messages[:index], add_generation_prompt=True)
        _check_prefix(full, prefix)
        turn_end = len(full)
        if fmt == "conversational":
            turn = _render(tokenizer, messages[: index + 1])
            _check_prefix(full, turn)
            turn_end = len(turn)
        end = _answer_end(full, len(prefix), turn_end, end_token)
        pieces += [(full[done : len(prefix)], False), (full[len(prefix) : end], True)]
        done = end
    pieces.append((full[done:], False))
    return [piece for piece in pieces if piece[0]]


def _encode_batch(batch: dict, fmt: str, tokenizer, end_token: str | None) -> dict:
    ids_column, mask_column = [], []
    columns = list(batch)
    # Text prompts start with the BOS the tokenizer adds for its model (Llama's); a chat
    # template writes its own.
    bos = bos_ids(tokenizer)
    for offset in range(len(batch[columns[0]])):
        row = {c: batch[c][offset] for c in columns}
        pieces = render_pieces(row, fmt, tokenizer, end_token)
        # Each piece alone, as generation sees a prompt: tokens never straddle an answer's edge.
        encodings = encode_batch(tokenizer, [text for text, _ in pieces])
        ids, mask = [], []
        if fmt == "prompt_completion" and isinstance(row["prompt"], str):
            ids, mask = list(bos), [False] * len(bos)
        for encoding, (_, is_answer) in zip(encodings, pieces, strict=True):
            ids += encoding.ids
            mask += [is_answer] * len(encoding.ids)
        ids_column.append(ids)
        mask_column.append(mask)
    return {"input_ids": ids_column, "answer_mask": mask_column}


def tokenize_rows(splits, fmt: str, tokenizer, num_proc: int | None):
    """Render and tokenize every row (batched, cached): input_ids (int32) and answer_mask."""
    from datasets import DatasetDict, Features, Sequence, Value

    end_token = end_of_turn_token(tokenizer)
    key = f"{tokenizer_fingerprint(tokenizer)}-{tokenizer.chat_template}-{end_token}-{fmt}-sft-v2"
    out = {}
    for split, ds in splits.items():
        out[split] = ds.map(
            _encode_batch,
            batched=True,
            batch_size=256,
            fn_kwargs={"fmt": fmt, "tokenizer": tokenizer, "end_token": end_token},
            remove_columns=ds.column_names,
            features=Features(
                {"input_ids": Sequence(Value("int32")), "answer_mask": Sequence(Value("bool"))}
            ),
            num_proc=num_proc,
            new_fingerprint=hashlib.sha256(f"{ds._fingerprint}-{key}".encode()).hexdigest()[:16],
            desc=f"Rendering and tokenizing {split}",
        )
    return DatasetDict(out)


def check_splits(raw, origins: dict, fmt: str, answers_only: bool) -> None:
    """check_rows on every split, errors naming the file and row (`origins`: see load_raw)."""
    for split, ds in raw.items():

        def where(row: int, split=split) -> str:
            return row_location(origins, split, row)

        # Validation answers are always scored, so each validation row needs one too.
        check_rows(ds, fmt, answers_only or split == "validation", where)


def needs_chat_template(fmt: str, ds) -> bool:
    if fmt == "conversational":
        return True
    return fmt == "prompt_completion" and not isinstance(ds[0]["prompt"], str)
