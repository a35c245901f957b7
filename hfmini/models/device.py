"""Where a model runs: the device (CUDA, else Apple silicon's MPS, else the CPU), what it computes
in bf16, how much memory the run held, and the wrappers (torch.compile, FSDP/DeepSpeed) around a
model. Probing only; the decisions are TrainArguments' pure methods (hfmini.config.train_args).
"""

from __future__ import annotations

import torch

from hfmini.config import TrainArguments


def default_device(args: TrainArguments | None = None) -> str:
    """Where to train with `args` (its use_cpu forces the CPU) or, without, to sample: "cuda",
    else "mps" (Apple silicon), else "cpu". Accelerate picks the same unless told cpu=True."""
    args = args if args is not None else TrainArguments()
    return args.device_on(torch.cuda.is_available(), torch.backends.mps.is_available())


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Does this CPU multiply bf16 in hardware (AVX512-BF16 or AMX)? Linux only; elsewhere False.

    Without it PyTorch emulates bf16 matmuls and mixed precision is slower than fp32.
    """
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def mps_has_bf16() -> bool:
    """Apple's GPU computes bf16 from macOS 14; Accelerate's bf16 autocast on it, from torch 2.6."""
    from accelerate.utils import is_torch_version

    return torch.backends.mps.is_macos_or_newer(14, 0) and is_torch_version(">=", "2.6.0")


def bf16_native_on(device: str) -> bool:
    """`precision_on`'s bf16_native for `device`: bf16 matmuls in hardware (CUDA, CPU), or on
    MPS bf16 at all."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "mps":
        return mps_has_bf16()
    return cpu_has_native_bf16()


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory the run has held: allocated tensors on CUDA; on MPS what Metal holds for
    the process now; on a CPU the process's peak resident size, which also counts Python, torch
    and the data (Linux: VmHWM, which `reset_peak_memory` can restart; elsewhere getrusage's
    lifetime peak)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if device.type == "mps":
        # MPS keeps no peak; its allocator caches freed blocks (until memory pressure or
        # `reset_peak_memory`), so what Metal holds at the end of a run is close to the peak.
        return torch.mps.driver_allocated_memory()
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def reset_peak_memory(device: torch.device) -> None:
    """Start `peak_memory_bytes` afresh from what is held now (CUDA; MPS, by releasing the
    allocator's cached blocks; Linux, via clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    if device.type == "mps":
        torch.mps.empty_cache()
        return
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak resident size (VmHWM) to the current one
    except OSError:
        pass  # not Linux: the peak then covers the whole process


def without_compile(model):
    """The module torch.compile wrapped (DDP, FSDP or the model itself), or `model` if none."""
    from accelerate.utils import is_compiled_module

    return model._orig_mod if is_compiled_module(model) else model


def is_sharded(accelerator) -> bool:
    """FSDP and DeepSpeed split the weights across processes."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
