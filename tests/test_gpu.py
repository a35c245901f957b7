"""The accelerator paths, run where the hardware is and skipped with the reason where it is not
(CI and most laptops have neither a CUDA GPU nor Apple silicon)."""

import json

import pytest
import torch
from conftest import tiny_run_args

from hfmini.config import parse_config
from hfmini.training.trainer import run_training

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
needs_mps = pytest.mark.skipif(
    not torch.backends.mps.is_available(), reason="no Apple silicon (MPS) here"
)


def read(out, name):
    return json.loads((out / name).read_text())


@needs_cuda
@pytest.mark.parametrize("compile_", ["false", "true"])
def test_cuda_trains_in_bf16_and_exports_a_model_that_loads(tmp_path, compile_):
    from transformers import pipeline

    out = tmp_path / "cuda"
    args = tiny_run_args(out, 6, "--mixed_precision", "bf16", "--torch_compile", compile_)
    metrics = run_training(parse_config(args))
    assert metrics["bits_per_byte"] < 8
    generate = pipeline("text-generation", model=str(out), device=0)
    assert generate("ROMEO:", max_new_tokens=4)[0]["generated_text"].startswith("ROMEO:")


@needs_mps
def test_mps_trains_and_evaluates(tmp_path):
    out = tmp_path / "mps"
    metrics = run_training(parse_config(tiny_run_args(out, 4)))
    assert metrics["bits_per_byte"] < 8
    assert read(out, "eval_results.json")["step"] == 4


def test_use_cpu_trains_on_the_cpu_whatever_the_machine_has(tmp_path):
    out = tmp_path / "cpu"
    run_training(parse_config(tiny_run_args(out, 2, "--use_cpu", "true")))
    assert read(out, "eval_results.json")["step"] == 2
