"""Watching a run: metrics.jsonl, the loss curve, trackers, evaluate modules, the model card."""

import json
import os
import struct
import subprocess

import pytest
from conftest import BIN, REPO, tiny_run_args

from hfmini.config import known_keys, parse_config
from hfmini.errors import HfminiError
from hfmini.outputs.plot import plot_runs
from hfmini.training.metrics import load_metric
from hfmini.training.trainer import run_training


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One tiny run reporting to W&B (offline, no account) and TensorBoard at once."""
    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("run") / "out"
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_API_KEY", "HOME", "NETRC")}
    for key in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        os.environ.pop(key, None)
    os.environ["HOME"] = str(home)  # no ~/.netrc login either
    try:
        config = parse_config(
            tiny_run_args(
                out,
                12,
                "--logging_steps",
                "3",
                "--eval_steps",
                "6",
                "--report_to",
                "all",
                "--sample_max_new_tokens",
                "8",
                "--sample_prompts",
                "ROMEO:",
                "JULIET:",
            )
        )
        metrics = run_training(config)
        mode = os.environ.get("WANDB_MODE")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return out, metrics, mode, config


def test_metrics_jsonl_has_train_and_eval_rows(tracked_run):
    out, metrics, _, _ = tracked_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in train] == [3, 6, 9, 12]
    assert [r["step"] for r in evals] == [6, 12]
    for key in (
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_second",
        "train/mfu",
        "train/tokens_seen",
    ):
        assert all(r[key] >= 0 for r in train), key
    assert all(r["train/tokens_per_second"] > 0 for r in train)
    assert {"eval/loss", "eval/perplexity", "eval/bits_per_byte"} <= set(evals[-1])
    assert evals[-1]["eval/bits_per_byte"] == pytest.approx(metrics["bits_per_byte"])


def test_loss_curve_png(tracked_run):
    out, *_ = tracked_run
    width, height = png_size(out / "loss_curve.png")
    assert width > 800 and height > 300


def test_wandb_goes_offline_without_an_account(tracked_run, caplog):
    out, _, mode, _ = tracked_run
    assert mode == "offline"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (record,) = runs[0].glob("run-*.wandb")
    assert record.stat().st_size > 1000


def test_tracker_config_is_the_full_resolved_config(tracked_run):
    *_, config = tracked_run
    flat = config.to_flat_dict()
    assert set(flat) == set(known_keys())
    assert flat["sample_prompts"] == "ROMEO:, JULIET:" and flat["report_to"] == "all"
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())


def test_tensorboard_scalars(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, *_ = tracked_run
    (events,) = list((out / "hfmini").glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/tokens_per_second", "eval/bits_per_byte"} <= set(tags)
    assert [e.step for e in accumulator.Scalars("train/loss")] == [3, 6, 9, 12]


def test_evaluate_results_saved(tracked_run):
    out, metrics, *_ = tracked_run
    (result,) = list(out.glob("result-*.json"))
    saved = json.loads(result.read_text())
    assert saved["bits_per_byte"] == pytest.approx(metrics["bits_per_byte"])
    assert saved["config"]["model_size"] == "nano"


def test_results_outside_a_git_repository_say_nothing_on_stderr(tmp_path, monkeypatch, capfd):
    """evaluate.save ran `git rev-parse` with git's stderr shown ("fatal: not a git repository")
    and raised where git is missing; hfmini's writer records None quietly in both cases."""
    from hfmini.outputs.export import save_evaluate_results

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    path = save_evaluate_results(tmp_path, {"bits_per_byte": 2.0}, {"seed": 0})
    saved = json.loads(path.read_text())
    assert saved["_git_commit_hash"] is None and saved["config"] == {"seed": 0}
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    (tmp_path / "again").mkdir()
    assert (
        json.loads(save_evaluate_results(tmp_path / "again", {}, {}).read_text())[
            "_git_commit_hash"
        ]
        is None
    )
    assert capfd.readouterr().err == ""


def test_model_card(tracked_run):
    from huggingface_hub import ModelCard

    out, metrics, *_ = tracked_run
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0" and "hfmini" in data["tags"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["bits_per_byte"] == pytest.approx(metrics["bits_per_byte"], abs=1e-4)
    assert set(results) == {"loss", "perplexity", "bits_per_byte"}
    for text in (
        "| layers | 2 |",
        "| width | 64 |",
        "| architecture | gpt2 |",
        "| vocabulary | 512",
        "![Training and validation loss](loss_curve.png)",
        'pipeline("text-generation"',
        "```text\nROMEO:",
        "```text\nJULIET:",
        "learning rate",
    ):
        assert text in card.text, text


def test_local_evaluate_modules():
    bits = load_metric("bits_per_byte")
    assert bits.compute(nll=[6.931471805599453, 0.0], num_bytes=[4, 6])[
        "bits_per_byte"
    ] == pytest.approx(1.0)
    perplexity = load_metric("perplexity").compute(nll=[2.0, 4.0], num_tokens=[1, 2])
    assert perplexity["loss"] == pytest.approx(2.0)
    assert perplexity["perplexity"] == pytest.approx(7.389056, rel=1e-6)


def test_plot_overlays_runs(tracked_run, tmp_path):
    out, *_ = tracked_run
    other = tmp_path / "other"
    other.mkdir()
    rows = [
        {"step": s, "train/loss": 6 - s / 10, "train/tokens_seen": s * 100} for s in range(1, 20)
    ]
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tmp_path / "both.png"
    result = subprocess.run(
        [str(BIN / "hfmini"), "plot", str(out), str(other), "-o", str(target)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert png_size(target)[0] > 800
    (tmp_path / "empty").mkdir()
    with pytest.raises(HfminiError, match="no metrics to plot"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")


def test_plot_leaves_no_folder_out_silently(capsys, tmp_path):
    """A folder that does not exist, or one without metrics beside runs with some, is named in
    one line and nothing is drawn (it used to be left out of the plot without a word)."""
    from hfmini import cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 5.0}\n')
    (tmp_path / "empty").mkdir()
    for other, expected in [
        (
            "nope",
            f"error: {tmp_path / 'nope'}: no such folder; pass run folders (training "
            "output_dirs) that exist",
        ),
        (
            "empty",
            f"error: {tmp_path / 'empty'} holds no metrics.jsonl: pass only run folders "
            "written by hfmini train (or drop those)",
        ),
    ]:
        target = tmp_path / "x.png"
        assert cli.main(["plot", str(run), str(tmp_path / other), "-o", str(target)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [expected]
        assert not target.exists()


def test_wandb_api_key_is_never_written(tmp_path, monkeypatch, capfd):
    secret = "wandb0123456789abcdef0123456789abcdef01234"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    run_training(parse_config(tiny_run_args(out, 2, "--report_to", "wandb")))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err
