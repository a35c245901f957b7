"""Documents cut into chunks of at most CHUNK_CHARS characters, before blank lines where possible,
so that tokenization parallelises across processes and a validation tail can be held out even
from a single text file. Cutting just before a line break leaves the byte-level BPE tokenization
unchanged, and so does cutting a very long line before a space; only a hard cut inside a long run
without spaces can change it, at that point."""

from __future__ import annotations

from hfmini.data.datasets_cache import map_cache_space
from hfmini.data.readers import DOC_END, DOC_START, split_document

# Documents are cut into chunks of at most this many characters (before blank lines where
# possible) so that tokenization parallelises across processes and a validation tail can be held
# out even from a single text file. Cutting just before a line break leaves the byte-level BPE
# tokenization unchanged; only a hard cut inside a very long line can change it, at that point.
CHUNK_CHARS = 4096

CHUNK_BATCH_DOCUMENTS = 32


def _chunk_batch(batch: dict, text_column: str, max_chars: int) -> dict:
    texts, starts, ends = [], [], []
    # A .txt file comes in pieces (readers.text_pieces): only its first piece starts the
    # document and only its last ends it.
    rows = len(batch[text_column])
    doc_starts = batch.get(DOC_START) or [True] * rows
    doc_ends = batch.get(DOC_END) or [True] * rows
    for text, doc_start, doc_end in zip(batch[text_column], doc_starts, doc_ends, strict=True):
        if not text:
            continue  # an empty or missing document adds nothing, not even an EOS
        pieces = split_document(text, max_chars)
        texts.extend(pieces)
        starts.extend([doc_start] + [False] * (len(pieces) - 1))
        ends.extend([False] * (len(pieces) - 1) + [doc_end])
    return {"text": texts, "doc_start": starts, "doc_end": ends}


def chunk_documents(raw, text_column: str, num_proc: int | None):
    """Rows of any shape → rows of ('text' ≤ CHUNK_CHARS, 'doc_start', 'doc_end') in document
    order."""
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
            features=Features(
                {"text": Value("string"), "doc_start": Value("bool"), "doc_end": Value("bool")}
            ),
            num_proc=num_proc,
            desc="Chunking documents",
        )


def text_bytes(chunks) -> int:
    import pyarrow.compute as pc

    if chunks.num_rows == 0:
        return 0
    column = chunks.with_format("arrow")[:]["text"]
    return int(pc.sum(pc.binary_length(column)).as_py() or 0)
