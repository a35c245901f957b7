"""Pushing to the Hub, tested offline against a fake HfApi."""

import os

import pytest
from conftest import tiny_run_args
from huggingface_hub.utils import filter_repo_objects

from hfmini import hub
from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.train import run_training

SECRET = "hf_fakeTOKENthatMustNeverBeWritten123"


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
    files = uploads[0][3]
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "loss_curve.png",
    ):
        assert name in files, name
    assert not [f for f in files if f.startswith(("checkpoints", "wandb"))]
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
