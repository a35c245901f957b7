"""The process a run lives in: the Accelerator, CPU threads and logging.

On a GPU machine this is Accelerate's usual set-up (plus TF32); on a CPU machine it makes sure
that several processes form one gloo job and that each uses its share of the cores.
"""

from __future__ import annotations

import logging
import os

import torch

from hfmini.config import Config

logger = logging.getLogger("hfmini")


def use_all_cpu_cores() -> None:
    """Undo the launchers' one-thread default for CPU training.

    `accelerate launch` (and torchrun) set OMP_NUM_THREADS=1 for every process they start; on a
    CPU-only machine that leaves all but one core idle (measured here: 6.6k vs 11.5k tokens/s on
    2 cores). When a launcher set it, give each local process its share of the cores instead.
    """
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    if torch.cuda.is_available() or not launched or os.environ.get("OMP_NUM_THREADS") != "1":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads > torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info(
            "using %d CPU threads per process (the launcher set OMP_NUM_THREADS=1)", threads
        )


def make_accelerator(config: Config):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from hfmini.tracking import prepare_wandb_mode, resolve_trackers

    args = config.train
    on_gpu = torch.cuda.is_available()
    if on_gpu:  # TF32 matmuls and convolutions: ~2x fp32 throughput on Ampere and later
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.mixed_precision not in ("no", "auto") and not on_gpu:
        logging.getLogger("hfmini").warning(
            "mixed_precision %s needs a GPU: training in fp32 on the CPU", args.mixed_precision
        )
    trackers = resolve_trackers(args.trackers_requested())
    if "wandb" in trackers:
        prepare_wandb_mode()
    return Accelerator(
        # On a machine without a GPU, cpu=True makes several processes (torchrun, mpirun) form one
        # gloo data-parallel job instead of running as independent single-process copies.
        cpu=not on_gpu,
        mixed_precision=args.precision_on(on_gpu, on_gpu and torch.cuda.is_bf16_supported()),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=trackers or None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        dynamo_backend="inductor" if args.compile_on(on_gpu) else "no",
    )


def configure_logging(accelerator) -> None:
    import datasets
    import transformers

    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logger.setLevel(level)
    logging.getLogger("hfmini.data").setLevel(level)
    # accelerate logs every file of every checkpoint at INFO; our own line says it once.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    # transformers warns about attention masks on unpadded packed blocks; nothing to act on.
    transformers.utils.logging.set_verbosity_error()
    if not accelerator.is_main_process:
        datasets.utils.logging.disable_progress_bar()
