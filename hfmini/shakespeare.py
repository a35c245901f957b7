"""`python -m hfmini.shakespeare`: the built-in plays (or their dialogue as chat conversations)
written as train/validation JSON lines files, for recipes that train on one group of plays and
fine-tune on another (hfmini.data.shakespeare reads the plays).

    python -m hfmini.shakespeare --groups comedies --validation twelfth-night \
        much-ado-about-nothing --output_dir output/play-groups/comedies
    python -m hfmini.shakespeare --conversations --output_dir output/shakespeare-chat
"""

from __future__ import annotations

import argparse
import json
import sys

from hfmini.data.shakespeare import (
    VALIDATION_PLAYS,
    play_groups,
    write_conversations,
    write_play_groups,
)
from hfmini.errors import HfminiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hfmini.shakespeare",
        description="Write Shakespeare's plays (or their dialogue as chat conversations) as "
        "train/validation JSON lines files.",
    )
    parser.add_argument(
        "--conversations",
        action="store_true",
        help="write the dialogue as chat conversations (a 'messages' column) instead of plays",
    )
    parser.add_argument(
        "--groups",
        nargs="+",
        help=f"{', '.join(play_groups())} (required for plays; all groups when left out with "
        "--conversations)",
    )
    parser.add_argument(
        "--validation",
        nargs="+",
        help="held-out plays (required for plays; with --conversations, default: "
        f"{' '.join(VALIDATION_PLAYS)})",
    )
    parser.add_argument(
        "--max_chars",
        type=int,
        default=700,
        help="with --conversations: at most this many characters of dialogue a conversation",
    )
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if not args.conversations and (args.groups is None or args.validation is None):
        parser.error("--groups and --validation are required (or pass --conversations)")
    try:
        if not args.conversations:
            print(write_play_groups(args.groups, args.validation, args.output_dir))
            return 0
        validation = VALIDATION_PLAYS if args.validation is None else args.validation
        paths = write_conversations(args.output_dir, validation, args.groups, args.max_chars)
    except HfminiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths.values():
        # Read back rather than counted while writing: a few MB, a fraction of a second.
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        chars = sum(len(m["content"]) for row in rows for m in row["messages"])
        print(f"{path}: {len(rows)} conversations, {chars} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
