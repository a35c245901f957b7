import json
import re

import pytest

from hfmini.data.shakespeare import (
    VALIDATION_PLAYS,
    _play_paths,
    conversations,
    load_plays,
    markdown_to_text,
    play_groups,
    play_title,
    speeches,
    write_conversations,
    write_play_groups,
)
from hfmini.errors import HfminiError
from hfmini.shakespeare import main

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


def test_speeches_are_per_scene():
    two_scenes = SAMPLE + "\n## SCENE II. A camp.\n\n**DUNCAN**  \nWhat bloody man is that?\n"
    assert speeches(two_scenes) == [
        [
            ("First Witch", "When shall we three meet again\nIn thunder, lightning, or in rain?"),
            ("Second Witch", "When the hurlyburly's done,\nWhen the battle's lost and won."),
        ],
        [("DUNCAN", "What bloody man is that?")],
    ]
    assert play_title(SAMPLE, "macbeth") == "Macbeth"
    assert play_title("no heading", "king-lear") == "King Lear"


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """The default conversations corpus, written once: {split: rows}, and the paths."""
    paths = write_conversations(tmp_path_factory.mktemp("chat"))
    rows = {
        split: [json.loads(line) for line in path.read_text().splitlines()]
        for split, path in paths.items()
    }
    return rows, paths


def test_conversations_are_alternating_turns_of_held_out_plays(chat, capsys):
    rows, _ = chat
    for row in rows["train"] + rows["validation"]:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * ((len(roles) - 1) // 2)
        assert 3 <= len(roles) <= 7
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"])
    assert {r["play"] for r in rows["validation"]} == set(VALIDATION_PLAYS)
    assert not {r["play"] for r in rows["train"]} & set(VALIDATION_PLAYS)
    # Measured: 9389 train, 803 validation with the defaults.
    assert len(rows["train"]) > 8000 and 500 < len(rows["validation"]) < 1500
    assert conversations(["romeo-and-juliet"])[0]["messages"][:3] == [
        {"role": "system", "content": "You are GREGORY in Romeo and Juliet."},
        {"role": "user", "content": "Gregory, o' my word, we'll not carry coals."},
        {"role": "assistant", "content": "No, for then we should be colliers."},
    ]
    assert capsys.readouterr() == ("", "")


def test_every_exchange_is_real_in_one_scene_and_used_once(chat):
    rows, _ = chat
    by_play: dict[str, list[dict]] = {}
    for row in rows["train"] + rows["validation"]:
        by_play.setdefault(row["play"], []).append(row)
    paths = _play_paths()
    for play, play_rows in by_play.items():
        markdown = paths[play].read_text(encoding="utf-8")
        flat = [(n, who, said) for n, scene in enumerate(speeches(markdown)) for who, said in scene]
        start = 0  # rows come in play order, so each is matched after the previous one's speeches
        for row in play_rows:
            answerer = re.fullmatch(r"You are (.+) in .+\.", row["messages"][0]["content"])[1]
            turns = [m["content"] for m in row["messages"][1:]]
            while [said for _, _, said in flat[start : start + len(turns)]] != turns:
                start += 1
                assert start < len(flat), f"{play}: {turns[0][:40]!r}... is not in the play"
            window = flat[start : start + len(turns)]
            assert len({n for n, _, _ in window}) == 1  # one scene
            assert {who for _, who, _ in window[1::2]} == {answerer}
            assert answerer not in {who for _, who, _ in window[::2]}
            start += len(turns)
    user, reply = (m["content"] for m in rows["train"][0]["messages"][1:3])
    text = load_plays()["train"][rows["train"][0]["play"]]
    assert re.search(re.escape(user) + r"\n\n[^\n]+:\n" + re.escape(reply) + "\n", text)


def test_conversations_load_with_datasets(chat, tmp_path):
    from datasets import load_dataset

    rows, paths = chat
    data = load_dataset(
        "json", data_files={k: str(v) for k, v in paths.items()}, cache_dir=str(tmp_path)
    )
    for split in ("train", "validation"):
        assert data[split].num_rows == len(rows[split])
        assert data[split][0]["messages"] == rows[split][0]["messages"]


def test_conversations_cli(tmp_path, capsys):
    args = ["--conversations", "--groups", "roman", "--validation", "julius-caesar"]
    assert main([*args, "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [
        str(tmp_path / "train.jsonl"),
        str(tmp_path / "validation.jsonl"),
    ]
    lines = (tmp_path / "validation.jsonl").read_text().splitlines()
    assert re.fullmatch(rf".*: {len(lines)} conversations, \d+ characters", out[1])
    assert {json.loads(x)["play"] for x in lines} == {"julius-caesar"}
    assert main(["--conversations", "--groups", "roman", "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: validation play 'twelfth-night' is not in")
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path)])  # plays need --groups and --validation
