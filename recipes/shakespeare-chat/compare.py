"""The shakespeare-chat table: answer-only vs full-sequence training, scored on the held-out
plays' conversations, and how often a reply ends its turn. Prints Markdown.

    python recipes/shakespeare-chat/compare.py [output] [--replies 200]

For each run: the loss on the answers (what the model is asked to write) and on every token of
the conversations, in bits per byte; and, over the first `--replies` held-out conversations cut
before their last assistant turn (skipping those whose prompt leaves under 64 tokens of the
context), the share of sampled replies (at most 100 tokens, the export's sampling settings) that
end with the end-of-turn token. The base model, which knows no template,
is given the same speech as plain text ("speech\\n\\nSPEAKER:\\n") and counted as ending when it
emits <|endoftext|>.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

RUNS = {
    "shakespeare-chat": "answers only (assistant_only_loss)",
    "shakespeare-chat-full": "full sequence",
}
MAX_NEW_TOKENS = 100
MIN_ROOM = 64  # a prompt must leave this many tokens of the context for the reply, or is skipped


def scores(model, tokenizer, validation: Path) -> dict[str, float]:
    from datasets import DatasetDict, load_dataset

    from hfmini.data.packing import ExampleValidation, sequences_of
    from hfmini.data.sft import tokenize_rows
    from hfmini.models.tokenizer import token_byte_lengths
    from hfmini.training.evaluation import score_validation

    rows = DatasetDict({"validation": load_dataset("json", data_files=str(validation))["train"]})
    tokenized = tokenize_rows(rows, "conversational", tokenizer, None)["validation"]
    token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float64)
    out = {}
    for name, answers_only in (("answers", True), ("all tokens", False)):
        dataset, _, _ = sequences_of(tokenized, 128, True, answers_only, "validation")
        validation_set = ExampleValidation(dataset, tokenizer.pad_token_id)
        metrics = score_validation(model, validation_set, 32, token_bytes)
        out[name] = metrics["bits_per_byte"]
    return out


def ending_rate(
    model, tokenizer, conversations: list[dict], chat: bool
) -> tuple[float, float, int]:
    """(share of replies that end their turn, mean reply length in tokens, replies). A prompt
    that leaves less than MIN_ROOM tokens of the context is skipped: its reply would be cut."""
    from hfmini.config import SAMPLING_DEFAULTS
    from hfmini.models.chat_template import stop_token_ids
    from hfmini.models.sampling import decode, sampling_warpers

    warpers = sampling_warpers(**SAMPLING_DEFAULTS)
    stop = set(stop_token_ids(tokenizer)) if chat else {tokenizer.eos_token_id}
    torch.manual_seed(0)
    ended, lengths = 0, []
    for row in conversations:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if chat:
            ids = tokenizer.apply_chat_template(
                messages[:last], add_generation_prompt=True, return_dict=False
            )
        else:
            speaker = messages[0]["content"].removeprefix("You are ").split(" in ")[0]
            text = f"{messages[last - 1]['content']}\n\n{speaker}:\n"
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        room = min(MAX_NEW_TOKENS, model.config.n_positions - len(ids))
        if room < MIN_ROOM:
            continue
        new = decode(model, ids, room, warpers, sample=True, eos_token_id=stop)
        ended += bool(new) and new[-1] in stop
        lengths.append(len(new))
    return ended / len(lengths), sum(lengths) / len(lengths), len(lengths)


def main(argv: list[str] | None = None) -> int:
    from hfmini.models.sampling import load_model_and_tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", default="output")
    parser.add_argument("--replies", type=int, default=200)
    args = parser.parse_args(argv)
    root = Path(args.root)
    validation = root / "shakespeare-chat-data" / "validation.jsonl"
    lines = validation.read_text(encoding="utf-8").splitlines()[: args.replies]
    conversations = [json.loads(line) for line in lines]
    print(
        "| model | bits per byte, answers | bits per byte, all tokens | replies that end "
        "their turn | mean reply tokens | replies |"
    )
    print("|---|---|---|---|---|---|")
    base = root / "shakespeare"
    if (base / "model.safetensors").is_file():
        model, tokenizer = load_model_and_tokenizer(base, "cpu")
        rate, length, n = ending_rate(model, tokenizer, conversations, chat=False)
        print(f"| base (raw text, no template) | | | {rate:.1%} | {length:.1f} | {n} |")
    for name, label in RUNS.items():
        folder = root / name
        if not (folder / "model.safetensors").is_file():
            print(f"| {label} | (not run: {folder} missing) | | | | |")
            continue
        model, tokenizer = load_model_and_tokenizer(folder, "cpu")
        bits = scores(model, tokenizer, validation)
        rate, length, n = ending_rate(model, tokenizer, conversations, chat=True)
        print(
            f"| {label} | {bits['answers']:.4f} | {bits['all tokens']:.4f} | {rate:.1%} | "
            f"{length:.1f} | {n} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
