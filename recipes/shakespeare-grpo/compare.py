"""The shakespeare-grpo table: what GRPO changed in the rewards of held-out completions. Prints
Markdown.

    python recipes/shakespeare-grpo/compare.py [output] [--before shakespeare-chat]
        [--after shakespeare-grpo] [--prompts 50] [--completions 4] [--samples 3]

1. Each model samples `--completions` answers to each of `--prompts` held-out prompts (spread
   evenly over output/shakespeare-grpo-data/validation.jsonl), as the trainer samples them: the
   prompt rendered with the chat template's generation prompt, its last tokens kept to leave
   room for the completion, temperature only, stopped at the end of the turn. Seeds are fixed
   per (prompt, completion), the same for both models.
2. Every reward function of rewards.py scores them as TRL calls it (the data's other columns as
   keyword lists): the mean, the spread over all completions, and the mean spread within a
   prompt's group, which is what GRPO learns from (a group whose completions all score the same
   has no advantage to push). The plays' own replies, scored the same way, are the ceiling.
3. A few prompts with the play's reply and both models' first answers, with their rewards.

`--after shakespeare-dpo` compares two models that exist before any GRPO run. Reads the models
with hfmini's sampler, not with the trainer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rewards  # noqa: E402  (the recipe's own reward functions, beside this file)

FUNCTIONS = [rewards.scansion, rewards.known_words, rewards.ends_turn]
SEED = 0
# The make target that writes each known folder, for the one-line error when it is missing.
MAKES = {
    "shakespeare-chat": "chat-recipe",
    "shakespeare-dpo": "dpo-recipe",
    "shakespeare-grpo": "grpo-recipe",
    "shakespeare-grpo-data": "grpo-recipe",
}


class Missing(Exception):
    """A file the table needs is absent: one line saying which and what makes it."""


def missing(path: Path, folder: Path) -> Missing:
    make = MAKES.get(folder.name)
    hint = f"run `make {make}` first" if make else "train it, or name another folder"
    return Missing(f"{path} is missing: {hint}")


def evenly(rows: list, n: int) -> list:
    """n rows spread evenly over `rows` (all of them when n is 0 or more than there are)."""
    if not n or n >= len(rows):
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def sample_ids(model, tokenizer, prompt: list[dict], max_new_tokens, temperature, seed):
    """One completion's token ids (its stop token included when it ended), sampled as above."""
    from hfmini.models.chat_template import stop_token_ids
    from hfmini.models.sampling import decode, sampling_warpers, seeded_generator
    from hfmini.models.size import context_length

    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    ids = ids[-(context_length(model.config) - max_new_tokens) :]
    return decode(
        model,
        ids,
        max_new_tokens,
        sampling_warpers(temperature, None, None),
        sample=temperature > 0,
        eos_token_id=stop_token_ids(tokenizer),
        generator=seeded_generator(model, seed),
    )


def score(rows: list[dict], groups: list[list[list[int]]], tokenizer) -> dict[str, list]:
    """{function name: [[reward of each completion] per prompt]}: each function called once on
    all completions, as TRL calls it (prompts and the other columns repeated per completion)."""
    flat = [(row, ids) for row, group in zip(rows, groups, strict=True) for ids in group]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for _, ids in flat]
    columns = {k: [row[k] for row, _ in flat] for k in rows[0] if k != "prompt"}
    out = {}
    for fn in FUNCTIONS:
        values = fn(
            prompts=[row["prompt"] for row, _ in flat],
            completions=[[{"role": "assistant", "content": t}] for t in texts],
            completion_ids=[ids for _, ids in flat],
            **columns,
        )
        size = len(groups[0])
        out[fn.__name__] = [values[i : i + size] for i in range(0, len(values), size)]
    return out


def summary(groups: list[list[float]]) -> str:
    """mean | std over all | mean std within a group | share of groups all alike."""
    flat = [v for group in groups for v in group]
    within = [statistics.pstdev(g) for g in groups]
    alike = sum(max(g) - min(g) < 1e-9 for g in groups) / len(groups)
    return (
        f"{statistics.mean(flat):.3f} | {statistics.pstdev(flat):.3f} | "
        f"{statistics.mean(within):.3f} | {alike:.0%}"
    )


def cell(text: str) -> str:
    """Text for one Markdown table cell: line breaks as <br>, pipes escaped."""
    return text.strip().replace("|", "\\|").replace("\n", "<br>")


def with_rewards(text: str, scores: dict[str, list], i: int) -> str:
    """A table cell: prompt i's first completion and its rewards."""
    got = ", ".join(f"{name} {groups[i][0]:.2f}" for name, groups in scores.items())
    return f"{cell(text)}<br>*({got})*"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", default="output")
    parser.add_argument("--before", default="shakespeare-chat", help="the start model's folder")
    parser.add_argument("--after", default="shakespeare-grpo", help="the tuned model's folder")
    parser.add_argument("--data", help="default: ROOT/shakespeare-grpo-data/validation.jsonl")
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts; 0: all")
    parser.add_argument("--completions", type=int, default=4, help="sampled per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=3, help="prompts shown with answers")
    args = parser.parse_args(argv)
    # ends_turn's limit: completions as long as the trainer samples them.
    max_new_tokens = rewards.MAX_COMPLETION_LENGTH
    root = Path(args.root)
    models = {"before": root / args.before, "after": root / args.after}
    data = Path(args.data) if args.data else root / "shakespeare-grpo-data" / "validation.jsonl"
    try:
        for folder in models.values():
            if not (folder / "model.safetensors").is_file():
                raise missing(folder / "model.safetensors", folder)
        if not data.is_file():
            raise missing(data, data.parent)
    except Missing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # Heavy imports after the checks: a missing folder answers at once.
    from transformers.utils import logging

    from hfmini.models.sampling import load_model_and_tokenizer

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    every = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line]
    rows = evenly(every, args.prompts)
    seeds = [
        [SEED + i * args.completions + g for g in range(args.completions)] for i in range(len(rows))
    ]

    scores, answers, tokenizer = {}, {}, None
    for side, folder in models.items():
        model, tokenizer = load_model_and_tokenizer(folder)
        groups = [
            [
                sample_ids(model, tokenizer, row["prompt"], max_new_tokens, args.temperature, s)
                for s in group_seeds
            ]
            for row, group_seeds in zip(rows, seeds, strict=True)
        ]
        scores[side] = score(rows, groups, tokenizer)
        answers[side] = [tokenizer.decode(g[0], skip_special_tokens=True) for g in groups]
    # The ceiling: each play's own reply as one completion, its ids as the start model's
    # tokenizer writes it with the end of its turn, cut to the limit as a sample would be.
    from hfmini.models.chat_template import stop_token_ids

    end = stop_token_ids(tokenizer)[-1]
    replies = [
        [(tokenizer(row["reply"], add_special_tokens=False)["input_ids"] + [end])[:max_new_tokens]]
        for row in rows
    ]
    ceiling = score(rows, replies, tokenizer)

    n = len(rows) * args.completions
    print(
        f"## Held-out rewards: {len(rows)} prompts × {args.completions} completions "
        f"(temperature {args.temperature:g}, at most {max_new_tokens} tokens, seeds "
        f"{SEED}..{SEED + n - 1})\n"
    )
    print("| reward | model | mean | std | std within a prompt's group | groups all alike |")
    print("|---|---|---|---|---|---|")
    for fn in FUNCTIONS:
        name = fn.__name__
        for side, folder in models.items():
            print(f"| {name} | {side}: {folder.name} | {summary(scores[side][name])} |")
        flat = [g[0] for g in ceiling[name]]
        print(f"| {name} | the plays' replies | {statistics.mean(flat):.3f} | | | |")
    print("\n| reward | before → after |")
    print("|---|---|")
    for fn in FUNCTIONS:
        name = fn.__name__
        before, after = (
            statistics.mean(v for g in scores[side][name] for v in g) for side in models
        )
        print(f"| {name} | {before:.3f} → {after:.3f} ({after - before:+.3f}) |")

    print("\n## Held-out prompts (each model's first completion, seed per prompt)\n")
    head = f"| prompt | the play's reply | {models['before'].name} | {models['after'].name} |"
    print(head + "\n|---|---|---|---|")
    for i in evenly(list(range(len(rows))), args.samples):
        system, said = rows[i]["prompt"][0]["content"], rows[i]["prompt"][-1]["content"]
        shown = [
            with_rewards(rows[i]["reply"], ceiling, i),
            with_rewards(answers["before"][i], scores["before"], i),
            with_rewards(answers["after"][i], scores["after"], i),
        ]
        print(f"| {cell(system)}<br>{cell(said)} | {' | '.join(shown)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
