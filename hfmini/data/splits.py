"""Split names, and the validation split held out of the training rows when a source has none."""

from __future__ import annotations

from hfmini.data.chunks import CHUNK_CHARS
from hfmini.errors import HfminiError

TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
# A source's own held-out split, under the names datasets on the Hub use for one, in this order.
VALIDATION_SPLIT_NAMES = ("validation", "valid", "dev", "test")


def hold_out_validation(
    chunks, percentage: float, unit: str = f"chunks of ≤{CHUNK_CHARS} characters"
):
    """Without a validation split, hold out the last `percentage` % of chunks (contiguous, so it
    never shares a paragraph with training and the tokenizer never sees it), or of rows."""
    from datasets import DatasetDict

    if "validation" in chunks:
        return chunks
    train = chunks["train"]
    if train.num_rows == 0:
        raise HfminiError(
            "the training data holds no text (every text value is empty or null): add text, or "
            "check that --text_column names the column that holds it"
        )
    if train.num_rows < 2:
        raise HfminiError(
            f"the training text is too short to hold out {percentage:g}% for validation "
            f"({train.num_rows} of {unit}): add data or set validation_file"
        )
    held_out = min(train.num_rows - 1, max(1, round(train.num_rows * percentage / 100)))
    cut = train.num_rows - held_out
    return DatasetDict(
        {"train": train.select(range(cut)), "validation": train.select(range(cut, train.num_rows))}
    )
