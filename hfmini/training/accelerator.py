"""The process a run lives in: the Accelerator, CPU threads, attention kernel and logging.

The device is CUDA, else Apple silicon (MPS), else the CPU (`default_device`; use_cpu forces the
CPU). On CUDA this is Accelerate's usual set-up (plus TF32); on MPS Accelerate's single-process
one; on a CPU machine it makes sure that several processes form one gloo job and that each uses
its share of the cores.
"""

from __future__ import annotations

import logging
import os

import torch

from hfmini.config import Config, TrainArguments
from hfmini.errors import HfminiError
from hfmini.models.device import bf16_native_on, cpu_has_native_bf16, default_device, is_sharded
from hfmini.training.interrupt import launched
from hfmini.training.tracking import prepare_wandb_mode, resolve_trackers

logger = logging.getLogger("hfmini")


def use_all_cpu_cores(device: str | None = None) -> None:
    """Undo the launchers' one-thread default for CPU training on `device` (default: this
    machine's `default_device()`).

    `accelerate launch` (and torchrun) set OMP_NUM_THREADS=1 for every process they start; on a
    CPU-only machine that leaves all but one core idle (on 2 cores it cost close to half the
    tokens/s). When a launcher set it, give each local process its share of the cores instead.
    """
    device = device or default_device()
    if device != "cpu" or not launched() or os.environ.get("OMP_NUM_THREADS") != "1":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads > torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info(
            "using %d CPU threads per process (the launcher set OMP_NUM_THREADS=1)", threads
        )


def training_precision(args: TrainArguments, device: str | None = None) -> str:
    """accelerate's mixed_precision on `device` (default: where `args` trains on this machine):
    "bf16", "fp16" or "no" (fp32)."""
    device = device or default_device(args)
    return args.precision_on(device, bf16_native_on(device))


def attention_for(device: torch.device, precision: str) -> str:
    """transformers' attention implementation for training on `device` in `precision`.

    sdpa (PyTorch's fused kernel, on CUDA, MPS and CPU) everywhere except bf16 on a CPU: there
    the CPU flash-attention backward in bf16 is several times slower than in fp32 at small head
    sizes, which cancels the bf16 matmul gain; plain matmul-softmax-matmul attention keeps it
    (docs/results.md has the figures). Only the training process uses it: the saved config does
    not record it, so loaded models use sdpa.
    """
    return "eager" if device.type == "cpu" and precision == "bf16" else "sdpa"


def check_processes(device: str, processes: int) -> None:
    """Refuse several processes on MPS: a Mac has one GPU and Accelerate has no MPS backend to
    join them, so each would train alone on the same data."""
    if device == "mps" and processes > 1:
        raise HfminiError(
            f"Apple MPS trains in one process, but {processes} were launched: run "
            "`python recipes/train.py ...` without a launcher, or add --use_cpu true for one "
            "data-parallel job on the CPU"
        )


def make_accelerator(config: Config):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, get_int_from_env

    args = config.train
    device = default_device(args)
    # The variables by which Accelerate counts processes (torchrun, mpirun, MPICH, MVAPICH).
    check_processes(
        device,
        get_int_from_env(
            ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1
        ),
    )
    if device == "cuda":  # TF32 matmuls and convolutions: several times fp32 on Ampere and later
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = training_precision(args, device)
    if args.mixed_precision == "fp16" and device == "cpu":
        logger.warning("mixed_precision fp16 needs a GPU: training in fp32 on the CPU")
    if args.mixed_precision == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated and slower than "
            "fp32; use --mixed_precision no"
        )
    if args.mixed_precision == "bf16" and device == "mps" and precision == "no":
        logger.warning(
            "bf16 on Apple MPS needs macOS 14 and torch 2.6 or later: training in fp32; "
            "--mixed_precision fp16 also works on MPS"
        )
    trackers = resolve_trackers(args.trackers_requested())
    if "wandb" in trackers:
        prepare_wandb_mode()
    return Accelerator(
        # On the CPU, cpu=True makes several processes (torchrun, mpirun) form one gloo
        # data-parallel job instead of running as independent single-process copies. Without it
        # Accelerate picks CUDA or MPS itself, as default_device did.
        cpu=device == "cpu",
        mixed_precision=precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=trackers or None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        dynamo_backend="inductor" if args.compile_on(device, precision) else "no",
    )


def configure_logging(accelerator) -> None:
    import datasets
    import transformers

    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logger.setLevel(level)
    logging.getLogger("hfmini.data.prepare").setLevel(level)
    # accelerate logs every file of every checkpoint at INFO; our own line says it once.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    # transformers warns about attention masks on unpadded packed blocks; nothing to act on.
    transformers.utils.logging.set_verbosity_error()
    # Its per-file "Loading weights" and "Writing model shards" bars; hfmini logs a line instead.
    transformers.utils.logging.disable_progress_bar()
    if not accelerator.is_main_process:
        datasets.utils.logging.disable_progress_bar()


def inference_model(accelerator, model, final: bool = False):
    """The model for evaluation and sampling, and whether the main process may use it alone.

    Sharded models (FSDP, DeepSpeed) must run through their wrapper on every process; otherwise
    the plain module, which avoids recompiling a compiled model for the ragged final block.
    Evaluations during training run as the model trains (under bf16 autocast with mixed
    precision, which is faster); the final one drops accelerate's autocast wrapper for good, so
    its figures are those of the fp32 weights as exported.
    """
    if is_sharded(accelerator):
        return model, False
    plain = accelerator.unwrap_model(model, keep_fp32_wrapper=not final, keep_torch_compile=False)
    return plain, True
