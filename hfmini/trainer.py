"""The training loop, driven by Accelerate: setup → train (log, validate, save) → finish.

    accelerate launch recipes/train.py --config recipes/shakespeare/config.yaml [--key value ...]

`setup` builds a `Run`: what is fixed for the run, plus the two things the loop changes, its
`state` (what a checkpoint needs to resume exactly) and its `window` (what is accumulated between
two logging steps). The same code runs as one process, under `accelerate launch` on many
GPUs/nodes, and under `torchrun` on CPU machines (gloo data parallel).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hfmini.checkpoint import (
    STATE_FILE,
    TrainState,
    check_resume_data,
    check_resume_settings,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    training_settings,
)
from hfmini.config import SAMPLING_DEFAULTS, Config, check_cache_writable, parse_config
from hfmini.errors import HfminiError
from hfmini.interrupt import StopRequest
from hfmini.output_dir import OutputDirLock, check_output_dir, clear_previous_run

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

    from hfmini.budget import Progress, RunLength, TrainClock
    from hfmini.data import PreparedData
    from hfmini.ema import WeightAverage
    from hfmini.packing import PreparedExamples
    from hfmini.streaming import StreamingData
    from hfmini.tracking import RunLogger

logger = logging.getLogger("hfmini")


@dataclass
class LogWindow:
    """What the loop accumulates between two logging steps. The tensors stay on the device and
    are read only at logging steps, to avoid a host sync per step."""

    loss_sum: torch.Tensor  # () sum of micro-batch losses since the last log
    first_bad_step: torch.Tensor  # () first optimizer step whose loss was not finite; -1: none
    grad_norm: torch.Tensor | None = None  # () the latest optimizer step's gradient norm
    micro_batches: int = 0
    tokens: int = 0  # over all processes
    started: float = field(default_factory=time.perf_counter)

    def restart(self) -> None:
        self.loss_sum.zero_()
        self.micro_batches = self.tokens = 0
        self.started = time.perf_counter()


@dataclass
class Run:
    """One training run. Built by `setup`; afterwards only `state` and `window` change."""

    config: Config
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP/FSDP/compiled) model used for training steps
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    train_loader: DataLoader
    data: PreparedData | PreparedExamples | StreamingData
    tokenizer: PreTrainedTokenizerBase
    token_bytes: torch.Tensor  # (vocab,) UTF-8 bytes per token id, for bits per byte
    run_logger: RunLogger
    ema: WeightAverage | None  # when ema_decay > 0
    length: RunLength  # max_steps and/or the time budget
    progress: Progress  # step and fraction done, read by the scheduler and the weight average
    clock: TrainClock  # seconds of training steps, over every session of the run
    tokens_per_step: int  # over all processes and accumulation micro-batches
    flops_per_token: float
    peak_flops: float
    state: TrainState
    window: LogWindow
    base_model: str | None = None  # the Hub id fine-tuned from, for the model card


# ---------------------------------------------------------------------------------------------
# setup


def setup(config: Config) -> Run:
    """Check, load data, build tokenizer/model/optimizer, prepare with Accelerate, maybe resume."""
    from accelerate.utils import set_seed

    from hfmini.budget import Progress, TrainClock
    from hfmini.checkpoint import save_weights_as_model
    from hfmini.data import prepare_data
    from hfmini.ema import weight_average_for
    from hfmini.model import (
        build_model,
        enable_gradient_checkpointing,
        flops_per_token,
    )
    from hfmini.optim import build_optimizer, build_scheduler
    from hfmini.pretrained import check_fits_run, fit_to_tokenizer, load_model, resolve
    from hfmini.runtime import (
        attention_for,
        configure_logging,
        is_sharded,
        make_accelerator,
        use_all_cpu_cores,
    )
    from hfmini.throughput import peak_flops
    from hfmini.tokenizer import token_byte_lengths
    from hfmini.tracking import RunLogger, log_run_start, start_trackers, truncate_metrics_after

    args = config.train
    # Everything is checked before anything expensive runs or anything is deleted.
    resume_path = check_output_dir(args)
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
        from hfmini.hub import check_hub_access

        check_hub_access(args.hub_model_id)
    accelerator = make_accelerator(config)
    if config.model.use_peft and is_sharded(accelerator):
        raise HfminiError(
            "use_peft is not supported with FSDP or DeepSpeed yet: train LoRA with DDP (its "
            "optimizer state is small), or drop --use_peft"
        )
    configure_logging(accelerator)
    use_all_cpu_cores(accelerator.device.type)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:  # run_training's lock made it already; bench calls setup alone
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)

    # Data and tokenizer: the main process fills the datasets and tokenizer caches first; the
    # others then read them instead of repeating the work.
    with accelerator.main_process_first():
        data, tokenizer = prepare_data(config, resume_path)
    fingerprint = data.fingerprint()
    check_resume_data(saved_state, fingerprint)

    precision = accelerator.mixed_precision
    attention = attention_for(accelerator.device, precision)
    new_tokens: list[int] = []
    if source is None:
        model = build_model(config.model, tokenizer, config.context_length(), attention)
    else:
        model = load_model(source, config.model.dropout, attention)
        new_tokens = fit_to_tokenizer(model, tokenizer, config.model)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if config.model.use_peft:
        from hfmini.lora import add_lora

        model = add_lora(model, config.model, args.gradient_checkpointing, new_tokens)
    per_token = flops_per_token(model, data.block_size)
    optimizer = build_optimizer(model, args)
    loader = training_loader(data, args)
    streaming = is_streaming(data)
    if not streaming and len(loader) == 0:
        raise HfminiError(
            f"the train split has {data.num_train_blocks} blocks, fewer than one batch of "
            f"{args.per_device_train_batch_size}: lower per_device_train_batch_size or block_size"
        )
    if args.overwrite_output_dir and accelerator.is_main_process:
        clear_previous_run(output_dir)  # only now that the data, model and batch are known good
    accelerator.wait_for_everyone()
    if streaming:  # each process reads its own part of the stream: no sharding by accelerate
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    save_weights_as_model(accelerator, tokenizer)
    length = config.run_length(0 if streaming else len(loader))
    progress = Progress()
    # Not prepared: accelerate would step a prepared scheduler once per process.
    scheduler = build_scheduler(optimizer, args, length, progress)
    state = TrainState(settings=training_settings(config), data_fingerprint=fingerprint)
    if resume_path is not None:
        state = load_checkpoint(accelerator, resume_path, scheduler)
        if streaming:
            from hfmini.checkpoint import load_stream_state

            data.stream.load_state_dict(load_stream_state(resume_path, accelerator))
        state.settings = training_settings(config)  # a longer constant schedule may differ
        progress.step = state.step
        progress.done = length.progress(state.step, state.train_seconds)
        if accelerator.is_main_process:
            truncate_metrics_after(output_dir, state.step)
        logger.info("resumed from %s at step %d", resume_path, state.step)
    device = accelerator.device
    run = Run(
        config=config,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=loader,
        data=data,
        tokenizer=tokenizer,
        token_bytes=torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float64),
        run_logger=RunLogger(accelerator, output_dir),
        ema=weight_average_for(accelerator, model, args.ema_decay, resume_path),
        length=length,
        progress=progress,
        clock=TrainClock(state.train_seconds),
        tokens_per_step=config.tokens_per_step(accelerator.num_processes),
        flops_per_token=per_token,
        peak_flops=peak_flops(device, precision),
        state=state,
        window=LogWindow(
            loss_sum=torch.tensor(state.loss_since_log, device=device),
            first_bad_step=torch.tensor(-1, device=device),
            micro_batches=state.batches_since_log,
        ),
        base_model=source.hub_id if source is not None else None,
    )
    start_trackers(accelerator, config)
    log_run_start(config, accelerator, data, run.model, length)
    return run


def is_streaming(data) -> bool:
    return data.num_train_blocks is None


def training_loader(data, args) -> torch.utils.data.DataLoader:
    """The DataLoader of a run: blocks of the prepared token stream, sequences of examples padded
    per batch, or blocks of a stream read as training goes (in this process: its position is the
    run's)."""
    from functools import partial

    from hfmini.data import BlockDataset
    from hfmini.packing import PreparedExamples, pad_sequences

    size = args.per_device_train_batch_size
    # Its own generator: starting an epoch (or a resumed one) then draws nothing from the global
    # RNG, whose restored state must go to dropout exactly as in an unbroken run.
    generator = torch.Generator().manual_seed(args.seed)
    if is_streaming(data):
        return torch.utils.data.DataLoader(data.stream, batch_size=size, generator=generator)
    collate = None
    dataset = BlockDataset(data.train_tokens, data.block_size)
    if isinstance(data, PreparedExamples):
        dataset, collate = data.train, partial(pad_sequences, pad_id=data.pad_id)
    return torch.utils.data.DataLoader(
        dataset,
        collate_fn=collate,
        batch_size=size,
        shuffle=True,
        drop_last=True,  # fixed shapes: no recompilation for a ragged last batch
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------
# train


def train(run: Run, stop: StopRequest) -> bool:
    """Run optimizer steps until the run's length; returns False if stopped early by a signal."""
    acc, state = run.accelerator, run.state
    run.model.train()
    progress = progress_bar(run)
    run.window.started = time.perf_counter()
    try:  # close the bar first, so an error message is the last line the user sees
        streaming = is_streaming(run.data)
        while not run.progress.finished:
            loader = run.train_loader
            if not streaming:  # a stream restores its own position (setup)
                loader.set_epoch(state.epoch)
                if state.batches_in_epoch:  # resuming mid-epoch: skip what this epoch consumed
                    loader = acc.skip_first_batches(loader, state.batches_in_epoch)
            for batch in loader:
                if streaming:
                    batch = {k: v.to(acc.device) for k, v in batch.items()}
                if not run.clock.running:  # this session's first batch
                    compile_before_the_clock(run, batch)
                    run.clock.start()
                stepped = training_step(run, batch)
                state.batches_in_epoch += 1
                if not stepped:
                    continue
                advance_bar(run, progress)
                saved = on_step_end(run, progress, stop)
                if not run.progress.finished and stop_requested(run, stop, saved):
                    return False
                if run.progress.finished:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
    finally:
        progress.close()
        run.clock.stop()
    if run.length.has_budget and acc.is_main_process:
        logger.info(
            "trained %d steps (%.2fM tokens) in %.1f minutes of training",
            state.step,
            state.tokens_seen / 1e6,
            run.clock.seconds() / 60,
        )
    return True


def compile_before_the_clock(run: Run, batch: dict[str, torch.Tensor]) -> None:
    """With torch.compile, compile on a forward and backward of the first batch before the time
    budget's clock starts, then drop its gradients and restore the random state: without dropout
    the run is the one it would have been (with dropout, the compiled graph's own random stream
    has moved on by one pass), and compilation (seconds to tens of seconds, once per session)
    does not eat the warmup of a schedule laid out over minutes. Eager models skip this."""
    from accelerate.utils import is_compiled_module

    from hfmini.runtime import without_compile

    if not run.length.has_budget:
        return
    if not (is_compiled_module(run.model) or is_compiled_module(without_compile(run.model))):
        return
    started = time.perf_counter()
    devices = [run.accelerator.device] if run.accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        run.model(**model_inputs(batch), use_cache=False).loss.backward()
    run.optimizer.zero_grad(set_to_none=True)
    logger.info(
        "compiled in %.1fs, before the budget's clock started", time.perf_counter() - started
    )
    run.window.started += time.perf_counter() - started


def progress_bar(run: Run):
    """Steps out of max_steps; with a time budget, the percent of the run done (the further of
    steps and time), the step shown beside it."""
    from tqdm.auto import tqdm

    options = {
        "disable": run.config.train.disable_tqdm or not run.accelerator.is_local_main_process,
        "desc": "training",
        "dynamic_ncols": True,
    }
    if not run.length.has_budget:
        return tqdm(total=run.length.total_steps, initial=run.state.step, **options)
    return tqdm(
        total=100.0,
        initial=round(100 * run.progress.done, 1),
        bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]",
        **options,
    )


def advance_bar(run: Run, bar) -> None:
    if not run.length.has_budget:
        bar.update(1)
        return
    bar.update(round(100 * run.progress.done, 1) - bar.n)


def score_start(run: Run, stop: StopRequest) -> bool:
    """Fine-tuning: score the starting model on the whole validation split as step 0, so that
    the run ends on "bits per byte X → Y". Returns False if a signal cut it short."""
    if run.config.model.from_scratch or run.state.step > 0:
        return True
    validated = validate(run, stop, final=False)
    if validated is None:
        logger.info("stopped before the first step: nothing was trained, nothing to resume")
        return False
    run.state.start_metrics = validated[0]
    return True


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch as the model's keyword arguments. Text blocks: every token is a label. Examples:
    their labels and position ids (which keep packed examples apart), and the loss averaged over
    the label count clamped to 1, so a micro-batch whose answers were all cut off gives 0, not
    0/0."""
    from hfmini.packing import IGNORE_INDEX

    if "labels" not in batch:
        return {"input_ids": batch["input_ids"], "labels": batch["input_ids"]}
    labels = batch["labels"]  # (B, T)
    count = (labels[:, 1:] != IGNORE_INDEX).sum().clamp(min=1)  # on the device: no host sync
    return {**batch, "num_items_in_batch": count}


def training_step(run: Run, batch: dict[str, torch.Tensor]) -> bool:
    """Forward and backward on one micro-batch (B, T); an optimizer step when accumulation is
    complete. Returns whether an optimizer step happened. No host synchronisation."""
    acc, args, window = run.accelerator, run.config.train, run.window
    with acc.accumulate(run.model):
        # No KV cache in training: building one each forward costs time and, under FSDP with
        # torch.compile, recompiles every block (the cache's layer index differs per block).
        # Without a cache and an attention_mask, position ids that restart mark packed examples.
        loss = run.model(**model_inputs(batch), use_cache=False).loss
        acc.backward(loss)
        window.loss_sum += loss.detach()
        window.micro_batches += 1
        if acc.sync_gradients:
            # An infinite bound measures the norm (for the log) without clipping.
            max_norm = args.max_grad_norm or float("inf")
            window.grad_norm = acc.clip_grad_norm_(run.model.parameters(), max_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    if not acc.sync_gradients:
        return False
    run.state.step += 1
    agree_on_progress(run)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(average_window_scale(run))
    run.state.tokens_seen += run.tokens_per_step
    window.tokens += run.tokens_per_step
    # Remember the first step whose loss was not finite, on the device (read at logging time).
    bad_now = (~torch.isfinite(loss.detach())) & (window.first_bad_step < 0)
    window.first_bad_step = torch.where(bad_now, run.state.step, window.first_bad_step)
    return True


def agree_on_progress(run: Run) -> None:
    """Update `run.progress` after an optimizer step. With a time budget and several processes,
    all take the slowest clock (one tiny all-reduce a step): the learning rate, and the step that
    ends the run, must be the same everywhere."""
    acc, step = run.accelerator, run.state.step
    seconds = run.clock.seconds() if run.length.has_budget else 0.0
    if run.length.has_budget and acc.num_processes > 1:
        elapsed = torch.tensor(seconds, dtype=torch.float64, device=acc.device)
        seconds = float(acc.reduce(elapsed, reduction="max").item())
    run.progress.step = step
    run.progress.done = run.length.progress(step, seconds)


def average_window_scale(run: Run) -> float:
    """The weight average's window, as a fraction of the one `ema_decay` gives: below 1 when a
    time budget ends the run before max_steps (ema.py)."""
    length, progress = run.length, run.progress
    if not (length.has_budget and length.total_steps) or progress.done <= 0.0:
        return 1.0
    expected_steps = progress.step / progress.done  # at the pace so far
    return min(1.0, expected_steps / length.total_steps)


def stop_agreed(run: Run, stop: StopRequest) -> bool:
    """Did any process get a signal? Multi-process, accelerate's trigger: one tiny all-reduce."""
    acc = run.accelerator
    if stop.requested:
        acc.set_trigger()
    return acc.check_trigger() if acc.num_processes > 1 else stop.requested


def stop_requested(run: Run, stop: StopRequest, saved: bool) -> bool:
    """Did any process get a signal? If so, checkpoint (unless this step just did) and say how
    to resume. Asked once per step."""
    requested = stop_agreed(run, stop)
    if requested:
        with run.clock.paused():
            save_to_resume(run, saved)
    return requested


def save_to_resume(run: Run, saved: bool) -> None:
    """Checkpoint (unless `saved`: this step's is on disk) and say how to resume."""
    check_finite(run)
    path = save(run) if not saved else list_checkpoints(run.config.train.output_dir)[-1]
    logger.info(
        "stopped at step %d; checkpoint saved to %s. Resume with the same command plus "
        "--resume_from_checkpoint latest",
        run.state.step,
        path,
    )


def check_finite(run: Run) -> None:
    """Stop with a one-line error if a loss since the start was not finite (a host sync)."""
    bad_step = int(run.window.first_bad_step.item())
    if bad_step >= 0:
        newest = list_checkpoints(run.config.train.output_dir)
        kept = f"the last good checkpoint is {newest[-1]}" if newest else "no checkpoint was saved"
        raise HfminiError(
            f"loss became non-finite at step {bad_step}: lower learning_rate or raise warmup_steps;"
            f" {kept}"
        )


def on_step_end(run: Run, progress, stop: StopRequest) -> bool:
    """Logging, validation (cut short by a signal) and checkpoints after optimizer step
    `run.state.step`; returns whether a checkpoint was saved."""
    args, step = run.config.train, run.state.step
    is_last = run.progress.finished
    log_now = step % args.logging_steps == 0 or is_last
    validate_now = args.eval_steps and step % args.eval_steps == 0 and not is_last
    save_now = args.save_steps and step % args.save_steps == 0 and not is_last
    if log_now or validate_now or save_now:
        check_finite(run)
    if log_now:
        log_training(run, progress)
    with run.clock.paused():  # neither counts against a time budget
        if validate_now:
            validate(run, stop, final=False)
        if save_now:
            save(run)
    return bool(save_now)


def log_training(run: Run, progress) -> None:
    """Loss, learning rate, gradient norm, tokens/s and MFU of the window; then restart it."""
    from hfmini.throughput import mfu

    acc, state, window = run.accelerator, run.state, run.window
    loss_sum = window.loss_sum
    if acc.num_processes > 1:
        loss_sum = acc.reduce(loss_sum, reduction="mean")
    loss = loss_sum.item() / max(1, window.micro_batches)  # host sync
    tokens_per_second = window.tokens / max(time.perf_counter() - window.started, 1e-9)
    metrics = {
        "train/loss": loss,
        "train/learning_rate": run.scheduler.get_last_lr()[0],
        "train/grad_norm": float(window.grad_norm) if window.grad_norm is not None else 0.0,
        "train/tokens_per_second": tokens_per_second,
        "train/mfu": mfu(
            run.flops_per_token, tokens_per_second / acc.num_processes, run.peak_flops
        ),
        "train/tokens_seen": state.tokens_seen,
        "train/epoch": (
            run.data.stream.passes
            if is_streaming(run.data)
            else state.epoch + state.batches_in_epoch / max(1, len(run.train_loader))
        ),
    }
    run.run_logger.log(metrics, step=state.step)
    # With a time budget the bar counts percent of the run, so the step goes beside it.
    step = {"step": state.step} if run.length.has_budget else {}
    progress.set_postfix(
        **step,
        loss=f"{loss:.3f}",
        lr=f"{metrics['train/learning_rate']:.2e}",
        tok_s=f"{tokens_per_second:,.0f}",
        refresh=False,
    )
    window.restart()


def validate(run: Run, stop: StopRequest, final: bool) -> tuple[dict, list] | None:
    """Score the validation split, sample from the prompts, log both, redraw the loss curve.
    Returns (metrics, [(prompt, sample)]), or None if a signal cut the scoring short."""
    from hfmini.evaluation import evaluate_examples, evaluate_stream
    from hfmini.packing import PreparedExamples
    from hfmini.plot import plot_runs
    from hfmini.runtime import inference_model
    from hfmini.sampling import generate_text

    acc, args = run.accelerator, run.config.train
    started = time.perf_counter()
    model, can_sample_alone = inference_model(acc, run.model, final)
    scoring = {
        "accelerator": acc,
        # The start of a fine-tuning run (step 0) is scored in full, as the end is.
        "max_blocks": None if final or run.state.step == 0 else run.config.data.max_eval_samples,
        "should_stop": lambda: stop_agreed(run, stop),  # multi-process: an all-reduce per batch
    }
    batch_size = args.per_device_eval_batch_size
    if isinstance(run.data, PreparedExamples):
        validation, pad_id = run.data.validation, run.data.pad_id
        metrics = evaluate_examples(
            model, validation, pad_id, batch_size, run.token_bytes, **scoring
        )
    else:
        tokens, block_size = run.data.eval_tokens, run.data.block_size
        metrics = evaluate_stream(model, tokens, block_size, batch_size, run.token_bytes, **scoring)
    if metrics is None:
        return None
    samples = []
    if acc.is_main_process and can_sample_alone:
        for prompt in args.sample_prompts:
            text = generate_text(
                model,
                run.tokenizer,
                sample_prompt(run, prompt),
                args.sample_max_new_tokens,
                **SAMPLING_DEFAULTS,
                seed=args.seed,
                chat=is_chat(run),
            )
            samples.append((prompt, text))
        model.train()
    logged = {f"eval/{k.removeprefix('eval_')}": v for k, v in metrics.items()}
    logged["train/tokens_seen"] = run.state.tokens_seen
    run.run_logger.log(logged, step=run.state.step)
    run.run_logger.log_samples(samples, step=run.state.step)
    if acc.is_main_process:
        plot_runs(
            [args.output_dir],
            Path(args.output_dir) / "loss_curve.png",
            labels=[args.run_name or Path(args.output_dir).name],
        )
        logger.info(
            "step %d: eval loss %.4f, perplexity %.2f, bits per byte %.4f (%.1fs)",
            run.state.step,
            metrics["eval_loss"],
            metrics["perplexity"],
            metrics["bits_per_byte"],
            time.perf_counter() - started,
        )
        for prompt, text in samples:
            logger.info("sample:\n%s%s", prompt, text)
    # Validation time is not training time.
    run.window.started += time.perf_counter() - started
    acc.wait_for_everyone()
    return metrics, samples


def is_chat(run: Run) -> bool:
    """Trained on examples rendered by a chat template."""
    from hfmini.packing import PreparedExamples

    return isinstance(run.data, PreparedExamples) and bool(run.tokenizer.chat_template)


def sample_prompt(run: Run, prompt: str) -> str:
    """A sample prompt as the model will be used: for a chat run, a user turn and the generation
    prompt of its chat template; else the text itself."""
    if not is_chat(run):
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return run.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def save(run: Run) -> Path:
    """A resumable checkpoint of the current step (with the logging window, so that logged
    losses after a resume are exactly those of an uninterrupted run)."""
    state, args = run.state, run.config.train
    state.loss_since_log = float(run.window.loss_sum.item())
    state.batches_since_log = run.window.micro_batches
    state.train_seconds = run.clock.seconds()
    path = save_checkpoint(
        run.accelerator,
        args.output_dir,
        state,
        run.scheduler,
        run.tokenizer,
        args.save_total_limit,
        run.ema,
        run.config.to_dict(),
        stream=run.data.stream if is_streaming(run.data) else None,
    )
    logger.info("checkpoint saved: %s", path)
    if args.push_to_hub and args.hub_strategy == "every_save" and run.accelerator.is_main_process:
        from hfmini.hub import push_snapshot
        from hfmini.runtime import inference_model

        model, _ = inference_model(run.accelerator, run.model)
        push_snapshot(model, run.tokenizer, args.hub_model_id, args.hub_private_repo, state.step)
    return path


def finish(run: Run, stop: StopRequest) -> dict:
    """Final validation on the whole split, the exported Hub folder with its model card and
    `evaluate` results, and the upload when push_to_hub is set. A signal during the validation
    checkpoints instead (no export); returns {} then."""
    import evaluate as hf_evaluate

    from hfmini.card import write_model_card
    from hfmini.export import atomic_export, save_model
    from hfmini.model import count_parameters
    from hfmini.runtime import peak_memory_bytes, without_compile

    trained = None
    if run.ema is not None:
        # Training is over: the average takes the weights' place for the validation and export.
        # The trained ones are kept (a copy of the weights) for a checkpoint, should a signal cut
        # the validation short.
        trained = [p.detach().clone() for p in run.ema.params]
        run.ema.copy_to_model()
        logger.info("final weights: the moving average (decay %s)", run.config.train.ema_decay)
    validated = validate(run, stop, final=True)
    if validated is None:  # back to the trained weights; checkpoint unless resumed from this step
        if trained is not None:
            with torch.no_grad():
                torch._foreach_copy_(run.ema.params, trained)
        kept = list_checkpoints(run.config.train.output_dir)
        save_to_resume(run, saved=any(p.name == f"step-{run.state.step}" for p in kept))
        return {}
    metrics, samples = validated
    acc, args = run.accelerator, run.config.train
    lora = run.config.model.use_peft
    # Gathers the full weights on every process when sharded (FSDP/DeepSpeed); a no-op copy else.
    # Without torch.compile's wrapper, whose keys would all start with "_orig_mod." and load as
    # missing weights in from_pretrained. (LoRA runs are never sharded.)
    state_dict = None if lora else acc.get_state_dict(without_compile(run.model))
    start = {f"start_{k}": v for k, v in run.state.start_metrics.items()}
    if acc.is_main_process:
        model = acc.unwrap_model(run.model, keep_torch_compile=False)
        trainable = count_parameters(model)
        if lora and run.config.model.merge_adapters:
            model = model.merge_and_unload()  # B A folded into W: a plain model, no peft needed
        results = {
            **metrics,
            **start,
            "step": run.state.step,
            "tokens_seen": run.state.tokens_seen,
            "parameters": count_parameters(model, trainable_only=False),
            "trainable_parameters": trainable,
            "train_runtime": run.clock.seconds(),
            "peak_memory_bytes": peak_memory_bytes(acc.device),
        }
        out = args.output_dir
        with atomic_export(out) as folder:
            config_dict = run.config.to_dict()
            save_model(model, run.tokenizer, folder, config_dict, results, state_dict=state_dict)
            hf_evaluate.save(str(folder), **results, config=config_dict)
            card = (run.config, results, samples, acc.num_processes, model.config)
            write_model_card(folder, *card, acc.mixed_precision, run.base_model, chat=is_chat(run))
        logger.info("model saved to %s", out)
        if args.push_to_hub:
            from hfmini.hub import push_folder

            push_folder(out, args.hub_model_id, args.hub_private_repo, "hfmini: final model")
    acc.wait_for_everyone()
    return {**metrics, **start}


def run_training(config: Config) -> dict:
    """The whole run. Returns the final validation metrics (empty if stopped by a signal).

    The main process (rank 0, as launchers number them) holds output_dir's lock throughout.
    """
    main_process = os.environ.get("RANK", "0") == "0"
    with StopRequest() as stop, OutputDirLock(config.train.output_dir, main_process):
        run = setup(config)
        try:
            completed = score_start(run, stop) and train(run, stop)
            metrics = finish(run, stop) if completed else {}
        finally:
            run.accelerator.end_training()
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recipes/train.py` and `hfmini train`: errors print one line, exit 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork for datasets.map
    started = time.perf_counter()
    try:
        config = parse_config(argv)
        metrics = run_training(config)
    except HfminiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    if metrics:
        before = metrics.get("start_bits_per_byte")
        logger.info(
            "done in %.1f min: validation loss %.4f, bits per byte %s%.4f",
            (time.perf_counter() - started) / 60,
            metrics["eval_loss"],
            f"{before:.4f} → " if before is not None else "",
            metrics["bits_per_byte"],
        )
    return 0
