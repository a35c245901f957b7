"""The real commands, in fresh processes, the way a user runs them."""

import json
import os
import subprocess
import sys

import pytest
from conftest import BIN, REPO, TINY_RECIPE, TRAIN_SCRIPT, launch_command

LOAD_WITHOUT_HFMINI = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
out = pipeline("text-generation", model=path)("ROMEO:", max_new_tokens=12)
assert out[0]["generated_text"].startswith("ROMEO:"), out
assert "hfmini" not in sys.modules
print("LOADED", type(model).__name__, len(tokenizer))
"""


def run(cmd, cwd=REPO, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "model"
    result = run(
        launch_command("--config", str(TINY_RECIPE), "--output_dir", str(out), "--max_steps", "10")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_accelerate_launch_trains_and_plain_transformers_loads(trained, tmp_path):
    out, result = trained
    assert "parameters" in result.stderr and "tokens per optimizer step" in result.stderr
    loaded = run([sys.executable, "-c", LOAD_WITHOUT_HFMINI, str(out)], cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "LOADED GPT2LMHeadModel 512" in loaded.stdout


@pytest.mark.slow
def test_hfmini_generate_streams(trained):
    out, _ = trained
    result = run(
        [
            str(BIN / "hfmini"),
            "generate",
            str(out),
            "--prompt",
            "ROMEO:",
            "--max_new_tokens",
            "30",
            "--seed",
            "0",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > len("ROMEO:") + 5


@pytest.mark.slow
def test_hfmini_eval_prints_json_last(trained, tmp_path):
    out, _ = trained
    result = run([str(BIN / "hfmini"), "eval", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    recorded = json.loads((out / "eval_results.json").read_text())
    assert metrics["bits_per_byte"] == pytest.approx(recorded["bits_per_byte"], rel=1e-6)
    val = tmp_path / "v.txt"
    val.write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 20)
    other = run([str(BIN / "hfmini"), "eval", str(out), "--validation_file", str(val)])
    assert other.returncode == 0, other.stderr[-2000:]
    assert set(json.loads(other.stdout.strip().splitlines()[-1])) >= {
        "eval_loss",
        "perplexity",
        "bits_per_byte",
    }


@pytest.mark.slow
def test_hfmini_train_is_the_same_entry_point(tmp_path):
    result = run(
        [
            str(BIN / "hfmini"),
            "train",
            "--config",
            str(TINY_RECIPE),
            "--output_dir",
            str(tmp_path / "o"),
            "--max_steps",
            "2",
            "--eval_steps",
            "0",
            "--sample_max_new_tokens",
            "4",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_errors_are_one_line_without_traceback(tmp_path):
    result = run(
        [sys.executable, str(TRAIN_SCRIPT), "--config", str(TINY_RECIPE), "--learning_rte", "0.1"]
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: unknown config key 'learning_rte'")
    )
