"""dataset_mixture: each source keeps round(weight × rows) rows, the mixture trains end to end, and
every mistake is one line before any training."""

import json
import logging
from collections import Counter

import pytest
from conftest import assert_eval_reproduces_report, tiny_run_args, train_error, write_lines

from hfmini.config import DataArguments, parse_config
from hfmini.config.mixture import MixtureSource, parse_entry
from hfmini.data.sources import load_raw
from hfmini.errors import HfminiError


def write_jsonl(path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def sources(tmp_path) -> dict:
    """A folder of 4 .txt files (4 rows), a .jsonl of 40 rows with an extra column, and a dataset
    folder (train 10 rows, validation 3, its text in `content`) read through load_dataset."""
    books = tmp_path / "books"
    for i in range(4):
        write_lines(books / f"{i}.txt", 150, seed=i)
    notes = write_jsonl(
        tmp_path / "notes.jsonl",
        [{"id": i, "text": f"Note {i}. " + "words and more words " * 10} for i in range(40)],
    )
    hub = tmp_path / "hub_like"
    write_jsonl(
        hub / "train.jsonl",
        [{"content": f"Doc {i}. " + "other words " * 30} for i in range(10)],
    )
    write_jsonl(
        hub / "validation.jsonl", [{"content": f"Val {i}. " + "held " * 30} for i in range(3)]
    )
    return {"books": books, "notes": notes, "hub": hub}


def test_parse_entry():
    assert parse_entry(" dataset=wikitext , config=raw, split=test,text_column=t,weight=2.5") == (
        MixtureSource("dataset", "wikitext", "raw", "test", "t", 2.5)
    )
    assert parse_entry("file=data/books") == MixtureSource("file", "data/books")


def test_weights_keep_that_fraction_of_each_source(sources, caplog):
    caplog.set_level(logging.INFO, logger="hfmini.data.prepare")
    args = DataArguments(
        dataset_mixture=[
            f"file={sources['books']},weight=1.0",
            f"file={sources['notes']},weight=0.5",
        ]
    )
    raw, origins = load_raw(args)
    texts = raw["train"]["text"]
    books = {p.read_text() for p in sources["books"].iterdir()}
    notes = [t for t in texts if t.startswith("Note ")]
    assert sorted(t for t in texts if t in books) == sorted(books)  # weight 1: every row, once
    assert len(notes) == len(set(notes)) == 20  # weight 0.5 of 40 rows, none repeated
    assert len(texts) == 24 and raw["train"].column_names == ["text"]  # only the text column
    assert "validation" not in raw  # files have none: data.py holds out the mixture's tail
    assert origins == {"train": ("dataset_mixture", None)}
    assert f"{sources['notes']}: 20 of 40 rows kept (weight 0.5)" in caplog.text
    # Deterministic: the same rows in the same order on every load (the caches and resume rely on it).
    assert load_raw(args)[0]["train"]["text"] == texts


def test_weights_above_one_repeat_rows_and_dataset_sources_bring_validation(sources):
    args = DataArguments(
        dataset_mixture=[f"dataset={sources['hub']},text_column=content,weight=2.5"]
    )
    raw, origins = load_raw(args)
    counts = Counter(raw["train"]["text"])
    assert raw["train"].num_rows == 25 and len(counts) == 10
    assert sorted(counts.values()) == [2] * 5 + [3] * 5  # each row floor or ceil of the weight
    # The source's own validation split, unweighted, renamed to the run's text_column.
    assert [t[:5] for t in raw["validation"]["text"]] == ["Val 0", "Val 1", "Val 2"]
    assert origins["validation"] == ("dataset_mixture", None)


def test_validation_file_with_a_mixture(sources, tmp_path):
    val = write_lines(tmp_path / "val.txt", 40, seed=9)
    args = DataArguments(
        dataset_mixture=[f"file={sources['notes']},weight=1.5"], validation_file=[str(val)]
    )
    raw, origins = load_raw(args)
    assert raw["train"].num_rows == 60 and raw["validation"]["text"] == [val.read_text()]
    assert origins["validation"] == ("validation_file", [str(val)])


def test_a_mixture_trains_end_to_end(sources, tmp_path, capsys):
    out = tmp_path / "out"
    mixture = [
        f"file={sources['books']}",
        f"dataset={sources['hub']},text_column=content,weight=0.5",
    ]
    args = tiny_run_args(
        out, 2, "--dataset_mixture", *mixture, "--vocab_size", "300", "--block_size", "32"
    )
    from hfmini.training.trainer import run_training

    run_training(parse_config(args))
    assert (out / "model.safetensors").is_file()
    # `hfmini eval` rebuilds the same mixture from training_config.yaml and scores the same text.
    assert_eval_reproduces_report(out, capsys)


def test_yaml_recipe_with_a_mixture_parses(tmp_path):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(
        "dataset_mixture:\n"
        "  - file=data/books,weight=1.0\n"
        "  - dataset=Salesforce/wikitext,config=wikitext-2-raw-v1,text_column=text,weight=0.25\n"
    )
    config = parse_config(["--config", str(recipe)])
    assert config.data.dataset_mixture == [
        "file=data/books,weight=1.0",
        "dataset=Salesforce/wikitext,config=wikitext-2-raw-v1,text_column=text,weight=0.25",
    ]
    override = parse_config(["--config", str(recipe), "--dataset_mixture", "file=a", "file=b"])
    assert override.data.dataset_mixture == ["file=a", "file=b"]


@pytest.mark.parametrize(
    "entries, extra, expected",
    [
        (["file={books}"], ["--train_file", "{books}"], "dataset_mixture and train_file both name"),
        (["file={books}"], ["--dataset_name", "x"], "dataset_mixture and dataset_name both name"),
        (["file={books},weight=0"], [], "weight must be a positive number"),
        (["file={books},weight=-1"], [], "weight must be a positive number"),
        (["file={books},weight=lots"], [], "weight 'lots' is not a number"),
        (["file={books},wieght=2"], [], "unknown key 'wieght'; did you mean 'weight'?"),
        (["file={books},split=test"], [], "config and split go with dataset=ID"),
        (["{books}"], [], "is not key=value"),
        (["file={books}"], ["--streaming", "true"], "streaming does not read a dataset_mixture"),
        (["file={tmp}/nowhere"], [], "dataset_mixture file {tmp}/nowhere does not exist"),
        (["dataset=someone/not-cached"], [], "the Hub cannot be reached (offline mode)"),
        (["dataset={hub},split=nope"], [], "has no split 'nope'; its splits are train, validation"),
        (
            ["file={books}", "dataset={hub}"],
            [],
            "dataset_mixture source {hub} has no column 'text'; its columns are content",
        ),
        (
            ["file={books},weight=2", "file={notes}"],
            [],
            "weight 2 repeats the rows of {books}, and validation would be held out",
        ),
        (["file={notes},weight=0.001"], [], "weight 0.001 keeps none of its 40 rows"),
    ],
)
def test_mistakes_are_one_line(capsys, tmp_path, sources, entries, extra, expected):
    names = {key: str(path) for key, path in sources.items()} | {"tmp": str(tmp_path)}
    argv = ["--dataset_mixture", *(e.format(**names) for e in entries)]
    argv += [a.format(**names) for a in extra]
    quick = tiny_run_args(tmp_path / "out", 2)
    assert expected.format(**names) in train_error(capsys, *quick, *argv)


def test_a_yaml_mapping_entry_says_what_to_write(capsys, tmp_path):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text("dataset_mixture:\n  - {file: data/books, weight: 0.5}\n")
    message = train_error(capsys, "--config", str(recipe))
    assert "is a mapping; entries are strings such as 'file=data/books,weight=0.5'" in message


def test_an_empty_mixture_built_in_python_is_refused():
    with pytest.raises(HfminiError, match="dataset_mixture is empty"):
        DataArguments(dataset_mixture=[])
