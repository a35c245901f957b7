"""Setting a run up: every check before any work, then data, tokenizer, model, optimizer and
schedule, prepared with Accelerate, resumed from a checkpoint when asked.

    check_before_work ─► start_process (Accelerator, logging, threads, seed) ─► prepare_data
    ─► model_for_run (built, or loaded and fitted; LoRA) ─► optimizer, loader ─► accelerate
    ─► schedule ─► resume ─► Run
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate.utils import set_seed

from hfmini.cache import check_cache_writable
from hfmini.config import Config
from hfmini.data.preference import PREFERENCE_FORMAT, sequences_per_row
from hfmini.data.prepare import prepare_data
from hfmini.data.prompts import PROMPT_FORMAT
from hfmini.data.training_data import TrainingData
from hfmini.errors import HfminiError
from hfmini.models.device import is_sharded
from hfmini.models.gpt2 import build_model, enable_gradient_checkpointing
from hfmini.models.lora import add_lora
from hfmini.models.pretrained import (
    ModelSource,
    check_fits_run,
    fit_to_tokenizer,
    load_model,
    resolve,
)
from hfmini.models.size import flops_per_token
from hfmini.models.tokenizer import token_byte_lengths
from hfmini.outputs.checkpoint import (
    TrainState,
    check_init_matches,
    check_resume_data,
    check_resume_settings,
    load_checkpoint,
    load_data_position,
    load_for_new_run,
    load_objective_state,
    resolve_init_path,
    save_weights_as_model,
    training_settings,
)
from hfmini.outputs.hub import check_hub_access
from hfmini.outputs.output_dir import check_output_dir, clear_previous_run
from hfmini.run_folder import STATE_FILE
from hfmini.training.accelerator import (
    attention_for,
    configure_logging,
    make_accelerator,
    use_all_cpu_cores,
)
from hfmini.training.budget import Progress, RunLength, TrainClock, run_length
from hfmini.training.ema import weight_average_for
from hfmini.training.grpo import GRPOObjective
from hfmini.training.objectives import objective_for
from hfmini.training.optimizers import build_optimizer
from hfmini.training.preference import PreferenceObjective, frozen_reference
from hfmini.training.run import LogWindow, Run
from hfmini.training.schedule import build_scheduler
from hfmini.training.throughput import peak_flops
from hfmini.training.tracking import (
    RunLogger,
    log_run_start,
    start_trackers,
    truncate_metrics_after,
)

logger = logging.getLogger("hfmini")


def setup(config: Config) -> Run:
    """Check, load data, build tokenizer/model/optimizer, prepare with Accelerate, maybe resume."""
    args = config.train
    resume_path, saved_state, source, init_path = check_before_work(config)
    accelerator = start_process(config, init_path)
    # Data and tokenizer: the main process fills the datasets and tokenizer caches first; the
    # others then read them instead of repeating the work. A resumed or continued run keeps its
    # checkpoint's tokenizer.
    with accelerator.main_process_first():
        data, tokenizer = prepare_data(config, resume_path or init_path)
    fingerprint = data.fingerprint()
    check_resume_data(saved_state, fingerprint)
    model = model_for_run(
        config, tokenizer, source, attention_for(accelerator.device, accelerator.mixed_precision)
    )
    reference = None
    if data.format == PROMPT_FORMAT and is_sharded(accelerator):
        raise HfminiError(
            "GRPO samples completions with the whole model on each process, which FSDP and "
            "DeepSpeed shard: train with DDP (accelerate launch --multi_gpu) or one process"
        )
    if data.format in (PREFERENCE_FORMAT, PROMPT_FORMAT):
        check_reference_possible(config, accelerator, init_path)
        # A frozen copy of the starting weights, made before a checkpoint is loaded into the
        # model (None with LoRA, SimPO, or GRPO without a KL penalty).
        reference = frozen_reference(config, model)
    per_token = flops_per_token(model, data.block_size)
    optimizer = build_optimizer(model, args)
    loader = data.train_loader(args.per_device_train_batch_size, args.seed)
    if args.overwrite_output_dir and accelerator.is_main_process:
        # Only now that the data, model and batch are known good.
        clear_previous_run(Path(args.output_dir))
    accelerator.wait_for_everyone()
    if data.sharded_by_accelerate:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    else:  # each process reads its own part of the data
        model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference.to(accelerator.device)
    save_weights_as_model(accelerator, tokenizer)
    if init_path is not None and resume_path is None:  # before the schedule reads the rate
        load_for_new_run(accelerator, model, optimizer, init_path)
    batches_per_epoch = len(loader) if data.num_train_blocks is not None else 0
    length = run_length(config, batches_per_epoch)
    progress = Progress()
    # Not prepared: accelerate would step a prepared scheduler once per process.
    scheduler = build_scheduler(optimizer, args, length, progress)
    state = TrainState(settings=training_settings(config), data_fingerprint=fingerprint)
    if resume_path is not None:
        state = resume(accelerator, resume_path, config, data, scheduler, progress, length)
    device = accelerator.device
    if data.format == PROMPT_FORMAT:
        objective = GRPOObjective(config, data, tokenizer, reference, accelerator)
        if resume_path is not None:  # the sampler goes on where it stood
            objective.load_state_dict(load_objective_state(resume_path, accelerator))
    elif data.format == PREFERENCE_FORMAT:
        objective = PreferenceObjective(config, reference)
    else:
        objective = objective_for(config)
    run = Run(
        config=config,
        accelerator=accelerator,
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=loader,
        batches_per_epoch=batches_per_epoch,
        data=data,
        tokenizer=tokenizer,
        token_bytes=torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float64),
        run_logger=RunLogger(accelerator, args.output_dir),
        ema=weight_average_for(accelerator, model, args.ema_decay, resume_path),
        length=length,
        progress=progress,
        clock=TrainClock(state.train_seconds),
        # A preference row is two sequences, chosen and rejected, each up to max_length.
        tokens_per_step=config.tokens_per_step(accelerator.num_processes)
        * sequences_per_row(data.format),
        flops_per_token=per_token,
        peak_flops=peak_flops(device, accelerator.mixed_precision),
        state=state,
        window=LogWindow(
            loss_sum=torch.tensor(state.loss_since_log, device=device),
            items=torch.tensor(state.items_since_log, device=device),
            step_items=torch.tensor(0, device=device),
            first_bad_step=torch.tensor(-1, device=device),
            micro_batches=state.batches_since_log,
            metric_sums={
                name: torch.tensor(value, device=device)
                for name, value in state.metrics_since_log.items()
            },
        ),
        base_model=source.hub_id if source is not None else None,
    )
    if data.format == PREFERENCE_FORMAT and args.precompute_ref_log_probs and args.needs_reference:
        precompute_reference(run)
    start_trackers(accelerator, config)
    log_run_start(config, accelerator, data, run.model, length)
    return run


def precompute_reference(run: Run) -> None:
    """precompute_ref_log_probs: every train and held-out pair scored by the reference once,
    before the first step; the reference module is freed. A resumed run scores them again from
    the same starting weights, so its numbers are those of the unbroken run."""
    import time

    started = time.perf_counter()
    data, acc = run.data, run.accelerator
    model = acc.unwrap_model(run.model)
    splits = {
        "train": (data.train_pairs, data.collate),
        "validation": (data.eval_pairs, data.collate),
    }
    run.objective.precompute(splits, model, run.config.train.per_device_eval_batch_size, acc)
    logger.info(
        "reference log-probs of %d train and %d held-out pairs computed in %.1fs; the reference "
        "model is freed",
        len(data.train_pairs),
        len(data.eval_pairs),
        time.perf_counter() - started,
    )


def check_before_work(
    config: Config,
) -> tuple[Path | None, TrainState, ModelSource | None, Path | None]:
    """Everything that can fail before anything expensive runs or anything is deleted: the
    output_dir and the checkpoint to resume, the cache, the starting model's folder or Hub id,
    the Hub access a push will need. Returns (checkpoint to resume or None, its saved state,
    the starting model or None, the checkpoint a new run starts from or None)."""
    args = config.train
    resume_path = check_output_dir(args)
    init_path = None
    if args.init_from_checkpoint is not None and resume_path is None:
        init_path = resolve_init_path(args.init_from_checkpoint, args.output_dir)
        check_init_matches(init_path, config)
    saved_state = TrainState()
    if resume_path is not None:
        saved_state = TrainState.from_json((resume_path / STATE_FILE).read_text())
        check_resume_settings(saved_state, config)
    check_cache_writable()
    source = None
    if config.model.model_name_or_path is not None:
        source = resolve(config.model.model_name_or_path)
        check_fits_run(source, config.model, config.data.block_size)
    if args.push_to_hub:
        check_hub_access(args.hub_model_id)
    return resume_path, saved_state, source, init_path


def check_reference_possible(config: Config, accelerator, init_path: Path | None) -> None:
    """A loss that compares with a reference model, where none can be kept."""
    args = config.train
    if not args.needs_reference:
        return
    what = (
        f"beta {args.beta} (GRPO's KL penalty)" if args.is_grpo else f"loss_type {args.loss_type}"
    )
    instead = "beta 0" if args.is_grpo else "loss_type simpo"
    if is_sharded(accelerator):
        raise HfminiError(
            f"{what} keeps a reference model, which FSDP and DeepSpeed do not shard yet: train "
            f"with DDP or one process, or use {instead}"
        )
    if init_path is not None:
        raise HfminiError(
            f"{what} takes the starting weights as its reference, and init_from_checkpoint "
            "loads them too late for that: start from the checkpoint's weights with "
            f"--model_name_or_path CHECKPOINT instead, or use {instead}"
        )


def start_process(config: Config, init_path: Path | None = None):
    """The Accelerator of this process, with logging, CPU threads and the seed set."""
    args = config.train
    accelerator = make_accelerator(config)
    if init_path is not None and is_sharded(accelerator):
        raise HfminiError(
            "init_from_checkpoint reads one whole optimizer state, which FSDP and DeepSpeed "
            "shard: continue with DDP or one process, or start from the weights alone with "
            "--model_name_or_path CHECKPOINT"
        )
    if config.model.use_peft and is_sharded(accelerator):
        raise HfminiError(
            "use_peft is not supported with FSDP or DeepSpeed yet: train LoRA with DDP (its "
            "optimizer state is small), or drop --use_peft"
        )
    configure_logging(accelerator)
    use_all_cpu_cores(accelerator.device.type)
    if accelerator.is_main_process:  # run_training's lock made it already; bench calls setup alone
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    return accelerator


def model_for_run(config: Config, tokenizer, source: ModelSource | None, attention: str):
    """The model training starts from: a GPT-2 built from scratch, or `source`'s weights fitted
    to the tokenizer; with gradient checkpointing and LoRA adapters when asked."""
    new_tokens: list[int] = []
    if source is None:
        model = build_model(config.model, tokenizer, config.context_length(), attention)
    else:
        model = load_model(source, config.model.dropout, attention)
        new_tokens = fit_to_tokenizer(model, tokenizer, config.model)
    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if config.model.use_peft:
        model = add_lora(model, config.model, config.train.gradient_checkpointing, new_tokens)
    return model


def resume(
    accelerator,
    path: Path,
    config: Config,
    data: TrainingData,
    scheduler,
    progress: Progress,
    length: RunLength,
) -> TrainState:
    """Weights, optimizer, RNG, scheduler, counters and the data's reading position from
    checkpoint `path`; the metrics logged after it are dropped (they will be logged again)."""
    state = load_checkpoint(accelerator, path, scheduler)
    if data.position() is not None:  # data that keeps a reading position (a stream)
        data.restore_position(load_data_position(path, accelerator))
    state.settings = training_settings(config)  # a longer constant schedule may differ
    progress.step = state.step
    progress.done = length.progress(state.step, state.train_seconds)
    if accelerator.is_main_process:
        truncate_metrics_after(config.train.output_dir, state.step)
    logger.info("resumed from %s at step %d", path, state.step)
    return state
