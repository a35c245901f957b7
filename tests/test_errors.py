"""Every user mistake gets one clear line on stderr, exit status 2, no traceback, nothing lost.

The entry points are called in-process: an unexpected exception (a traceback for the user) fails
the test by propagating.
"""

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, tiny_run_args, write_lines

from hfmini import cli
from hfmini import train as train_module
from hfmini.checkpoint import list_checkpoints, resolve_resume_path
from hfmini.errors import HfminiError


def train_error(capsys, *argv) -> str:
    config = [] if "--config" in argv else ["--config", str(TINY_RECIPE)]
    code = train_module.main([*config, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def cli_error(capsys, *argv) -> str:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture
def quick(tmp_path):
    return tiny_run_args(tmp_path / "out", 4, "--save_steps", "2")


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--max_step", "3"],
            "unknown config key 'max_step' on the command line; did you mean 'max_steps'?",
        ),
        (["--learning_rate", "fast"], "invalid float value: 'fast'"),
        (["--n_embd", "130", "--n_head", "4"], "n_embd 130 is not divisible by n_head 4"),
        (
            ["--block_size", "128", "--n_positions", "64"],
            "block_size 128 is above the model's context n_positions 64",
        ),
        (["--vocab_size", "200"], "vocab_size 200 is too small"),
        (["--max_steps", "-5"], "max_steps must be positive"),
        (["--per_device_train_batch_size", "-1"], "per_device_train_batch_size must be positive"),
        (["--learning_rate", "0"], "learning_rate must be positive"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be positive"),
    ],
)
def test_config_mistakes(capsys, argv, expected):
    assert expected in train_error(capsys, *argv)


def test_unknown_yaml_key(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_size: nano\nwarmup_step: 3\n")
    code = train_module.main(["--config", str(recipe)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'warmup_step' in" in err and "did you mean 'warmup_steps'?" in err


# --- data -----------------------------------------------------------------------------------


def test_missing_file_is_reported_before_any_work(capsys, monkeypatch, quick):
    calls = []
    monkeypatch.setattr("hfmini.tokenizer.train_tokenizer", lambda *a, **k: calls.append(1))
    message = train_error(capsys, *quick, "--train_file", "nowhere/train.txt")
    assert message == "error: train_file nowhere/train.txt does not exist: check the path"
    assert not calls


def test_unreadable_file(capsys, monkeypatch, quick, tmp_path):
    path = write_lines(tmp_path / "locked.txt", 10)
    original = Path.open

    def deny(self, *args, **kwargs):
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    assert "cannot be read (Permission denied): check its permissions" in train_error(
        capsys, *quick, "--train_file", str(path)
    )


def test_empty_file(capsys, quick, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert "is empty: add text" in train_error(
        capsys, *quick, "--train_file", str(tmp_path / "empty.txt")
    )


def test_too_few_tokens_for_a_block(capsys, quick, tmp_path):
    train = write_lines(tmp_path / "t.txt", 400)
    val = tmp_path / "v.txt"
    val.write_text("Short.\n")
    message = train_error(
        capsys,
        *quick,
        "--train_file",
        str(train),
        "--validation_file",
        str(val),
        "--vocab_size",
        "300",
    )
    assert "the validation split has" in message and "fewer than one block of 64" in message
    assert "lower block_size or add validation text" in message


def test_text_column_not_in_data(capsys, quick, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": f"line {i}", "id": i}) + "\n" for i in range(50)))
    message = train_error(capsys, *quick, "--train_file", str(path))
    assert "text_column 'text' is not in the train data; its columns are body, id" in message


def test_malformed_json(capsys, quick, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    assert "check that the files are valid json" in train_error(
        capsys, *quick, "--train_file", str(path)
    )


def test_invalid_utf8_is_replaced_and_counted(tmp_path, caplog):
    from hfmini.config import Config, DataArguments, ModelArguments, TrainArguments
    from hfmini.data import prepare_data

    good = write_lines(tmp_path / "good.txt", 300).read_bytes()
    cut = good.index(b"\n", 500) + 1  # between lines, so no valid character is split
    (tmp_path / "mixed.txt").write_bytes(good[:cut] + b"\xff\xfe\xc3" + good[cut:] + b"\x80")
    args = DataArguments(train_file=[str(tmp_path / "mixed.txt")], block_size=16)
    config = Config(args, ModelArguments(vocab_size=300), TrainArguments())
    data, tokenizer = prepare_data(config)
    assert "4 bytes that are not valid UTF-8 in 1 file(s)" in caplog.text
    text = tokenizer.decode(data.train_tokens.tolist() + data.eval_tokens.tolist())
    assert "\ufffd" in text


def test_hub_dataset_while_offline(capsys, quick, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    message = train_error(capsys, *quick, "--dataset_name", "someone/not-cached-dataset")
    assert "the Hub cannot be reached (offline mode)" in message and "--train_file" in message


# --- output and checkpoints -----------------------------------------------------------------


def test_output_dir_is_a_file(capsys, quick, tmp_path):
    (tmp_path / "out").write_text("keep me")
    assert "is a file" in train_error(capsys, *quick)
    assert (tmp_path / "out").read_text() == "keep me"


@pytest.fixture
def finished_run(tmp_path, quick):
    assert train_module.main(["--config", str(TINY_RECIPE), *quick]) == 0
    return tmp_path / "out"


def test_finished_model_is_never_overwritten(capsys, finished_run, quick):
    before = (finished_run / "model.safetensors").read_bytes()
    capsys.readouterr()
    message = train_error(capsys, *quick)
    assert "already holds a run" in message and "--overwrite_output_dir" in message
    message = train_error(capsys, *quick, "--resume_from_checkpoint", "latest")
    assert "already holds a finished model" in message
    assert (finished_run / "model.safetensors").read_bytes() == before


def test_resume_from_something_that_is_not_a_checkpoint(capsys, quick, tmp_path):
    (tmp_path / "notes").mkdir()
    message = train_error(capsys, *quick, "--resume_from_checkpoint", str(tmp_path / "notes"))
    assert "is not an hfmini checkpoint" in message


def _interrupted_copy(finished_run, tmp_path):
    """The same run as if stopped after step 2: its checkpoints, no final model."""
    copy = tmp_path / "stopped"
    (copy / "checkpoints").mkdir(parents=True)
    for ckpt in list_checkpoints(finished_run):
        shutil.copytree(ckpt, copy / "checkpoints" / ckpt.name)
    return copy


def test_truncated_checkpoint_is_named_and_latest_falls_back(capsys, finished_run, tmp_path):
    copy = _interrupted_copy(finished_run, tmp_path)
    # Steps 2 and 4 would be saved, but step 4 is the last step: only step-2 exists. Add a newer,
    # truncated one.
    newest = copy / "checkpoints" / "step-3"
    shutil.copytree(copy / "checkpoints" / "step-2", newest)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert resolve_resume_path(copy, "latest") == copy / "checkpoints" / "step-2"
    with pytest.raises(HfminiError, match="step-3 is damaged"):
        resolve_resume_path(copy, str(newest))


def test_damaged_optimizer_state_is_an_error_not_a_traceback(capsys, finished_run, tmp_path, quick):
    copy = _interrupted_copy(finished_run, tmp_path)
    (copy / "checkpoints" / "step-2" / "optimizer.bin").write_bytes(b"garbage")
    args = [a if a != str(tmp_path / "out") else str(copy) for a in quick]
    message = train_error(capsys, *args, "--resume_from_checkpoint", "latest")
    assert "step-2 could not be loaded" in message


def test_full_disk_keeps_the_previous_checkpoint(capsys, monkeypatch, quick, tmp_path):
    import accelerate

    original = accelerate.Accelerator.save_state
    calls = []

    def fail_second(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", fail_second)
    message = train_error(capsys, *quick, "--max_steps", "6")
    assert "could not write checkpoint" in message and "No space left on device" in message
    out = tmp_path / "out"
    assert [p.name for p in list_checkpoints(out)] == ["step-2"]
    assert resolve_resume_path(out, "latest") == out / "checkpoints" / "step-2"
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_tokenizer_that_does_not_match_the_resumed_model(capsys, finished_run, tmp_path, quick):
    from hfmini.tokenizer import train_tokenizer

    other = train_tokenizer(iter(["completely different text"] * 10), 300, 64)
    other.save_pretrained(tmp_path / "other_tok")
    copy = _interrupted_copy(finished_run, tmp_path)
    args = [a if a != str(tmp_path / "out") else str(copy) for a in quick]
    message = train_error(
        capsys,
        *args,
        "--resume_from_checkpoint",
        "latest",
        "--tokenizer_name",
        str(tmp_path / "other_tok"),
    )
    assert "does not match the one the checkpoint was trained with" in message


# --- generation and evaluation --------------------------------------------------------------


def test_generate_and_eval_without_a_model(capsys, tmp_path):
    assert "holds no model (no config.json)" in cli_error(capsys, "generate", str(tmp_path))
    assert "holds no model (no config.json)" in cli_error(capsys, "eval", str(tmp_path))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--max_new_tokens", "0"], "max_new_tokens must be positive"),
        (["--temperature", "-0.5"], "temperature must be >= 0 (0 means greedy)"),
    ],
)
def test_generate_bad_sampling(capsys, finished_run, argv, expected):
    assert expected in cli_error(capsys, "generate", str(finished_run), *argv)


def test_generate_greedy_and_long_prompt(capsys, finished_run, caplog):
    code = cli.main(
        [
            "generate",
            str(finished_run),
            "--temperature",
            "0",
            "--max_new_tokens",
            "8",
            "--prompt",
            "ROMEO: " * 80,
        ]
    )
    assert code == 0
    assert "keeping the most recent" in caplog.text
