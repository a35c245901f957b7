"""Pushing to the Hub, tested offline against a fake HfApi: at the end of training
(--push_to_hub) and afterwards, for a run trained offline (`hfmini push`)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, reset_accelerate, tiny_run_args
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import save_file

from hfmini import cli
from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.outputs import hub
from hfmini.training.trainer import run_training

SECRET = "hf_fakeTOKENthatMustNeverBeWritten123"

# Everything a finished tiny run uploads: the model and how it was made, never checkpoints/,
# the lock file or evaluate's result-<date>.json.
RUN_UPLOAD = [
    "README.md",
    "config.json",
    "eval_results.json",
    "generation_config.json",
    "loss_curve.png",
    "metrics.jsonl",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_config.yaml",
]


class FakeHfApi:
    """Records what would be sent; applies the same allow patterns as the real upload."""

    calls: list = []

    def whoami(self):
        return {"name": "tester"}

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private))

    def upload_folder(
        self, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, commit_message=""
    ):
        files = [
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        ]
        uploaded = sorted(
            filter_repo_objects(
                files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
            )
        )
        self.calls.append(("upload_folder", repo_id, commit_message, uploaded))
        return type("Commit", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub, "get_token", lambda: os.environ.get("HF_TOKEN"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return FakeHfApi


def push_args(tmp_path, *extra):
    return [
        *tiny_run_args(tmp_path / "out"),
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "tester/tiny-shakespeare",
        "--hub_private_repo",
        "true",
        *extra,
    ]


def test_final_push_uploads_the_model_not_the_checkpoints(fake_hub, tmp_path, capfd, caplog):
    run_training(parse_config(push_args(tmp_path, "--save_steps", "2")))
    assert ("create_repo", "tester/tiny-shakespeare", True) in fake_hub.calls
    uploads = [c for c in fake_hub.calls if c[0] == "upload_folder"]
    assert len(uploads) == 1
    assert uploads[0][3] == RUN_UPLOAD
    assert (tmp_path / "out" / "checkpoints").is_dir()  # they exist, and stayed local
    # The token is in no file, no log line and not in the card.
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text


def test_every_save_pushes_snapshots(fake_hub, tmp_path):
    run_training(
        parse_config(push_args(tmp_path, "--save_steps", "2", "--hub_strategy", "every_save"))
    )
    messages = [c[2] for c in fake_hub.calls if c[0] == "upload_folder"]
    assert messages == ["hfmini: step 2", "hfmini: final model"]


def test_missing_token_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(HfminiError, match="needs a Hugging Face token: set HF_TOKEN"):
        run_training(parse_config(push_args(tmp_path)))
    assert not (tmp_path / "out").exists()  # nothing was started


def test_unreachable_hub_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "get_token", lambda: SECRET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real HfApi, which cannot reach the Hub here
    with pytest.raises(HfminiError, match="cannot reach the Hugging Face Hub") as info:
        run_training(parse_config(push_args(tmp_path)))
    assert SECRET not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_push_needs_a_repo_id():
    with pytest.raises(HfminiError, match="needs hub_model_id"):
        parse_config(["--push_to_hub", "true"])


# --- hfmini push: a finished run trained offline, uploaded afterwards ------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny run trained once for this module, with a checkpoint at step 2 and --push_to_hub
    against FakeHfApi: its output_dir, and the files that training's own push uploaded."""
    out = tmp_path_factory.mktemp("finished") / "out"
    with pytest.MonkeyPatch.context() as patch:
        FakeHfApi.calls = []
        patch.setattr(hub, "HfApi", FakeHfApi)
        patch.setattr(hub, "get_token", lambda: SECRET)
        args = [*tiny_run_args(out, 4, "--save_steps", "2"), "--push_to_hub", "true"]
        run_training(parse_config([*args, "--hub_model_id", "tester/tiny-shakespeare"]))
        (pushed,) = [call[3] for call in FakeHfApi.calls if call[0] == "upload_folder"]
    FakeHfApi.calls = []  # the tests count their own calls only
    reset_accelerate()
    return out, pushed


@pytest.fixture
def adapter_folder(tmp_path):
    """What peft's save_pretrained writes for a LoRA adapter: config, weights and a card."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": "gpt2", "r": 2, "lora_alpha": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    weights = {
        "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": torch.zeros(2, 8),
        "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight": torch.zeros(24, 2),
    }
    save_file(weights, folder / "adapter_model.safetensors")
    (folder / "README.md").write_text("# adapter\n")
    return folder


def push(*argv: str) -> int:
    return cli.main(["push", *argv])


def push_error(capsys, *argv: str) -> str:
    """`hfmini push` must fail with one line and exit 2; returns that line."""
    code = push(*argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_push_uploads_what_training_pushes(fake_hub, finished_run, capsys):
    out, pushed_by_training = finished_run
    assert push(str(out), "--hub_model_id", "tester/tiny-offline", "--private") == 0
    assert fake_hub.calls[0] == ("create_repo", "tester/tiny-offline", True)
    [(_, repo, message, files)] = [c for c in fake_hub.calls if c[0] == "upload_folder"]
    assert (repo, message) == ("tester/tiny-offline", f"hfmini: upload {out.name}")
    assert files == pushed_by_training == RUN_UPLOAD
    assert (out / "checkpoints" / "step-2" / "model.safetensors").is_file()  # stayed local
    assert capsys.readouterr().out.strip() == "https://hub.example/tester/tiny-offline/commit/1"


def test_push_uploads_a_whole_adapter_folder(fake_hub, adapter_folder):
    assert push(str(adapter_folder), "--hub_model_id", "tester/tiny-lora") == 0
    assert ("create_repo", "tester/tiny-lora", False) in fake_hub.calls
    [files] = [c[3] for c in fake_hub.calls if c[0] == "upload_folder"]
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_push_refuses_a_missing_folder_or_a_file(fake_hub, capsys, tmp_path):
    message = push_error(capsys, str(tmp_path / "nowhere"), "--hub_model_id", "tester/x")
    assert "nowhere does not exist: pass the output_dir of a finished training run" in message
    (tmp_path / "notes.txt").write_text("not a model")
    message = push_error(capsys, str(tmp_path / "notes.txt"), "--hub_model_id", "tester/x")
    assert "notes.txt is not a folder" in message
    assert fake_hub.calls == []


def test_push_refuses_a_folder_without_a_finished_model(fake_hub, capsys, tmp_path, adapter_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = push_error(capsys, str(empty), "--hub_model_id", "tester/x")
    assert "holds no finished model (config.json with complete model*.safetensors" in message
    # An adapter whose weights were cut short (a kill, a full disk) is not finished either.
    weights = adapter_folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    message = push_error(capsys, str(adapter_folder), "--hub_model_id", "tester/x")
    assert "holds no finished model" in message
    assert fake_hub.calls == []


def test_push_refuses_an_unfinished_run(fake_hub, capsys, tmp_path, finished_run):
    """Checkpoints but no final model: the run was stopped before its export."""
    out, _ = finished_run
    unfinished = tmp_path / "out"
    shutil.copytree(out / "checkpoints", unfinished / "checkpoints")
    shutil.copy(out / "metrics.jsonl", unfinished)
    message = push_error(capsys, str(unfinished), "--hub_model_id", "tester/x")
    assert "holds checkpoints but no final model: the run has not finished" in message
    assert "--resume_from_checkpoint latest" in message
    assert fake_hub.calls == []


@pytest.mark.parametrize("repo_id", ["tester/tiny/shakespeare", "tester/tiny shakespeare", "a--b"])
def test_push_refuses_a_bad_hub_id(fake_hub, capsys, adapter_folder, repo_id):
    message = push_error(capsys, str(adapter_folder), "--hub_model_id", repo_id)
    assert f"hub_model_id {repo_id!r} is not a valid Hub repo id: write user/name" in message
    assert fake_hub.calls == []


def test_push_without_a_token(fake_hub, capsys, monkeypatch, adapter_folder):
    monkeypatch.setattr(hub, "get_token", lambda: None)
    message = push_error(capsys, str(adapter_folder), "--hub_model_id", "tester/x")
    assert message.endswith("needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    assert "--push_to_hub" not in message  # not a training option here
    assert fake_hub.calls == []


def test_push_with_the_hub_unreachable(capsys, monkeypatch, adapter_folder):
    monkeypatch.setattr(hub, "get_token", lambda: SECRET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real HfApi, which cannot reach the Hub here
    message = push_error(capsys, str(adapter_folder), "--hub_model_id", "tester/x")
    assert "cannot reach the Hugging Face Hub to push tester/x" in message
    assert "HF_HUB_OFFLINE must be unset" in message and SECRET not in message


def test_failed_upload_says_how_to_retry(fake_hub, capsys, monkeypatch, adapter_folder):
    def refuse(*args, **kwargs):
        raise OSError("403 Forbidden: you cannot write to the namespace someone\nmore detail")

    monkeypatch.setattr(FakeHfApi, "create_repo", refuse)
    message = push_error(capsys, str(adapter_folder), "--hub_model_id", "someone/x", "--private")
    assert "could not push" in message and "(403 Forbidden: you cannot write" in message
    assert (
        f"retry with `hfmini push {adapter_folder} --hub_model_id someone/x --private`" in message
    )


def test_push_command_line_fails_in_one_line(tmp_path):
    """The real entry point, as a person runs it: one line on stderr, exit 2, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "hfmini.cli", "push", str(tmp_path), "--hub_model_id", "a/b"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path} holds no finished model (config.json with complete model*.safetensors, "
        "or adapter_config.json with a complete adapter_model.safetensors): pass the output_dir "
        "of a finished training run"
    ]
    assert done.stdout == ""


def test_push_refuses_full_weights_without_a_tokenizer(fake_hub, capsys, tmp_path, finished_run):
    out, _ = finished_run
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(out / name, bare)
    message = push_error(capsys, str(bare), "--hub_model_id", "tester/x")
    assert "holds a model but no tokenizer (tokenizer.json)" in message
    assert fake_hub.calls == []
