"""Property-based checks (hypothesis): nothing is lost or invented between text and blocks."""

import pytest
import torch
from datasets import Dataset, DatasetDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfmini.data import chunks
from hfmini.data.blocks import pack
from hfmini.data.tokens import flat_tokens, tokenize_chunks
from hfmini.models.tokenizer import EOS_TOKEN, train_tokenizer

CORPUS = ["ROMEO:\nBut, soft! what light through yonder window breaks?\n\n"] * 20 + [
    "Ça, c'est über-cool: 日本語のテキスト 🤖🎭 — «quotes»\n"
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(CORPUS), 400, 1 << 20)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=300))
def test_tokenizer_round_trips_any_unicode(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


documents = st.lists(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=120)
    | st.sampled_from(["thou art\n\nmy love\n", "a\n" * 40, "é" * 50, "\n\n\n", " x " * 30]),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(docs=documents, block_size=st.integers(min_value=2, max_value=17))
def test_blocks_hold_exactly_the_text_up_to_the_dropped_tail(
    tokenizer, monkeypatch, docs, block_size
):
    """Chunking (forced small here), tokenization and packing neither drop nor duplicate text:
    the kept blocks plus the counted tail decode to the documents joined by EOS."""
    monkeypatch.setattr(chunks, "CHUNK_CHARS", 16)
    raw = DatasetDict({"train": Dataset.from_dict({"text": docs})})
    pieces = chunks.chunk_documents(raw, "text", None)
    tokens = flat_tokens(tokenize_chunks(pieces, tokenizer, None)["train"])
    expected_text = "".join(doc + EOS_TOKEN for doc in docs if doc)
    assert tokenizer.decode(tokens.tolist()) == expected_text
    if tokens.numel() < block_size:
        return
    kept, dropped = pack(tokens, block_size, "train")
    assert kept.numel() % block_size == 0 and 0 <= dropped < block_size
    assert torch.equal(torch.cat([kept, tokens[kept.numel() :]]), tokens)
    assert kept.numel() + dropped == tokens.numel()
