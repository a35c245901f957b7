import pytest
from datasets import Dataset

from hfmini.models.tokenizer import EOS_TOKEN, get_tokenizer, token_byte_lengths, train_tokenizer

TEXTS = ["ROMEO:\nBut, soft! what light through yonder window breaks?\n"] * 50 + [
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
] * 50


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(TEXTS), vocab_size=400, model_max_length=128)


@pytest.mark.parametrize(
    "text",
    [
        "Ça, c'est über-cool: 日本語のテキスト 🤖🎭 — «quotes»\n\ttabs  and  spaces ",
        "\x00\x01 control bytes and \u200b zero width and \U0001f600",
        "",
        "   leading spaces\n\n\n",
    ],
)
def test_round_trips_any_utf8(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_special_tokens_like_gpt2(tokenizer):
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == EOS_TOKEN
    assert tokenizer.pad_token == EOS_TOKEN
    assert len(tokenizer) <= 400
    assert tokenizer.model_max_length == 128
    # Merges were learned: a frequent word is one token, not its bytes.
    assert len(tokenizer(" Romeo", add_special_tokens=False)["input_ids"]) == 1


def test_token_byte_lengths_count_utf8_bytes(tokenizer):
    lengths = token_byte_lengths(tokenizer)
    text = "wherefore 日本 🤖 Romeo"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert sum(lengths[i] for i in ids) == len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_token_id] == 0


def test_trained_tokenizer_is_cached(tmp_path):
    train = Dataset.from_dict({"text": TEXTS})
    first = get_tokenizer(None, train, "text", vocab_size=300, model_max_length=64)
    second = get_tokenizer(None, train, "text", vocab_size=300, model_max_length=64)
    assert first.get_vocab() == second.get_vocab()
    third = get_tokenizer(None, train, "text", vocab_size=320, model_max_length=64)
    assert len(third) > len(first)  # another vocabulary size is another cache entry


def test_saved_tokenizer_loads_by_name(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = get_tokenizer(str(tmp_path / "tok"), model_max_length=32)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.model_max_length == 32
