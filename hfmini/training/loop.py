"""The training loop: optimizer steps until the run's length, with logging, validation and
checkpoints between them.

    train ─► for each batch: training_step (run.objective's loss, backward, clip, optimizer,
             schedule, weight average) ─► on_step_end (log, validate, save) ─► stop_requested

No host synchronisation per step: losses and the first non-finite step stay on the device until a
logging step reads them.
"""

from __future__ import annotations

import logging
import time

import torch
from accelerate.utils import is_compiled_module
from tqdm.auto import tqdm

from hfmini.data.preference import PREFERENCE_FORMAT
from hfmini.data.prompts import PROMPT_FORMAT
from hfmini.models.device import without_compile
from hfmini.training.interrupt import StopRequest
from hfmini.training.run import Run, check_finite, save, save_to_resume, stop_agreed
from hfmini.training.throughput import mfu
from hfmini.training.validation import validate

logger = logging.getLogger("hfmini")


def train(run: Run, stop: StopRequest) -> bool:
    """Run optimizer steps until the run's length; returns False if stopped early by a signal."""
    acc, state = run.accelerator, run.state
    run.model.train()
    progress = progress_bar(run)
    run.window.started = time.perf_counter()
    try:  # close the bar first, so an error message is the last line the user sees
        while not run.progress.finished:
            # Resuming mid-epoch skips what this epoch consumed (a stream restores its position).
            batches = run.data.epoch_batches(
                run.train_loader, state.epoch, state.batches_in_epoch, acc
            )
            for batch in batches:
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
    if not run.length.has_budget:
        return
    if not (is_compiled_module(run.model) or is_compiled_module(without_compile(run.model))):
        return
    started = time.perf_counter()
    devices = [run.accelerator.device] if run.accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        run.objective(run.model, batch).total.backward()
    run.optimizer.zero_grad(set_to_none=True)
    logger.info(
        "compiled in %.1fs, before the budget's clock started", time.perf_counter() - started
    )
    run.window.started += time.perf_counter() - started


def progress_bar(run: Run):
    """Steps out of max_steps; with a time budget, the percent of the run done (the further of
    steps and time), the step shown beside it."""
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


def training_step(run: Run, batch: dict[str, torch.Tensor]) -> bool:
    """Forward and backward on one micro-batch (B, T); an optimizer step when accumulation is
    complete. Returns whether an optimizer step happened. No host synchronisation."""
    acc, args, window = run.accelerator, run.config.train, run.window
    with acc.accumulate(run.model):
        loss = run.objective(run.model, batch)  # the micro-batch's summed loss (objectives.py)
        # Scaled to about a per-item mean, so that gradients keep their usual size until
        # weigh_by_items makes the step's the exact mean over its items.
        acc.backward(
            loss.total * acc.gradient_accumulation_steps * acc.num_processes / nominal_items(run)
        )
        window.loss_sum += loss.total.detach()
        window.items += loss.items
        for name, value in loss.metrics.items():
            if name not in window.metric_sums:
                window.metric_sums[name] = torch.zeros((), device=value.device)
            window.metric_sums[name] += value
        window.step_items += loss.items
        window.micro_batches += 1
        if acc.sync_gradients:
            weigh_by_items(run)
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
    bad_now = (~torch.isfinite(loss.total.detach())) & (window.first_bad_step < 0)
    window.first_bad_step = torch.where(bad_now, run.state.step, window.first_bad_step)
    return True


def nominal_items(run: Run) -> int:
    """The items of an optimizer step of full blocks over every process: B × (T - 1) × GA × P
    label tokens; of preference pairs, B × GA × P pairs; of GRPO's B completions, their
    B × max_completion_length tokens at most (dapo) or B completions (grpo, dr_grpo)."""
    args = run.config.train
    per_row = run.data.block_size - 1
    if run.data.format == PREFERENCE_FORMAT:
        per_row = 1
    elif run.data.format == PROMPT_FORMAT:
        per_row = args.max_completion_length if args.loss_type == "dapo" else 1
    per_batch = args.per_device_train_batch_size * per_row
    return per_batch * args.gradient_accumulation_steps * run.accelerator.num_processes


def weigh_by_items(run: Run) -> None:
    """Make the accumulated gradients those of the step's summed item losses divided by its item
    count over every micro-batch and process, so every label token weighs alike however the step
    is split. A tiny all-reduce per step with several processes; one fused multiply.

    The backward passes scaled each summed loss by GA × P / nominal_items, accelerate divided it
    by GA and data parallelism averaged it over the P processes: the gradients are the sums'
    divided by nominal_items, here rescaled to divided by the items counted. (DeepSpeed keeps
    the gradients to itself: there the step stays divided by nominal_items.)"""
    acc, window = run.accelerator, run.window
    items = window.step_items
    if acc.num_processes > 1:
        items = acc.reduce(items.clone(), reduction="sum")
    factor = (nominal_items(run) / items.clamp(min=1)).float()
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)
    window.step_items.zero_()


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


def stop_requested(run: Run, stop: StopRequest, saved: bool) -> bool:
    """Did any process get a signal? If so, checkpoint (unless this step just did). Asked once
    per step."""
    requested = stop_agreed(run, stop)
    if requested:
        with run.clock.paused():
            save_to_resume(run, saved, stop)
    return requested


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


def divided_metrics(sums: dict[str, float], items: float, objective) -> dict[str, float]:
    """The objective's metric sums as means: each over the count its objective names (GRPO's
    `divisors`: completions, tokens, ...), else over the loss's items. Names starting with "_"
    are counts, not logged."""
    divisors = getattr(objective, "divisors", {})
    return {
        name: value / max(1.0, sums[divisors[name]] if name in divisors else items)
        for name, value in sums.items()
        if not name.startswith("_")
    }


def log_training(run: Run, progress) -> None:
    """Loss, learning rate, gradient norm, tokens/s and MFU of the window; then restart it."""
    acc, state, window = run.accelerator, run.state, run.window
    names = sorted(window.metric_sums)
    # (2 + metrics,) summed loss, items, and the objective's other sums
    sums = torch.stack(
        [window.loss_sum.float(), window.items.float()]
        + [window.metric_sums[name].float() for name in names]
    )
    if acc.num_processes > 1:
        sums = acc.reduce(sums, reduction="sum")
    loss_sum, items, *others = sums.tolist()  # host sync
    loss = loss_sum / max(1.0, items)  # the token-weighted mean over the window
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
        "train/epoch": run.data.epochs_done(
            state.epoch, state.batches_in_epoch, run.batches_per_epoch
        ),
    }
    extra = divided_metrics(dict(zip(names, others, strict=True)), items, run.objective)
    metrics.update({f"train/{name}": value for name, value in extra.items()})
    run.run_logger.log(metrics, step=state.step)
    if getattr(run.objective, "latest", None):  # GRPO: the newest completions and their rewards
        run.run_logger.log_completions(run.objective.latest, step=state.step)
    # With a time budget the bar counts percent of the run, so the step goes beside it.
    step = {"step": state.step} if run.length.has_budget else {}
    if "rewards/accuracies" in extra:  # preference pairs: how often chosen wins, and by how much
        step |= {
            "acc": f"{extra['rewards/accuracies']:.2f}",
            "margin": f"{extra['rewards/margins']:.3f}",
        }
    if "reward" in extra:  # GRPO: the sampled completions' mean reward
        step |= {"reward": f"{extra['reward']:.3f}"}
    progress.set_postfix(
        **step,
        loss=f"{loss:.3f}",
        lr=f"{metrics['train/learning_rate']:.2e}",
        tok_s=f"{tokens_per_second:,.0f}",
        refresh=False,
    )
    window.restart()
