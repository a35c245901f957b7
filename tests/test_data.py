import json

import pytest
import torch
from conftest import write_lines

from hfmini.config import Config, DataArguments, ModelArguments, TrainArguments
from hfmini.data.chunks import CHUNK_CHARS, split_document
from hfmini.data.prepare import pack, prepare_data, prepare_eval_tokens
from hfmini.errors import HfminiError


def prepare(data_args, vocab_size=300):
    """The training data stage on `data_args`, with a tokenizer of `vocab_size` trained on it."""
    return prepare_data(Config(data_args, ModelArguments(vocab_size=vocab_size), TrainArguments()))


@pytest.fixture
def seen(monkeypatch):
    """The texts a tokenizer is trained on during the test, in order."""
    from hfmini.models import tokenizer as tokenizer_module

    texts = []
    original = tokenizer_module.train_tokenizer

    def spy(batches, *args, **kwargs):
        def recorded():
            for batch in batches:
                texts.extend(batch)
                yield batch

        return original(recorded(), *args, **kwargs)

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", spy)
    return texts


@pytest.mark.parametrize("length", [0, 5, CHUNK_CHARS, 3 * CHUNK_CHARS + 17])
def test_split_document_is_lossless(length):
    text = ("line of verse\n" * (length // 14 + 1) + "x" * CHUNK_CHARS)[:length]
    pieces = split_document(text, CHUNK_CHARS)
    assert "".join(pieces) == text
    assert all(len(p) <= CHUNK_CHARS for p in pieces)


@pytest.mark.parametrize(
    "text, cut_before",
    [
        (("ROMEO:\nSoft, what light " * 3 + "breaks?\n\n") * 100, "\n\n"),
        # One line without a line break at all: cut before a space.
        ("Soft, what  light through yonder window 42 breaks? " * 200, " "),
    ],
    ids=["before-blank-lines", "one-long-line-before-spaces"],
)
def test_pieces_of_a_document_keep_its_tokenization(text, cut_before):
    from hfmini.models.tokenizer import train_tokenizer

    pieces = split_document(text, max_chars=1000)
    assert len(pieces) > 5 and all(p.startswith(cut_before) for p in pieces[1:])
    tokenizer = train_tokenizer(iter([text]), 300, 64)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    parts = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    assert parts == whole


def test_pack_drops_only_the_tail():
    tokens = torch.arange(103, dtype=torch.int32)
    packed, dropped = pack(tokens, 10, "train")
    assert packed.tolist() == list(range(100)) and dropped == 3
    with pytest.raises(HfminiError, match="has 5 tokens, fewer than one block of 10"):
        pack(torch.arange(5), 10, "validation")


def test_local_text_files_documents_and_eos(tmp_path, seen):
    a = write_lines(tmp_path / "train" / "a.txt", 300, seed=1)
    b = write_lines(tmp_path / "train" / "b.txt", 300, seed=2)
    val = write_lines(tmp_path / "val.txt", 200, seed=3)
    args = DataArguments(
        train_file=[str(tmp_path / "train")], validation_file=[str(val)], block_size=32
    )
    data, tokenizer = prepare(args)
    # The tokenizer saw the training text only.
    assert "".join(seen) == a.read_text() + b.read_text()
    # Two documents: the stream is a.txt EOS b.txt EOS (minus the final partial block).
    expected = []
    for path in (a, b):
        expected += tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]
        expected.append(tokenizer.eos_token_id)
    n = len(expected) // 32 * 32
    assert data.train_tokens.tolist() == expected[:n]
    assert data.dropped_train_tokens == len(expected) - n
    assert tokenizer.decode(data.eval_tokens.tolist()) == val.read_text() + "<|endoftext|>"


def test_a_big_text_file_is_read_in_pieces_that_join_into_one_document(tmp_path, monkeypatch):
    """A .txt file is one document read in bounded pieces: no row is longer than a piece, only
    the last piece ends the document, and the tokens are the whole file's followed by one EOS,
    in the prepared path and in the stream alike."""
    from hfmini.data import readers
    from hfmini.data.streaming import take_tokens

    monkeypatch.setattr(readers, "TEXT_PIECE_CHARS", 1000)
    a = write_lines(tmp_path / "train" / "a.txt", 2000, seed=1)
    b = write_lines(tmp_path / "train" / "b.txt", 40, seed=2)
    # CRLF and a BOM read as datasets' text builder reads them (universal newlines, BOM kept).
    b.write_bytes(b"\xef\xbb\xbf" + b.read_bytes().replace(b"\n", b"\r\n"))
    rows = readers.text_documents([str(a), str(b)])
    assert rows.num_rows > 20 and max(len(t) for t in rows["text"]) <= 1000
    assert "".join(rows["text"]) == a.read_text() + b.read_text()
    assert rows[readers.DOC_END].count(True) == 2 and rows[readers.DOC_END][-1]
    args = DataArguments(train_file=[str(tmp_path / "train")], block_size=32)
    data, tokenizer = prepare(args)
    expected = []
    for path in (a, b):
        expected += tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]
        expected.append(tokenizer.eos_token_id)
    got = torch.cat([data.train_tokens, data.eval_tokens]).tolist()
    assert got == expected[: len(data.train_tokens)] + expected[-len(data.eval_tokens) :]
    stream = readers.text_documents([str(a), str(b)], streaming=True)
    streamed, read = take_tokens(stream, tokenizer, "text", len(expected) + 10)
    assert streamed.tolist() == expected and read == rows.num_rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_tabular_formats_with_text_column(tmp_path, fmt):
    import pandas as pd

    rows = [
        {"id": i, "body": f"Document {i}: " + "to be or not to be " * (i % 7 + 3)}
        for i in range(400)
    ]
    frame = pd.DataFrame(rows)
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    args = DataArguments(
        train_file=[str(path)], text_column="body", block_size=16, validation_split_percentage=10
    )
    data, tokenizer = prepare(args)
    # One EOS per document, split between train and the held-out tail.
    eos = tokenizer.eos_token_id
    total_eos = int((data.train_tokens == eos).sum() + (data.eval_tokens == eos).sum())
    assert 390 <= total_eos <= 400  # a few may sit in the dropped final partial block
    assert (
        0.05
        < data.eval_tokens.numel() / (data.train_tokens.numel() + data.eval_tokens.numel())
        < 0.2
    )


def test_missing_text_column_names_the_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "hello"}\n')
    args = DataArguments(train_file=[str(path)], block_size=4)
    with pytest.raises(HfminiError, match="its columns are content"):
        prepare(args)


def test_single_text_file_holds_out_a_tail(tmp_path, seen):
    path = write_lines(tmp_path / "one.txt", 2000)
    args = DataArguments(train_file=[str(path)], block_size=32, validation_split_percentage=10)
    data, tokenizer = prepare(args)
    text = path.read_text()
    held_out = tokenizer.decode(data.eval_tokens.tolist()).removesuffix("<|endoftext|>")
    assert text.endswith(held_out) and "".join(seen) + held_out == text


def test_second_run_reads_the_cache(tmp_path, monkeypatch):
    from hfmini.data import tokens as tokens_module

    path = write_lines(tmp_path / "c.txt", 3000, seed=5)
    args = DataArguments(train_file=[str(path)], block_size=32)
    first, _ = prepare(args)
    tokenized = []
    original = tokens_module._tokenize_batch

    def spy(batch, tokenizer):
        tokenized.append(len(batch["text"]))
        return original(batch, tokenizer)

    monkeypatch.setattr(tokens_module, "_tokenize_batch", spy)
    second, _ = prepare(args)
    assert torch.equal(first.train_tokens, second.train_tokens)
    assert tokenized == []  # read from the datasets cache: nothing was tokenized again
    # The spy does run when the input changes, so the check above can fail.
    path.write_text(path.read_text() + "one more line\n")
    prepare(args)
    assert tokenized


def test_hub_code_path_on_a_local_dataset_folder(tmp_path):
    """dataset_name goes through load_dataset(name) exactly as for a Hub id."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(
            json.dumps({"text": f"Doc {i}. " + "words and more words " * 20}) + "\n"
            for i in range(60)
        )
    )
    (folder / "validation.jsonl").write_text(
        "".join(json.dumps({"text": f"Val {i}. " + "other words " * 20}) + "\n" for i in range(10))
    )
    args = DataArguments(dataset_name=str(folder), block_size=16)
    data, tokenizer = prepare(args)
    assert tokenizer.decode(data.eval_tokens[:20].tolist()).startswith("Val 0. other words")


def test_eval_tokens_from_a_validation_file(tmp_path):
    val = write_lines(tmp_path / "v.txt", 50)
    data, tokenizer = prepare(DataArguments(block_size=64), vocab_size=400)
    tokens = prepare_eval_tokens(
        DataArguments(train_file=[str(val)], validation_file=[str(val)]), tokenizer
    )
    assert tokenizer.decode(tokens.tolist()) == val.read_text() + "<|endoftext|>"
    # The built-in corpus: validation is the three held-out plays.
    assert data.eval_tokens.numel() > 50_000


@pytest.mark.parametrize("name", ["docs.jsonl.gz", "docs.json.zst", "docs.jsonl.bz2", "docs.arrow"])
def test_what_datasets_reads_is_accepted(tmp_path, name):
    """Compressed JSON lines and Arrow files train like plain .jsonl: the same token stream."""
    import bz2
    import gzip

    import zstandard
    from datasets import Dataset

    rows = [
        {"text": f"Document {i}: " + "now is the winter of our discontent " * 4} for i in range(80)
    ]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(plain.read_bytes()))
    elif name.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    elif name.endswith(".bz2"):
        path.write_bytes(bz2.compress(plain.read_bytes()))
    else:
        Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
        (arrow,) = (tmp_path / "saved").glob("*.arrow")
        arrow.rename(path)
    args = DataArguments(train_file=[str(path)], block_size=16)
    expected, _ = prepare(DataArguments(train_file=[str(plain)], block_size=16))
    data, _ = prepare(args)
    assert torch.equal(data.train_tokens, expected.train_tokens)


def test_a_file_datasets_cannot_read_as_text_is_refused(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(HfminiError, match="picture.png is not a text format that datasets reads"):
        prepare(DataArguments(train_file=[str(path)], block_size=16))


def test_every_kind_of_training_data_has_the_whole_interface():
    """The loop reads training data only through TrainingData; each kind provides all of it."""
    from hfmini.data.blocks import PreparedData
    from hfmini.data.packing import PreparedExamples
    from hfmini.data.streaming import StreamingData
    from hfmini.data.training_data import TrainingData, ValidationSet

    def members(protocol) -> set[str]:
        return {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)

    for kind in (PreparedData, PreparedExamples, StreamingData):
        fields = getattr(kind, "__dataclass_fields__", {})
        missing = {m for m in members(TrainingData) if not hasattr(kind, m) and m not in fields}
        assert not missing, f"{kind.__name__} lacks {missing}"
        validation = kind.validation.fget.__annotations__["return"]
        assert validation in ("TokenValidation", "ExampleValidation"), validation
    from hfmini.data.blocks import TokenValidation
    from hfmini.data.packing import ExampleValidation

    for validation_set in (TokenValidation, ExampleValidation):
        assert members(ValidationSet) <= set(vars(validation_set))


def llama_style_tokenizer(folder) -> str:
    """A tiny local tokenizer whose post-processor puts <s> before every text, as Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(["thou art the king, good night sweet prince"] * 50, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_documents_and_text_prompts_start_with_the_bos_a_llama_style_tokenizer_adds(tmp_path):
    """A tokenizer that adds BOS when it encodes a text gets it once per document (not per
    piece or chunk) and before a text prompt; GPT-2-style tokenizers add none (token counts of
    the other tests)."""
    from hfmini.data.tokens import bos_ids

    name = llama_style_tokenizer(tmp_path / "tok")
    model = ModelArguments(tokenizer_name=name)
    a = write_lines(tmp_path / "train" / "a.txt", 300, seed=1)
    write_lines(tmp_path / "train" / "b.txt", 300, seed=2)
    args = DataArguments(train_file=[str(tmp_path / "train")], block_size=32)
    data, tokenizer = prepare_data(Config(args, model, TrainArguments()))
    bos = tokenizer.bos_token_id
    assert bos_ids(tokenizer) == [bos]
    tokens = torch.cat([data.train_tokens, data.eval_tokens])
    assert data.train_tokens[0] == bos and int((tokens == bos).sum()) == 2
    first = tokenizer(a.read_text())["input_ids"]  # as the tokenizer encodes it for its model
    assert data.train_tokens[: len(first)].tolist() == first
    rows = [{"prompt": f"question {i}\n", "completion": f"answer {i}"} for i in range(40)]
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = DataArguments(train_file=[str(path)], block_size=32)
    data, tokenizer = prepare_data(Config(args, model, TrainArguments()))
    example = data.train_sequences[0]
    assert example["input_ids"][0] == bos and example["labels"][0] == -100
    assert int((example["input_ids"] == bos).sum()) == 1
