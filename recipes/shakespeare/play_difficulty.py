"""How hard is each play to predict from the others? A model-free check of the held-out split.

    python recipes/shakespeare/play_difficulty.py > play_difficulty.md

For each play: the bits per byte LZMA needs to code it after the other plays (the compressed size
of all the others followed by it, minus that of the others alone). A play unlike the rest in words
and names costs more. The default split's plays should sit around the corpus' middle, not at one
end (docs/results.md). Costs two LZMA passes over the corpus (~5 MB) per play: minutes on 2 cores.
"""

import lzma
import statistics
import sys

from hfmini.data.shakespeare import VALIDATION_PLAYS, load_plays, play_groups

# One dictionary holds the whole corpus, so a play can refer to any other.
FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 26}]


def coded_bytes(text: str) -> int:
    return len(lzma.compress(text.encode(), format=lzma.FORMAT_RAW, filters=FILTERS))


def main() -> int:
    plays = {name: text for split in load_plays().values() for name, text in split.items()}
    group_of = {play: group for group, members in play_groups().items() for play in members}
    difficulty = {}
    for name in sorted(plays):
        others = "\n\n".join(plays[other] for other in sorted(plays) if other != name)
        extra = coded_bytes(others + "\n\n" + plays[name]) - coded_bytes(others)
        difficulty[name] = 8 * extra / len(plays[name].encode())
    print("| play | group | LZMA bits per byte given the other plays |")
    print("|---|---|---|")
    for name in sorted(difficulty, key=difficulty.get):
        held_out = " (held out)" if name in VALIDATION_PLAYS else ""
        print(f"| {name}{held_out} | {group_of.get(name, '')} | {difficulty[name]:.3f} |")
    values = list(difficulty.values())
    held = [difficulty[name] for name in VALIDATION_PLAYS]
    print(
        f"\nall {len(values)} plays: median {statistics.median(values):.3f}, mean "
        f"{statistics.mean(values):.3f}; the held-out plays: mean {statistics.mean(held):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
