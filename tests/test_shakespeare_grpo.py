"""The shakespeare-grpo recipe: its prompt-only data, its reward functions, and compare.py's
answer to a missing model."""

import doctest
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

from hfmini.data.shakespeare import VALIDATION_PLAYS, grpo_prompts, preference_pairs
from hfmini.shakespeare import main

RECIPE = REPO / "recipes" / "shakespeare-grpo"
PLAYS = ["hamlet", "macbeth", "othello"]
TEN = "But, soft! what light through yonder window breaks?"  # 10 syllables
FIVE = "It is the east, and"  # 5 syllables


def load_rewards():
    """rewards.py as the trainer loads it: a file, not a package module."""
    spec = importlib.util.spec_from_file_location("shakespeare_grpo_rewards", RECIPE / "rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rewards = load_rewards()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, list[dict]]:
    """The prompts as `python -m hfmini.shakespeare --grpo_prompts` writes them (all plays)."""
    folder = tmp_path_factory.mktemp("grpo-data")
    assert main(["--grpo_prompts", "--output_dir", str(folder)]) == 0
    return {
        split: [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "validation")
    }


def test_rows_are_trl_prompt_only_conversations_with_the_reward_columns(written):
    for rows in written.values():
        assert len(rows) > 500
        for row in rows:
            # No answer column: the trainer reads a prompt and nothing to imitate as GRPO data.
            assert set(row) == {"prompt", "answerer", "play", "reply"}
            system, user = row["prompt"]
            assert (system["role"], user["role"]) == ("system", "user")
            assert system["content"].startswith(f"You are {row['answerer']} in ")
            assert user["content"].strip() and row["reply"].strip()
            assert len(user["content"]) + len(row["reply"]) <= 160  # the default max_chars


def test_validation_prompts_come_only_from_the_held_out_plays(written):
    plays = {split: {r["play"] for r in rows} for split, rows in written.items()}
    assert plays["validation"] == set(VALIDATION_PLAYS)
    assert not plays["train"] & plays["validation"] and len(plays["train"]) == 35


def test_the_prompts_are_the_exchanges_the_preference_pairs_are_cut_from():
    prompts = [json.dumps(r["prompt"]) for r in grpo_prompts(PLAYS, max_chars=240)]
    pairs = [json.dumps(r["prompt"]) for r in preference_pairs(PLAYS, max_chars=240)]
    # The pairs leave out short replies (MIN_REPLY_CHARS); the prompts keep every exchange.
    assert set(pairs) <= set(prompts) and len(prompts) > len(pairs)


def test_a_ten_syllable_line_scores_1_and_a_five_syllable_line_half():
    assert rewards.line_syllables(TEN) == 10 and rewards.line_syllables(FIVE) == 5
    got = rewards.scansion(None, [TEN, FIVE, f"{TEN}\n{FIVE}"], None)
    assert got == pytest.approx([1.0, 0.5, 0.75])


def test_chat_and_string_completions_score_alike_and_empty_lines_are_ignored():
    texts = [TEN, f"\n{FIVE}\n\n  \n", "Ay, my lord.\n-- !\nWhat, Curio?"]
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    ids = [[1, 2]] * len(texts)
    for fn in (rewards.scansion, rewards.known_words, rewards.ends_turn):
        assert fn(None, chat, ids) == fn(None, texts, ids)
    assert rewards.scansion(None, texts[1:2], None) == [0.5]


def test_an_empty_completion_scores_0():
    for completion in ("", [{"role": "assistant", "content": ""}], " \n\n", "?!"):
        assert rewards.scansion(None, [completion], None) == [0.0]
        assert rewards.known_words(None, [completion], None) == [0.0]


def test_words_outside_the_dictionary_count_by_their_vowels_and_score_unknown():
    # "turn'd" and "o'er" are elisions the dictionary lacks: their apostrophes drop a vowel.
    assert [rewards.word_syllables(w) for w in ("turn'd", "o'er", "conine")] == [1, 1, 2]
    assert rewards.known_words(None, ["Good morrow, mhar lord."], None) == [0.75]


def test_ends_turn_reads_the_completion_ids():
    limit = rewards.MAX_COMPLETION_LENGTH
    ids = [[5, 2], list(range(limit - 1)), list(range(limit))]
    assert rewards.ends_turn(None, ["a", "b", "c"], ids) == [1.0, 1.0, 0.0]


def test_the_docstring_examples_hold():
    assert doctest.testmod(rewards).failed == 0


def run_compare(*argv: str) -> subprocess.CompletedProcess:
    script = RECIPE / "compare.py"
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)


@pytest.mark.parametrize(
    "present, target", [((), "chat-recipe"), (("shakespeare-chat",), "grpo-recipe")]
)
def test_compare_on_a_missing_model_is_one_line_naming_its_make_target(tmp_path, present, target):
    for folder in present:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.safetensors").touch()
    done = run_compare(str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"make {target}" in lines[0]
