"""The shakespeare-dpo recipe's data: preference pairs cut from the plays, and compare.py's
answer to a missing run."""

import json
import subprocess
import sys
from collections import Counter

import pytest
from conftest import REPO

from hfmini.data.shakespeare import MIN_REPLY_CHARS, VALIDATION_PLAYS, preference_pairs
from hfmini.shakespeare import main

PLAYS = ["hamlet", "macbeth", "othello"]
MAX_CHARS = 240


def write_pairs(folder, *extra: str) -> dict[str, list[dict]]:
    argv = ["--preference_pairs", "--max_chars", str(MAX_CHARS), "--output_dir", str(folder)]
    assert main([*argv, *extra]) == 0
    return {
        split: [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation")
    }


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory) -> dict[str, list[dict]]:
    """The pairs the recipe trains and scores on, written once by the CLI as `make dpo-recipe`
    writes them: rejected is the chosen reply's words shuffled."""
    return write_pairs(tmp_path_factory.mktemp("dpo-data"))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, list[dict]]:
    """`--rejected other_reply`: another character's reply from another play."""
    return write_pairs(tmp_path_factory.mktemp("dpo-data-other"), "--rejected", "other_reply")


def answer(row: dict, side: str) -> str:
    return row[side][0]["content"]


@pytest.mark.parametrize("rejected", ["shuffled", "other_reply"])
def test_pairs_are_deterministic_given_a_seed(rejected):
    first = preference_pairs(PLAYS, MAX_CHARS, seed=0, rejected=rejected)
    assert first == preference_pairs(PLAYS, MAX_CHARS, seed=0, rejected=rejected)
    other = preference_pairs(PLAYS, MAX_CHARS, seed=1, rejected=rejected)
    # The seed picks the order of the words, or among replies of equal length; the prompts and
    # chosen answers stay.
    assert [(r["prompt"], r["chosen"]) for r in other] == [
        (r["prompt"], r["chosen"]) for r in first
    ]
    assert [r["rejected"] for r in other] != [r["rejected"] for r in first]


def test_rows_are_trl_conversational_pairs_within_the_cap(written):
    for rows in written.values():
        assert len(rows) > 100
        for row in rows:
            system, user = row["prompt"]
            assert (system["role"], user["role"]) == ("system", "user")
            assert system["content"].startswith("You are ") and user["content"].strip()
            assert [m["role"] for m in row["chosen"] + row["rejected"]] == ["assistant"] * 2
            chosen, rejected = answer(row, "chosen"), answer(row, "rejected")
            assert chosen.strip() and rejected.strip() and chosen != rejected
            assert min(len(chosen), len(rejected)) >= MIN_REPLY_CHARS
            assert len(user["content"]) + max(len(chosen), len(rejected)) <= MAX_CHARS
            assert row["rejected_play"] != row["play"]


def test_a_shuffled_reply_holds_the_same_words_in_the_same_lines(shuffled):
    for rows in shuffled.values():
        assert len(rows) > 100
        for row in rows:
            chosen, rejected = answer(row, "chosen"), answer(row, "rejected")
            assert chosen != rejected and sorted(chosen.split()) == sorted(rejected.split())
            assert [len(x.split()) for x in chosen.split("\n")] == [
                len(x.split()) for x in rejected.split("\n")
            ]
    plays = {split: {r["play"] for r in rows} for split, rows in shuffled.items()}
    assert plays["validation"] == set(VALIDATION_PLAYS) and not plays["train"] & plays["validation"]


def test_rejected_answers_match_the_chosen_in_length_and_come_from_the_same_pool(written):
    for rows in written.values():
        gaps = [len(answer(r, "rejected")) - len(answer(r, "chosen")) for r in rows]
        assert sum(map(abs, gaps)) / len(gaps) < 2 and max(map(abs, gaps)) <= 30
        # No length cue: rejected answers are not longer or shorter on average.
        assert abs(sum(gaps) / len(gaps)) < 0.2
        # Replies are swapped between pairs: each is rejected as often as it is chosen (but for
        # the few rows left without a partner, 13 of the 551 held out).
        chosen = Counter(answer(r, "chosen") for r in rows)
        rejected = Counter(answer(r, "rejected") for r in rows)
        assert (chosen - rejected).total() < 0.05 * len(rows)
        assert max(rejected.values()) <= max(chosen.values()) + 1


def test_validation_pairs_come_only_from_the_held_out_plays(written):
    plays = {
        split: {r["play"] for r in rows} | {r["rejected_play"] for r in rows}
        for split, rows in written.items()
    }
    assert plays["validation"] == set(VALIDATION_PLAYS)
    assert not plays["train"] & plays["validation"]
    assert len(plays["train"]) == 35


def test_the_cli_prints_the_counts(tmp_path, capsys):
    argv = ["--preference_pairs", "--groups", "romances", "comedies"]
    argv += ["--validation", "the-tempest", "twelfth-night", "--output_dir", str(tmp_path)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(tmp_path / "train.jsonl"),
        str(tmp_path / "validation.jsonl"),
    ]
    assert all(" pairs, " in line for line in lines)
    validation = [json.loads(x) for x in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert {r["play"] for r in validation} == {"the-tempest", "twelfth-night"}


def test_one_held_out_play_is_one_line(tmp_path, capsys):
    """Rejected answers come from another play of the split: one play cannot give any."""
    argv = ["--preference_pairs", "--groups", "romances", "--validation", "the-tempest"]
    assert main([*argv, "--rejected", "other_reply", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least two plays" in err
    assert not (tmp_path / "train.jsonl").exists()


def test_the_cli_takes_one_mode(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--preference_pairs", "--conversations", "--output_dir", str(tmp_path)])
    assert exit_.value.code == 2


def test_compare_on_a_missing_run_is_one_line(tmp_path):
    script = REPO / "recipes" / "shakespeare-dpo" / "compare.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "make dpo-recipe" in lines[0]
