"""Device choice (CUDA, Apple MPS, CPU) and what follows from it, driven without the hardware:
the pure config methods directly, the probes by monkeypatching torch's availability checks."""

import pytest
import torch
from conftest import reset_accelerate

from hfmini.config import TrainArguments, parse_config
from hfmini.errors import HfminiError
from hfmini.models import device
from hfmini.training import accelerator as process


@pytest.mark.parametrize(
    "cuda, mps, use_cpu, expected",
    [
        (True, False, False, "cuda"),
        (False, True, False, "mps"),
        (False, False, False, "cpu"),
        (True, True, False, "cuda"),  # no such machine, but CUDA would come first
        (True, False, True, "cpu"),
        (False, True, True, "cpu"),
        (False, False, True, "cpu"),
        (True, True, True, "cpu"),
    ],
)
def test_device_on_prefers_cuda_then_mps_and_use_cpu_forces_the_cpu(cuda, mps, use_cpu, expected):
    assert TrainArguments(use_cpu=use_cpu).device_on(cuda=cuda, mps=mps) == expected


def test_use_cpu_parses_like_transformers():
    assert parse_config(["--use_cpu", "true"]).train.use_cpu
    assert not parse_config([]).train.use_cpu


def machine(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_default_device_probes_the_machine(monkeypatch, cuda, mps, expected):
    machine(monkeypatch, cuda, mps)
    assert device.default_device() == expected
    assert device.default_device(TrainArguments()) == expected
    assert device.default_device(TrainArguments(use_cpu=True)) == "cpu"


def test_sampling_loads_the_model_onto_the_default_device(monkeypatch):
    import hfmini.models.sampling
    from hfmini.models.sampling import load_model_and_tokenizer

    class Model:  # stands in for a model: records where it was moved
        def to(self, device):
            self.device = device
            return self

        def eval(self):
            return self

    monkeypatch.setattr(
        hfmini.models.sampling, "load_for_inference", lambda folder: (Model(), None)
    )
    machine(monkeypatch, cuda=False, mps=True)
    assert load_model_and_tokenizer("any")[0].device == "mps"
    assert load_model_and_tokenizer("any", device="cpu")[0].device == "cpu"
    machine(monkeypatch, cuda=False, mps=False)
    assert load_model_and_tokenizer("any")[0].device == "cpu"


def test_precision_on_mps_is_fp32_unless_asked():
    def on_mps(mixed_precision: str, bf16: bool) -> str:
        return TrainArguments(mixed_precision=mixed_precision).precision_on("mps", bf16)

    # auto: fp32 even where MPS computes bf16 (whether it is faster depends on the chip)
    assert on_mps("auto", bf16=True) == "no" and on_mps("auto", bf16=False) == "no"
    assert on_mps("fp16", bf16=False) == "fp16"  # autocast fp16 works on MPS
    assert on_mps("bf16", bf16=True) == "bf16"
    assert on_mps("bf16", bf16=False) == "no"  # before macOS 14 (or torch 2.6): fp32
    assert on_mps("no", bf16=True) == "no"
    # bf16 asked for on a CPU without native bf16 still runs it (emulated), as before
    assert TrainArguments(mixed_precision="bf16").precision_on("cpu", False) == "bf16"


def test_compile_on_mps_is_off_unless_asked():
    assert not TrainArguments(max_steps=5000).compile_on("mps")  # CPU would compile this one
    assert TrainArguments(max_steps=5000).compile_on("cpu", "bf16")
    assert TrainArguments(torch_compile="true").compile_on("mps")


def test_training_precision_asks_the_chosen_device(monkeypatch):
    monkeypatch.setattr(device, "mps_has_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert process.training_precision(TrainArguments(mixed_precision="bf16"), "mps") == "bf16"
    monkeypatch.setattr(device, "mps_has_bf16", lambda: False)
    assert process.training_precision(TrainArguments(mixed_precision="bf16"), "mps") == "no"
    assert process.training_precision(TrainArguments(), "cpu") == "no"


def test_attention_is_sdpa_on_mps():
    for precision in ("no", "fp16", "bf16"):
        assert process.attention_for(torch.device("mps"), precision) == "sdpa"


def test_make_accelerator_on_this_machine_is_cpu(tmp_path):
    for argv in ([], ["--use_cpu", "true"]):
        config = parse_config(["--output_dir", str(tmp_path / "run"), *argv])
        accelerator = process.make_accelerator(config)
        assert accelerator.device.type == "cpu"
        reset_accelerate()


def test_several_processes_on_mps_are_refused(monkeypatch, tmp_path):
    process.check_processes("mps", 1)
    process.check_processes("cpu", 4)
    process.check_processes("cuda", 8)
    with pytest.raises(HfminiError, match="Apple MPS trains in one process, but 2"):
        process.check_processes("mps", 2)
    # make_accelerator asks before it builds anything
    machine(monkeypatch, cuda=False, mps=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = parse_config(["--output_dir", str(tmp_path / "run")])
    with pytest.raises(HfminiError, match="--use_cpu true"):
        process.make_accelerator(config)


def test_cpu_threads_are_left_alone_on_mps(monkeypatch):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # as under a launcher
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        process.use_all_cpu_cores("mps")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_peak_memory_on_mps_reads_metal_without_crashing(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 123 * 2**20)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: emptied.append(True))
    device.reset_peak_memory(torch.device("mps"))
    assert emptied == [True]
    assert device.peak_memory_bytes(torch.device("mps")) == 123 * 2**20
