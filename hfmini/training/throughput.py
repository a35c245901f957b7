"""FLOPs, peak FLOP/s and model FLOPs utilisation (MFU), shared by training logs and `make bench`."""

from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks (no sparsity) from the vendors' data sheets, in FLOP/s.
KNOWN_GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def measure_peak_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.5
) -> float:
    """Achieved matmul FLOP/s on this device: the denominator of MFU when no data sheet applies.

    Runs square matmuls for about `seconds`. On CPU it uses torch's current thread count.
    """
    # A private generator: the global RNG may have just been restored from a checkpoint, and its
    # next draws belong to dropout, exactly as in the run that saved it.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(3):  # warm-up: thread pools, kernel selection
        a @ b
    _synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        _synchronize(device)  # GPU kernels are asynchronous; CPU ones are not
    elapsed = time.perf_counter() - start
    return 2 * size**3 * runs / elapsed


def peak_flops(device: torch.device, precision: str = "no") -> float:
    """The MFU denominator: the data-sheet bf16 peak for known GPUs, else the measured matmul
    peak in the dtype training multiplies in (bf16 for mixed precision "bf16", fp16 for "fp16"
    on MPS, else fp32)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in KNOWN_GPU_PEAKS.items():
            if key in name:
                return value
        return measure_peak_flops(device, torch.bfloat16, size=4096)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return measure_peak_flops(device, dtype)


def mfu(flops_per_token: float, tokens_per_second: float, peak: float) -> float:
    return flops_per_token * tokens_per_second / peak


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # Metal kernels are asynchronous too
        torch.mps.synchronize()
