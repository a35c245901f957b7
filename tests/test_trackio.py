"""`--report_to trackio`: the run's metrics land in trackio's local SQLite file, the same figures as
metrics.jsonl, with no server started and no connection made."""

import json
import socket
import sys

import pytest
from conftest import reset_accelerate, tiny_run_args, train_error, write_lines

from hfmini.config import parse_config

PROJECT = "hfmini-trackio-test"


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and every server socket recorded and refused: trackio must stay local.
    (urllib3 binds ::1 port 0 once when imported, to learn whether IPv6 works: let that be.)"""
    attempts = []
    bind = socket.socket.bind

    def refuse_connect(self, address, *args):
        attempts.append(("connect", address))
        raise OSError(f"test: no network ({address})")

    def refuse_server(self, address, *args):
        if address in (("::1", 0), ("127.0.0.1", 0)):
            return bind(self, address, *args)
        attempts.append(("bind", address))
        raise OSError(f"test: no server ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "bind", refuse_server)
    return attempts


def test_trackio_holds_the_losses_of_metrics_jsonl(tmp_path, monkeypatch, no_network):
    pytest.importorskip("trackio")
    from hfmini.training.trainer import run_training

    # Read when trackio is first imported (accelerate.tracking imports it, often before this
    # test runs): then trackio's folder is conftest's private HF_HOME/trackio.
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    for key in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        monkeypatch.delenv(key, raising=False)
    data = [
        "--train_file",
        str(write_lines(tmp_path / "train.txt", 150)),
        "--validation_file",
        str(write_lines(tmp_path / "val.txt", 60, seed=4)),
        "--vocab_size",
        "300",
        "--block_size",
        "32",
    ]
    out = tmp_path / "out"
    tracking = ["--report_to", "trackio", "--project_name", PROJECT, "--run_name", "tiny"]
    args = tiny_run_args(out, 6, *data, "--logging_steps", "2", "--eval_steps", "3", *tracking)
    run_training(parse_config(args))
    reset_accelerate()

    import trackio.context_vars
    from trackio.sqlite_storage import SQLiteStorage

    db = SQLiteStorage.get_project_db_path(PROJECT)
    assert db.is_file() and (db.is_relative_to(tmp_path) or "hfmini-test-hf-" in str(db))
    assert trackio.context_vars.current_server.get() is None  # no dashboard, no Space
    assert no_network == []

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = SQLiteStorage.get_logs(PROJECT, "tiny")
    for key in ("train/loss", "eval/loss", "eval/bits_per_byte"):
        ours = {r["step"]: r[key] for r in rows if key in r}
        theirs = {r["step"]: r[key] for r in logged if key in r}
        assert ours and theirs == ours, key
    assert sorted({r["step"] for r in rows if "train/loss" in r}) == [2, 4, 6]


def test_without_trackio_the_error_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)  # find_spec says not installed
    line = train_error(capsys, "--report_to", "trackio")
    assert line == "error: report_to trackio needs trackio: pip install 'hfmini[trackio]'"
