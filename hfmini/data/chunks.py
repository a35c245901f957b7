"""Documents cut into chunks of at most CHUNK_CHARS characters, before blank lines where possible,
so that tokenization parallelises across processes and a validation tail can be held out even
from a single text file. Cutting just before a line break leaves the byte-level BPE tokenization
unchanged; only a hard cut inside a very long line can change it, at that point."""

from __future__ import annotations

from hfmini.data.datasets_cache import map_cache_space

# Documents are cut into chunks of at most this many characters (before blank lines where
# possible) so that tokenization parallelises across processes and a validation tail can be held
# out even from a single text file. Cutting just before a line break leaves the byte-level BPE
# tokenization unchanged; only a hard cut inside a very long line can change it, at that point.
CHUNK_CHARS = 4096

CHUNK_BATCH_DOCUMENTS = 32


def _boundary_before(text: str, separator: str, start: int, end: int) -> int:
    """The last index in (start, end) where `separator` begins right after a non-space character,
    or -1. Byte-level BPE pre-tokens never join a non-space character to the whitespace after it,
    so cutting there leaves the tokenization of both sides unchanged."""
    cut = text.rfind(separator, start + 1, end)
    while cut > start and text[cut - 1].isspace():
        cut = text.rfind(separator, start + 1, cut)
    return cut


def split_document(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut text into pieces of at most max_chars whose concatenation is the text: before a blank
    line where possible (tokenization unchanged), else before a line break, else a hard cut."""
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = _boundary_before(text, "\n\n", start, end)
        if cut <= start:
            cut = _boundary_before(text, "\n", start, end)
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _chunk_batch(batch: dict, text_column: str, max_chars: int) -> dict:
    texts, ends = [], []
    for text in batch[text_column]:
        if not text:
            continue  # an empty or missing document adds nothing, not even an EOS
        pieces = split_document(text, max_chars)
        texts.extend(pieces)
        ends.extend([False] * (len(pieces) - 1) + [True])
    return {"text": texts, "doc_end": ends}


def chunk_documents(raw, text_column: str, num_proc: int | None):
    """Rows of any shape → rows of ('text' ≤ CHUNK_CHARS, 'doc_end') in document order."""
    from datasets import Features, Value

    with map_cache_space(raw, "the chunked documents"):
        return raw.map(
            _chunk_batch,
            batched=True,
            # Documents, not chunks: a batch of whole .txt files is held in memory at once, so
            # it is kept small (datasets' default of 1000 rows could be gigabytes).
            batch_size=CHUNK_BATCH_DOCUMENTS,
            # max_chars travels in fn_kwargs so that it is part of the cache fingerprint.
            fn_kwargs={"text_column": text_column, "max_chars": CHUNK_CHARS},
            remove_columns=next(iter(raw.values())).column_names,
            # Explicit features keep the columns even when every document is empty.
            features=Features({"text": Value("string"), "doc_end": Value("bool")}),
            num_proc=num_proc,
            desc="Chunking documents",
        )


def text_bytes(chunks) -> int:
    import pyarrow.compute as pc

    if chunks.num_rows == 0:
        return 0
    column = chunks.with_format("arrow")[:]["text"]
    return int(pc.sum(pc.binary_length(column)).as_py() or 0)
