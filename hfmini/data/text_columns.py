"""The text column of a split checked: present, and holding text (strings or nulls) in every row;
otherwise one line naming the file and row, before a map fails on it with a pyarrow traceback."""

from __future__ import annotations

import json

from hfmini.data.readers import file_and_row
from hfmini.errors import HfminiError


def check_text_column(splits: dict, column: str, where: str) -> None:
    for split, ds in splits.items():
        if column not in ds.column_names:
            raise HfminiError(
                f"text_column {column!r} is not in the {split} data{where}; its columns are "
                f"{', '.join(ds.column_names)}: set --text_column to one of them"
            )


def check_text_values(splits: dict, column: str, origins: dict) -> None:
    """Every text value is a string or null; otherwise name the file and row of the first that is
    not, before the chunking map fails on it with a pyarrow traceback.

    `origins` maps a split to (what, files): ("train_file", [paths]), or (a dataset name, None).
    A column that datasets typed as strings passes at no cost; JSON rows that mix strings with
    numbers or lists come out typed `Json`, and those are scanned (in Python, on this error path).
    datasets types a column from the first file: when that file holds only strings, a later
    file's numbers and lists are cast to their JSON text ("42") and pass as text.
    """
    for split, ds in splits.items():
        found = _first_non_string(ds, column)
        if found is None:
            continue
        row, value = found
        what, files = origins.get(split, (f"the {split} data", None))
        where = f"{what} ({split} split) row {row + 1}"
        if files:
            file, row = file_and_row(files, row)
            where = f"{what} {file} row {row + 1}"
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        fix = "make every text value a string (null skips a row)"
        if not files:
            fix = "set --text_column to a column of text"
        raise HfminiError(
            f"{where}: text_column {column!r} holds {_kind(value)} ({shown}), not text: {fix}"
        )


def _kind(value) -> str:
    """A value's kind as JSON names it."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _first_non_string(ds, column: str) -> tuple[int, object] | None:
    """(row, value) of the first value of `column` that is neither a string nor null, or None."""
    from datasets import Value

    feature = ds.features[column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string", "null"):
        return None
    batch_size = 1000
    for start, batch in enumerate(ds.select_columns([column]).iter(batch_size=batch_size)):
        for offset, value in enumerate(batch[column]):
            if value is not None and not isinstance(value, str):
                return start * batch_size + offset, value
    return None
