"""`dataset_mixture` entries parsed: "file=data/books,weight=2" → MixtureSource. Pure string
parsing, so that the config checks a mixture before any data is read (hfmini.data.mixture
loads it).

A weight is the fraction of a source's rows kept, as in open-r1's `dataset_mixture` (TRL script
arguments); above 1, which open-r1 refuses, it repeats rows.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from hfmini.errors import HfminiError

# Entry keys: a source (exactly one), then options.
SOURCE_KEYS = ("file", "dataset")
OPTION_KEYS = ("config", "split", "text_column", "weight")
EXAMPLE = "'file=data/books,weight=0.5'"


@dataclass(frozen=True)
class MixtureSource:
    """One parsed `dataset_mixture` entry."""

    kind: str  # "file" or "dataset"
    name: str  # the path or dataset id
    config: str | None = None
    split: str = "train"
    text_column: str | None = None  # None: the run's text_column
    weight: float = 1.0

    def label(self) -> str:
        """How messages and the log name the source."""
        return self.name + (f" ({self.config})" if self.config else "")


def parse_entry(entry: str) -> MixtureSource:
    """`key=value,key=value` → MixtureSource; a mistake is one line naming the entry."""
    entry = str(entry)
    if entry.lstrip().startswith("{"):
        # A YAML mapping arrives here as its Python text: say what to write instead.
        raise HfminiError(
            f"dataset_mixture entry {entry} is a mapping; entries are strings such as {EXAMPLE} "
            "(the same in YAML and on the command line)"
        )
    values: dict[str, str] = {}
    for item in entry.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            problem = "has no value" if sep else "is not key=value"
            raise HfminiError(
                f"dataset_mixture entry {entry!r}: {item.strip()!r} {problem}; write entries "
                f"such as {EXAMPLE}"
            )
        if key not in SOURCE_KEYS + OPTION_KEYS:
            nearest = difflib.get_close_matches(key, SOURCE_KEYS + OPTION_KEYS, n=1)
            hint = f"did you mean {nearest[0]!r}? " if nearest else ""
            raise HfminiError(
                f"dataset_mixture entry {entry!r}: unknown key {key!r}; {hint}keys are "
                f"{', '.join(SOURCE_KEYS + OPTION_KEYS)}"
            )
        if key in values:
            raise HfminiError(f"dataset_mixture entry {entry!r} gives {key} twice: keep one")
        values[key] = value
    kinds = [key for key in SOURCE_KEYS if key in values]
    if len(kinds) != 1:
        raise HfminiError(
            f"dataset_mixture entry {entry!r} needs one source: file=PATH (local files or a "
            "folder) or dataset=ID (a Hub id or a dataset folder)"
        )
    kind = kinds[0]
    if kind == "file" and ("config" in values or "split" in values):
        raise HfminiError(
            f"dataset_mixture entry {entry!r}: config and split go with dataset=ID; the rows of "
            "file= sources are all training rows"
        )
    return MixtureSource(
        kind=kind,
        name=values[kind],
        config=values.get("config"),
        split=values.get("split", "train"),
        text_column=values.get("text_column"),
        weight=_weight(values.get("weight", "1"), entry),
    )


def _weight(text: str, entry: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise HfminiError(
            f"dataset_mixture entry {entry!r}: weight {text!r} is not a number; give the fraction "
            "of the source's rows to keep, e.g. weight=0.5"
        ) from None
    if not (weight > 0 and math.isfinite(weight)):
        raise HfminiError(
            f"dataset_mixture entry {entry!r}: weight must be a positive number (the fraction of "
            f"the source's rows kept; above 1 repeats rows), got {text}"
        )
    return weight


def parse_mixture(entries: list[str]) -> list[MixtureSource]:
    if not entries:
        raise HfminiError(f"dataset_mixture is empty: give one entry per source, e.g. {EXAMPLE}")
    return [parse_entry(entry) for entry in entries]
