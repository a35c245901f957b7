"""`python -m hfmini.shakespeare`: the built-in plays (or their dialogue as chat conversations, as
preference pairs, or as GRPO's prompts) written as train/validation JSON lines files, for recipes that train on one
group of plays and fine-tune on another (hfmini.data.shakespeare reads the plays).

    python -m hfmini.shakespeare --groups comedies --validation twelfth-night \
        much-ado-about-nothing --output_dir output/play-groups/comedies
    python -m hfmini.shakespeare --conversations --output_dir output/shakespeare-chat
    python -m hfmini.shakespeare --preference_pairs --max_chars 240 --output_dir output/dpo-data
    python -m hfmini.shakespeare --grpo_prompts --max_chars 160 --output_dir output/grpo-data
"""

from __future__ import annotations

import argparse
import json
import sys

from hfmini.data.shakespeare import (
    VALIDATION_PLAYS,
    play_groups,
    write_conversations,
    write_grpo_prompts,
    write_play_groups,
    write_preference_pairs,
)
from hfmini.errors import HfminiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hfmini.shakespeare",
        description="Write Shakespeare's plays (or their dialogue as chat conversations, as "
        "preference pairs, or as GRPO's prompts) as train/validation JSON lines files.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--conversations",
        action="store_true",
        help="write the dialogue as chat conversations (a 'messages' column) instead of plays",
    )
    mode.add_argument(
        "--preference_pairs",
        action="store_true",
        help="write preference pairs (prompt, chosen, rejected): the play's reply to a speech "
        "against the same reply's words shuffled (or, --rejected other_reply, another reply)",
    )
    mode.add_argument(
        "--grpo_prompts",
        action="store_true",
        help="write prompt-only rows for GRPO (prompt, answerer, play, reply): a speech to "
        "answer, with the play's own reply as a reference for the reward functions",
    )
    parser.add_argument(
        "--groups",
        nargs="+",
        help=f"{', '.join(play_groups())} (required for plays; all groups when left out with "
        "--conversations, --preference_pairs or --grpo_prompts)",
    )
    parser.add_argument(
        "--validation",
        nargs="+",
        help="held-out plays (required for plays; with --conversations, --preference_pairs or "
        "--grpo_prompts, default: "
        f"{' '.join(VALIDATION_PLAYS)})",
    )
    parser.add_argument(
        "--max_chars",
        type=int,
        help="at most this many characters of dialogue a conversation (--conversations, "
        "default 700), a pair's speech plus either answer (--preference_pairs, default 240) or "
        "a prompt's speech plus the play's reply (--grpo_prompts, default 160)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="with --preference_pairs: picks the rejected answers"
    )
    parser.add_argument(
        "--rejected",
        choices=["shuffled", "other_reply"],
        default="shuffled",
        help="with --preference_pairs: the reply's words shuffled (default), or another "
        "character's reply of the same length from another play",
    )
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    dialogue = args.conversations or args.preference_pairs or args.grpo_prompts
    if not dialogue and (args.groups is None or args.validation is None):
        parser.error(
            "--groups and --validation are required (or pass --conversations, --preference_pairs "
            "or --grpo_prompts)"
        )
    if args.max_chars is not None and args.max_chars <= 0:
        parser.error(f"--max_chars must be positive, got {args.max_chars}")
    try:
        if not dialogue:
            print(write_play_groups(args.groups, args.validation, args.output_dir))
            return 0
        validation = VALIDATION_PLAYS if args.validation is None else args.validation
        if args.preference_pairs:
            max_chars = 240 if args.max_chars is None else args.max_chars
            paths = write_preference_pairs(
                args.output_dir, validation, args.groups, max_chars, args.seed, args.rejected
            )
        elif args.grpo_prompts:
            max_chars = 160 if args.max_chars is None else args.max_chars
            paths = write_grpo_prompts(args.output_dir, validation, args.groups, max_chars)
        else:
            max_chars = 700 if args.max_chars is None else args.max_chars
            paths = write_conversations(args.output_dir, validation, args.groups, max_chars)
    except HfminiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths.values():
        # Read back rather than counted while writing: a few MB, a fraction of a second.
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if args.preference_pairs:
            chars = sum(len(m["content"]) for row in rows for m in row["prompt"] + row["chosen"])
            print(f"{path}: {len(rows)} pairs, {chars} characters of prompts and chosen answers")
        elif args.grpo_prompts:
            chars = sum(len(m["content"]) for row in rows for m in row["prompt"])
            print(f"{path}: {len(rows)} prompts, {chars} characters")
        else:
            chars = sum(len(m["content"]) for row in rows for m in row["messages"])
            print(f"{path}: {len(rows)} conversations, {chars} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
