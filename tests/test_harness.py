"""`hfmini eval DIR --tasks`: lm-evaluation-harness on a saved model. Its own task,
hfmini_validation, scores the bits per byte `hfmini eval` scores; other tasks are lm-eval's."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, reset_accelerate, tiny_run_args, write_lines

pytest.importorskip("lm_eval")

from huggingface_hub import ModelCard  # noqa: E402

from hfmini.cli import main as cli_main  # noqa: E402
from hfmini.config import HARNESS_DEFAULT_TASK, parse_config  # noqa: E402

KEY = f"{HARNESS_DEFAULT_TASK}/bits_per_byte"


def ascii_lines(path, n_lines: int, seed: int = 0):
    """conftest's verse without its non-ASCII words: no block edge can split a character."""
    write_lines(path, n_lines, seed)
    text = path.read_text(encoding="utf-8").encode("ascii", "ignore").decode()
    path.write_text(text.replace("  ", " "), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A few steps of the tiny recipe on local ASCII verse: its validation text is 60 lines,
    22 blocks of 32 tokens, two of them starting at a newline."""
    from hfmini.training.trainer import run_training

    folder = tmp_path_factory.mktemp("harness")
    train = ascii_lines(folder / "train.txt", 150)
    val = ascii_lines(folder / "val.txt", 60, seed=4)
    data = ["--train_file", str(train), "--validation_file", str(val)]
    out = folder / "out"
    run_training(
        parse_config(tiny_run_args(out, 4, *data, "--vocab_size", "300", "--block_size", "32"))
    )
    reset_accelerate()
    return out


def eval_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert cli_main(["eval", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def eval_error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli_main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_every_block_round_trips_and_whitespace_first_blocks_count(tiny_model):
    """The documents are the blocks `hfmini eval` scores, none left out, and their bytes sum to
    its eval_bytes; blocks that start with a whitespace token are among them."""
    from hfmini.data.blocks import block_ranges
    from hfmini.data.prepare import prepare_eval_tokens
    from hfmini.models.sampling import load_model_and_tokenizer
    from hfmini.training.evaluation import eval_data_args, evaluate_model
    from hfmini.training.harness import block_documents

    _, tokenizer = load_model_and_tokenizer(tiny_model, device="cpu")
    tokens = prepare_eval_tokens(eval_data_args(tiny_model, None, None), tokenizer)
    documents, skipped = block_documents(tokens, 32, tokenizer)
    assert skipped == 0
    assert len(documents) == len(block_ranges(tokens.numel(), 32))
    assert sum(d["bytes"] for d in documents) == evaluate_model(tiny_model)["eval_bytes"]
    assert any(not d["context"].strip() for d in documents)


def test_harness_bits_per_byte_is_hfmini_eval(tiny_model, capsys):
    ours = eval_json(capsys, str(tiny_model))["bits_per_byte"]
    before = json.loads((tiny_model / "eval_results.json").read_text())
    harness = eval_json(capsys, str(tiny_model), "--tasks")
    with capsys.disabled():
        print(f"\nbits per byte: hfmini eval {ours!r}, lm-eval {harness[KEY]!r}")
    assert abs(harness[KEY] - ours) < 5e-5
    assert harness[f"{HARNESS_DEFAULT_TASK}/skipped_blocks"] == 0

    recorded = json.loads((tiny_model / "eval_results.json").read_text())
    assert recorded[KEY] == harness[KEY]
    assert {k: recorded[k] for k in before} == before  # training's figures kept
    card = ModelCard.load(tiny_model / "README.md")
    ours_in_card = [r for r in card.data.eval_results if "lm-evaluation-harness" in r.metric_name]
    assert [(r.metric_type, r.metric_value) for r in ours_in_card] == [
        ("bits_per_byte", round(harness[KEY], 4))
    ]
    assert "lm-evaluation-harness" in (tiny_model / "README.md").read_text().split("---")[1]

    # Again: the card and eval_results.json are updated in place, not appended to.
    eval_json(capsys, str(tiny_model), "--tasks", HARNESS_DEFAULT_TASK, "--limit", "5")
    card = ModelCard.load(tiny_model / "README.md")
    assert sum("lm-evaluation-harness" in r.metric_name for r in card.data.eval_results) == 1
    assert len(card.data.eval_results) == len(ours_in_card) + 3  # training's loss, ppl, bpb


def test_blocks_that_split_a_character_are_left_out_of_both_sums(tiny_model, tmp_path, capsys):
    """Validation text in other scripts (über, 日本), in bytes of a tokenizer trained on ASCII:
    a block edge may split a character, and text cannot hold half of one, so lm-eval cannot be
    given that block; it is left out, and lm-eval's figure is hfmini's over the other blocks."""
    import math
    import shutil

    import torch
    import torch.nn.functional as F
    import yaml

    from hfmini.data.prepare import prepare_eval_tokens
    from hfmini.models.sampling import load_model_and_tokenizer
    from hfmini.models.size import context_length
    from hfmini.models.tokenizer import token_byte_lengths
    from hfmini.training.evaluation import eval_data_args
    from hfmini.training.harness import block_documents

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    recorded = yaml.safe_load((folder / "training_config.yaml").read_text())
    recorded["validation_file"] = [str(write_lines(tmp_path / "other.txt", 60, seed=4))]
    (folder / "training_config.yaml").write_text(yaml.safe_dump(recorded))

    model, tokenizer = load_model_and_tokenizer(folder, device="cpu")
    block = context_length(model.config)
    tokens = prepare_eval_tokens(eval_data_args(folder, None, None), tokenizer)
    documents, skipped = block_documents(tokens, block, tokenizer)
    kept = {d["context"] + d["continuation"] for d in documents}
    nll = n_bytes = 0.0
    token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, tokens.numel(), block):
            ids = tokens[start : start + block].long()
            if len(ids) < 2 or tokenizer.decode(ids) not in kept:
                continue
            logits = model(ids[None]).logits[0, :-1].double()
            nll += F.cross_entropy(logits, ids[1:], reduction="sum").item()
            n_bytes += token_bytes[ids[1:]].sum().item()

    harness = eval_json(capsys, str(folder), "--tasks")
    with capsys.disabled():
        print(f"\n{skipped} of {skipped + len(documents)} blocks left out")
    assert skipped > 0 and len(documents) > 0
    assert harness[f"{HARNESS_DEFAULT_TASK}/skipped_blocks"] == skipped
    assert abs(harness[KEY] - nll / n_bytes / math.log(2)) < 5e-5


@pytest.mark.slow
def test_harness_as_a_command(tiny_model):
    """The console command, in a process of its own: stdout is the results as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "hfmini.cli", "eval", str(tiny_model), "--tasks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    recorded = json.loads((tiny_model / "eval_results.json").read_text())
    assert abs(results[KEY] - recorded["bits_per_byte"]) < 5e-5


@pytest.mark.slow
def test_unknown_task_is_one_line(tiny_model, capsys):
    line = eval_error(capsys, str(tiny_model), "--tasks", "hellaswagg")
    assert "unknown lm-eval task 'hellaswagg' (did you mean hellaswag" in line


@pytest.mark.slow
def test_a_task_whose_data_is_not_cached_offline_is_one_line(tiny_model, capsys):
    """conftest.py sets HF_DATASETS_OFFLINE and a fresh HF_HOME: lambada is not there."""
    line = eval_error(capsys, str(tiny_model), "--tasks", "lambada_openai", "--limit", "2")
    assert line == (
        "error: --tasks lambada_openai needs its dataset from the Hub: unset HF_DATASETS_OFFLINE "
        f"and connect, or use --tasks {HARNESS_DEFAULT_TASK}"
    )


def test_without_lm_eval_the_error_says_what_to_install(tiny_model, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    assert "pip install 'hfmini[eval]'" in eval_error(capsys, str(tiny_model), "--tasks")


def test_bad_task_list_and_limit_are_one_line(tiny_model, capsys):
    assert "--tasks needs task names" in eval_error(capsys, str(tiny_model), "--tasks", ",")
    line = eval_error(capsys, str(tiny_model), "--tasks", HARNESS_DEFAULT_TASK, "--limit", "0")
    assert "limit must be positive" in line
