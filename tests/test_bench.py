"""`make bench` runs end to end (on the tiny recipe here) and writes its JSON."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_RECIPE

from hfmini.training.accelerator import attention_for, use_all_cpu_cores


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
    tune = report["finetuning"]
    assert tune["model"].startswith("mini ") and tune["lora_speedup"] > 0
    assert "finetuning: LoRA step" in result.stdout and "x full fine-tuning" in result.stdout
    packing = report["packing"]
    packed, padded = packing["packed, position ids"], packing["one example a sequence, padded"]
    assert all(p["tokens_per_second"] > 0 for p in packing.values())
    assert padded["fill"] < packed["fill"] <= 1  # packing wastes fewer positions on padding
    assert "chat data: packed, position ids" in result.stdout


@pytest.mark.slow  # two subprocesses measure peak memory: tens of seconds
def test_finetuning_bench_lora_trains_fewer_weights_with_less_state(tmp_path):
    from hfmini.bench.finetuning import bench_finetuning

    # The tiny recipe's nano preset, eager (compiling 2 models would take most of the time).
    result = bench_finetuning(
        str(TINY_RECIPE),
        rounds=1,
        steps_per_round=1,
        work_dir=tmp_path,
        preset="nano",
        overrides=("--torch_compile", "false"),
        memory_steps=1,
    )
    full, lora = result["full"], result["lora"]
    assert result["model"].startswith("nano (2, 2, 64)")
    assert full["tokens_per_second"] > 0 and lora["tokens_per_second"] > 0
    assert result["lora_speedup"] == lora["tokens_per_second"] / full["tokens_per_second"]
    # Full fine-tuning trains every weight. LoRA (r 16) on c_attn (d → 3d), attention c_proj
    # (d → d), c_fc (d → 4d) and MLP c_proj (4d → d) adds r·(d_in + d_out) each: 16·r·d a layer.
    assert full["trainable_parameters"] == result["parameters"]
    assert lora["trainable_parameters"] == 2 * 16 * 16 * 64
    # Each trainable fp32 weight holds a gradient and AdamW's two moments (no EMA in this recipe).
    for run in (full, lora):
        n = run["trainable_parameters"]
        assert run["training_state"] == {"gradients": 4 * n, "adamw_moments": 2 * 4 * n}
        assert run["training_state_bytes"] == 3 * 4 * n
    assert lora["training_state_bytes"] < full["training_state_bytes"]
    assert result["training_state_bytes_saved"] == 12 * (
        full["trainable_parameters"] - lora["trainable_parameters"]
    )
    assert full["peak_memory_bytes"] > 0 and lora["peak_memory_bytes"] > 0


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


@pytest.mark.slow
def test_the_preference_bench_times_each_loss_against_sft(tmp_path):
    from hfmini.bench.preference import VARIANTS, bench_preference

    result = bench_preference(str(TINY_RECIPE), 1, 1, tmp_path, preset="nano")
    for name in VARIANTS:
        entry = result[name]
        assert entry["steps_per_second"] > 0 and entry["tokens_per_second"] > 0
        assert 0 < entry["step_time_vs_sft"] < float("inf")
    assert result["sft"]["step_time_vs_sft"] == 1.0
    # A pair puts two sequences through the model where its SFT twin puts one.
    assert result["dpo"]["tokens_per_second"] / result["dpo"]["rows_per_second"] > (
        1.5 * result["sft"]["tokens_per_second"] / result["sft"]["rows_per_second"]
    )


def test_the_grpo_bench_times_sampling_and_the_update_apart(tmp_path, tiny_base):
    from hfmini.bench.grpo import bench_grpo
    from hfmini.bench.report import print_table

    # The session's tiny model (nano, 64-token context), 2 prompts × 2 completions of 8 tokens,
    # one round of one call each: seconds.
    result = bench_grpo(
        str(TINY_RECIPE),
        1,
        1,
        tmp_path,
        num_generations=2,
        prompts_per_step=2,
        max_completion_length=8,
        base=tiny_base,
    )
    sampling, update = result["sampling"], result["update"]
    assert result["model"] == "tiny (2, 2, 64)" and result["completions_per_step"] == 4
    assert sampling["completions_per_second"] == 4 * sampling["rollouts_per_second"] > 0
    # At most 8 tokens generated per completion; at least one (a stop token ends it at once).
    assert 4 <= sampling["sampled_tokens_per_rollout"] <= 4 * 8
    # The update reads every prompt and completion position: (4, Tp + Tc), Tc at most 8 (less
    # when all 4 completions stopped early).
    assert 0 < result["completion_width"] <= 8
    assert update["tokens_per_step"] == pytest.approx(
        4 * (result["prompt_width"] + result["completion_width"])
    )
    assert 0 < update["completion_tokens_per_second"] < update["tokens_per_second"]
    assert 0 < result["sampling_share"] < 1.5 and 0 < result["update_share"] < 1.5
    print_table({"machine": "test", "grpo": result})
