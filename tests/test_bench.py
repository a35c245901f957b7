"""`make bench` runs end to end (on the tiny recipe here) and writes its JSON."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_RECIPE

from hfmini.runtime import attention_for, use_all_cpu_cores


@pytest.mark.slow
def test_bench_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hfmini.bench",
            "--recipe",
            str(TINY_RECIPE),
            "--output",
            str(out),
            "--rounds",
            "1",
            "--steps_per_round",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    train, gen, data = report["training"], report["generation"], report["data"]
    assert train["hfmini_tokens_per_second"] > 0 and train["plain_eager_tokens_per_second"] > 0
    assert (
        train["speedup"]
        == train["hfmini_tokens_per_second"] / train["plain_eager_tokens_per_second"]
    )
    assert 0 < train["mfu"] < 1.5
    # The plain loop's sdpa model must not switch hfmini's model off its own attention (they
    # once shared a config object, which made hfmini's bf16 CPU step run sdpa).
    expected = attention_for(torch.device("cpu"), train["precision"].replace("fp32", "no"))
    assert train["attention"] == expected
    assert gen["generate_speedup"] > 0
    assert gen["new_tokens"] == 256 and gen["speedup"] > 0
    assert data["cached_prepare_seconds"] < data["cold_prepare_seconds"]
    assert "training: hfmini loop" in result.stdout and "x plain eager" in result.stdout


def test_launcher_single_thread_default_is_undone(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    try:
        torch.set_num_threads(1)
        use_all_cpu_cores()
        cores = len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == cores
        # An explicit user choice (no launcher) is left alone.
        monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")
        torch.set_num_threads(1)
        use_all_cpu_cores()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
