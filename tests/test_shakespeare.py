import json

import pytest

from hfmini.errors import HfminiError
from hfmini.shakespeare import (
    VALIDATION_PLAYS,
    load_plays,
    main,
    markdown_to_text,
    play_groups,
    write_play_groups,
)

SAMPLE = """# Macbeth

## ACT I

## SCENE I. A desert place.

_Thunder and lightning. Enter three Witches_

**First Witch**<BR>
When shall we three meet again<BR>
In thunder, lightning, or in rain?

**Second Witch**<BR>
When the hurlyburly's done, _Aside_<BR>
When the battle's lost and won.

_Exeunt_
""".replace("<BR>", "  ")  # markdown hard line breaks


def test_markdown_to_classic_layout():
    text = markdown_to_text(SAMPLE)
    assert text == (
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
        "Second Witch:\nWhen the hurlyburly's done,\nWhen the battle's lost and won.\n"
    )


def test_validation_is_whole_held_out_plays():
    splits = load_plays()
    assert set(splits["validation"]) == set(VALIDATION_PLAYS)
    assert not set(splits["validation"]) & set(splits["train"])
    assert len(splits["train"]) == 35
    romeo = splits["train"]["romeo-and-juliet"]
    assert "\nROMEO:\n" in romeo and "**" not in romeo and "#" not in romeo
    train_bytes = sum(len(t.encode()) for t in splits["train"].values())
    val_bytes = sum(len(t.encode()) for t in splits["validation"].values())
    assert 0.05 < val_bytes / (train_bytes + val_bytes) < 0.10


def test_play_groups_are_iambics_folders():
    groups = play_groups()
    assert set(groups) == {"comedies", "histories", "problems", "roman", "romances", "tragedies"}
    assert sum(map(len, groups.values())) == 38 and "hamlet" in groups["tragedies"]


def test_a_group_is_written_with_whole_held_out_plays(tmp_path):
    folder = write_play_groups(["comedies"], ["twelfth-night", "much-ado-about-nothing"], tmp_path)
    rows = {
        split: [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation")
    }
    assert [r["play"] for r in rows["validation"]] == ["twelfth-night", "much-ado-about-nothing"]
    assert {r["play"] for r in rows["train"]} == set(play_groups()["comedies"]) - {
        "twelfth-night",
        "much-ado-about-nothing",
    }
    plays = load_plays()
    assert rows["validation"][0]["text"] == plays["validation"]["twelfth-night"]


def test_play_group_mistakes_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(HfminiError, match="unknown play group 'comedy': choose among comedies"):
        write_play_groups(["comedy"], ["hamlet"], tmp_path)
    with pytest.raises(HfminiError, match="validation play 'hamlet' is not in comedies"):
        write_play_groups(["comedies"], ["hamlet"], tmp_path)
    args = ["--groups", "roman", "--validation", "hamlet", "--output_dir", str(tmp_path)]
    assert main(args) == 2
    assert (
        capsys.readouterr().err == "error: validation play 'hamlet' is not in roman: choose "
        "among antony-and-cleopatra, coriolanus, julius-caesar, titus-andronicus\n"
    )
