"""The training loop, driven by Accelerate: setup → train (log, evaluate, checkpoint) → finish.

    accelerate launch recipes/train.py --config recipes/shakespeare/config.yaml [--key value ...]

All mutable progress lives in `Run.state` (a TrainState); everything else in `Run` is built once
by `setup`. The same code runs as one process, under `accelerate launch` on many GPUs/nodes, and
under `torchrun` on CPU machines (gloo data parallel).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hfmini.checkpoint import (
    TrainState,
    check_output_dir,
    clear_previous_run,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from hfmini.config import Config, parse_config
from hfmini.ema import WeightAverage
from hfmini.errors import HfminiError
from hfmini.export import save_model
from hfmini.interrupt import StopRequest
from hfmini.optim import build_optimizer, build_scheduler
from hfmini.runtime import (
    attention_for,
    configure_logging,
    make_accelerator,
    use_all_cpu_cores,
)

logger = logging.getLogger("hfmini")


@dataclass
class Run:
    """Everything one training run holds. Built by `setup`; only `state` changes afterwards."""

    config: Config
    accelerator: object
    model: torch.nn.Module  # prepared (DDP/FSDP/compiled) model used for training steps
    optimizer: object
    scheduler: object
    train_loader: object
    data: object  # hfmini.data.PreparedData
    tokenizer: object
    token_bytes: torch.Tensor  # (vocab,) UTF-8 bytes per token id, for bits per byte
    run_logger: object  # hfmini.tracking.RunLogger
    total_steps: int
    tokens_per_step: int  # over all processes and accumulation micro-batches
    flops_per_token: float
    peak_flops: float
    state: TrainState = field(default_factory=TrainState)
    # Device-side accumulators, read only at logging steps to avoid a host sync per step.
    loss_sum: torch.Tensor | None = None
    first_bad_step: torch.Tensor | None = None
    last_grad_norm: torch.Tensor | None = None
    interval_start: float = 0.0
    interval_tokens: int = 0
    last_samples: list = field(default_factory=list)  # (prompt, text) from the latest evaluation
    ema: WeightAverage | None = None  # when ema_decay > 0


# ---------------------------------------------------------------------------------------------
# setup


def _load_tokenizer_for(config: Config, resume_path: Path | None):
    """A factory for prepare_data: the resumed run's own tokenizer, or a given/trained one."""
    from hfmini.tokenizer import get_tokenizer

    def factory(train_chunks):
        context = config.context_length()
        if resume_path is not None:
            saved = get_tokenizer(str(resume_path / "tokenizer"), model_max_length=context)
            if config.model.tokenizer_name:
                given = get_tokenizer(config.model.tokenizer_name, model_max_length=context)
                if given.get_vocab() != saved.get_vocab():
                    raise HfminiError(
                        f"tokenizer {config.model.tokenizer_name} does not match the one the "
                        f"checkpoint was trained with ({len(given)} vs {len(saved)} tokens): drop "
                        "--tokenizer_name when resuming"
                    )
            return saved
        return get_tokenizer(
            config.model.tokenizer_name, train_chunks, "text", config.model.vocab_size, context
        )

    return factory


def setup(config: Config) -> Run:
    """Check, load data, build tokenizer/model/optimizer, prepare with Accelerate, maybe resume."""
    from accelerate.utils import set_seed

    from hfmini.data import BlockDataset, prepare_data
    from hfmini.model import build_model, count_parameters, flops_per_token
    from hfmini.throughput import peak_flops
    from hfmini.tokenizer import token_byte_lengths
    from hfmini.tracking import RunLogger, truncate_metrics_after

    args = config.train
    resume_path = check_output_dir(args)  # before anything expensive
    if args.push_to_hub:
        from hfmini.hub import check_hub_access

        check_hub_access(args.hub_model_id)
    accelerator = make_accelerator(config)
    configure_logging(accelerator)
    use_all_cpu_cores()
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        if args.overwrite_output_dir:
            clear_previous_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)

    # Data and tokenizer: the main process fills the datasets and tokenizer caches first; the
    # others then read them instead of repeating the work.
    with accelerator.main_process_first():
        data, tokenizer = prepare_data(config.data, _load_tokenizer_for(config, resume_path))

    precision = accelerator.mixed_precision
    model = build_model(
        config.model,
        tokenizer,
        config.context_length(),
        attn_implementation=attention_for(accelerator.device, precision),
    )
    if args.gradient_checkpointing:
        # transformers 5 renamed it; keep working on both names.
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    n_params = count_parameters(model)
    optimizer = build_optimizer(model, args)
    loader = torch.utils.data.DataLoader(
        BlockDataset(data.train_tokens, data.block_size),
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,  # fixed shapes: no recompilation for a ragged last batch
    )
    if len(loader) == 0:
        raise HfminiError(
            f"the train split has {data.num_train_blocks} blocks, fewer than one batch of "
            f"{args.per_device_train_batch_size}: lower per_device_train_batch_size or block_size"
        )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total_steps = config.total_train_steps(len(loader))
    # Not prepared: accelerate would step a prepared scheduler once per process.
    scheduler = build_scheduler(optimizer, args, total_steps)
    tokens_per_step = (
        args.per_device_train_batch_size
        * data.block_size
        * args.gradient_accumulation_steps
        * accelerator.num_processes
    )
    raw_model = accelerator.unwrap_model(model)
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
        total_steps=total_steps,
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token(raw_model),
        peak_flops=peak_flops(accelerator.device, precision),
    )
    if resume_path is not None:
        run.state = load_checkpoint(accelerator, resume_path, scheduler)
        if accelerator.is_main_process:
            truncate_metrics_after(output_dir, run.state.step)
        logger.info("resumed from %s at step %d", resume_path, run.state.step)
    run.ema = _weight_average(run, resume_path)
    device = accelerator.device
    run.loss_sum = torch.tensor(run.state.loss_since_log, device=device)
    run.first_bad_step = torch.tensor(-1, device=device)
    accelerator.init_trackers(
        args.project_name, config=config.to_flat_dict(), init_kwargs=_tracker_init_kwargs(args)
    )
    _log_start(run, n_params)
    _log_tracking(run)
    return run


def _weight_average(run: Run, resume_path: Path | None) -> WeightAverage | None:
    """The moving average of the weights when ema_decay is set, restored when resuming."""
    from accelerate.utils import DistributedType

    acc, args = run.accelerator, run.config.train
    if not args.ema_decay:
        return None
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise HfminiError(
            "ema_decay needs the whole model on every process, which FSDP and DeepSpeed shard: "
            "set ema_decay 0 or train with DDP"
        )
    ema = WeightAverage(acc.unwrap_model(run.model, keep_torch_compile=False), args.ema_decay)
    if resume_path is not None and not ema.load(resume_path):
        logger.warning("%s holds no weight average: starting one from its weights", resume_path)
    return ema


def _tracker_init_kwargs(args) -> dict:
    """W&B files go under output_dir/wandb, next to the run they describe."""
    wandb_kwargs = {"dir": args.output_dir}
    if args.run_name:
        wandb_kwargs["name"] = args.run_name
    return {"wandb": wandb_kwargs}


def _log_tracking(run: Run) -> None:
    names = [tracker.name for tracker in run.accelerator.trackers]
    if "wandb" in names and os.environ.get("WANDB_MODE") == "offline":
        logger.info(
            "W&B: no API key or login found, so the run is recorded offline under %s/wandb; "
            "upload it later with `wandb sync %s/wandb/offline-run-*` (after `wandb login`)",
            run.config.train.output_dir,
            run.config.train.output_dir,
        )
    logger.info(
        "tracking: %s, always %s/metrics.jsonl",
        ", ".join(names) or "no tracker",
        run.config.train.output_dir,
    )


def _log_start(run: Run, n_params: int) -> None:
    config, data = run.config, run.data
    acc = run.accelerator
    logger.info(
        "model: GPT-2 %s, %d layers, %d heads, %d wide, context %d, vocabulary %d: %.2fM parameters",
        config.model.model_size,
        *config.model.shape(),
        config.context_length(),
        len(run.tokenizer),
        n_params / 1e6,
    )
    logger.info(
        "data: %d training blocks of %d tokens (%.2fM tokens, %.2f bytes/token), %d validation "
        "tokens",
        data.num_train_blocks,
        data.block_size,
        data.train_tokens.numel() / 1e6,
        data.train_bytes / max(1, data.train_tokens.numel() + data.dropped_train_tokens),
        data.eval_tokens.numel(),
    )
    logger.info(
        "processes: %d (%s on %s); global batch: %d per device × %d accumulation × %d processes "
        "= %d blocks = %d tokens per optimizer step; %d steps (%.2fM tokens)",
        acc.num_processes,
        acc.distributed_type.value,
        acc.device,
        config.train.per_device_train_batch_size,
        config.train.gradient_accumulation_steps,
        acc.num_processes,
        run.tokens_per_step // data.block_size,
        run.tokens_per_step,
        run.total_steps,
        run.total_steps * run.tokens_per_step / 1e6,
    )


# ---------------------------------------------------------------------------------------------
# train


def train(run: Run, stop: StopRequest) -> bool:
    """Run optimizer steps until total_steps; returns False if stopped early by a signal."""
    from tqdm.auto import tqdm

    acc, state = run.accelerator, run.state
    run.model.train()
    progress = tqdm(
        total=run.total_steps,
        initial=state.step,
        disable=not acc.is_local_main_process,
        desc="training",
        dynamic_ncols=True,
    )
    run.interval_start, run.interval_tokens = time.perf_counter(), 0
    try:  # close the bar first, so an error message is the last line the user sees
        while state.step < run.total_steps:
            run.train_loader.set_epoch(state.epoch)
            loader = run.train_loader
            if state.batches_in_epoch:  # resuming mid-epoch: skip what this epoch consumed
                loader = acc.skip_first_batches(loader, state.batches_in_epoch)
            for batch in loader:
                stepped = training_step(run, batch["input_ids"])
                state.batches_in_epoch += 1
                if not stepped:
                    continue
                progress.update(1)
                saved = on_step_end(run, progress)
                if state.step < run.total_steps and _stop_requested(run, stop, saved):
                    return False
                if state.step >= run.total_steps:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
    finally:
        progress.close()
    return True


def training_step(run: Run, input_ids: torch.Tensor) -> bool:
    """Forward and backward on one micro-batch (B, T); an optimizer step when accumulation is
    complete. Returns whether an optimizer step happened. No host synchronisation."""
    acc, args = run.accelerator, run.config.train
    with acc.accumulate(run.model):
        loss = run.model(input_ids=input_ids, labels=input_ids).loss
        acc.backward(loss)
        run.loss_sum += loss.detach()
        run.state.batches_since_log += 1
        if acc.sync_gradients:
            # An infinite bound measures the norm (for the log) without clipping.
            max_norm = args.max_grad_norm or float("inf")
            run.last_grad_norm = acc.clip_grad_norm_(run.model.parameters(), max_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    if not acc.sync_gradients:
        return False
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update()
    run.state.step += 1
    run.state.tokens_seen += run.tokens_per_step
    run.interval_tokens += run.tokens_per_step
    # Remember the first step whose loss was not finite, on the device (read at logging time).
    bad_now = (~torch.isfinite(loss.detach())) & (run.first_bad_step < 0)
    run.first_bad_step = torch.where(bad_now, run.state.step, run.first_bad_step)
    return True


def _stop_requested(run: Run, stop: StopRequest, saved: bool) -> bool:
    """Did any process get a signal? Costs one tiny all-reduce per step when multi-process."""
    requested = stop.requested
    if run.accelerator.num_processes > 1:
        flag = torch.tensor(float(requested), device=run.accelerator.device)
        requested = run.accelerator.reduce(flag, reduction="sum").item() > 0
    if requested:
        _check_finite(run)
        path = save(run) if not saved else list_checkpoints(run.config.train.output_dir)[-1]
        logger.info(
            "stopped at step %d; checkpoint saved to %s. Resume with the same command plus "
            "--resume_from_checkpoint latest",
            run.state.step,
            path,
        )
    return requested


def _check_finite(run: Run) -> None:
    bad_step = int(run.first_bad_step.item())  # host sync
    if bad_step >= 0:
        newest = list_checkpoints(run.config.train.output_dir)
        kept = f"the last good checkpoint is {newest[-1]}" if newest else "no checkpoint was saved"
        raise HfminiError(
            f"loss became non-finite at step {bad_step}: lower learning_rate or raise warmup_steps;"
            f" {kept}"
        )


def on_step_end(run: Run, progress) -> bool:
    """Logging, evaluation and checkpoints after optimizer step `run.state.step`; returns
    whether a checkpoint was saved."""
    args, state = run.config.train, run.state
    is_last = state.step >= run.total_steps
    log_now = state.step % args.logging_steps == 0 or is_last
    eval_now = args.eval_steps and state.step % args.eval_steps == 0 and not is_last
    save_now = args.save_steps and state.step % args.save_steps == 0 and not is_last
    if log_now or eval_now or save_now:
        _check_finite(run)
    if log_now:
        log_training(run, progress)
    if eval_now:
        evaluate(run, final=False)
    if save_now:
        save(run)
    return bool(save_now)


def log_training(run: Run, progress) -> None:
    from hfmini.throughput import mfu

    acc, state = run.accelerator, run.state
    loss_sum = run.loss_sum
    if acc.num_processes > 1:
        loss_sum = acc.reduce(loss_sum, reduction="mean")
    loss = loss_sum.item() / max(1, state.batches_since_log)  # host sync
    elapsed = time.perf_counter() - run.interval_start
    tokens_per_second = run.interval_tokens / max(elapsed, 1e-9)
    metrics = {
        "train/loss": loss,
        "train/learning_rate": run.scheduler.get_last_lr()[0],
        "train/grad_norm": float(run.last_grad_norm) if run.last_grad_norm is not None else 0.0,
        "train/tokens_per_second": tokens_per_second,
        "train/mfu": mfu(
            run.flops_per_token, tokens_per_second / acc.num_processes, run.peak_flops
        ),
        "train/tokens_seen": state.tokens_seen,
        "train/epoch": state.epoch + state.batches_in_epoch / max(1, len(run.train_loader)),
    }
    run.run_logger.log(metrics, step=state.step)
    progress.set_postfix(
        loss=f"{loss:.3f}",
        lr=f"{metrics['train/learning_rate']:.2e}",
        tok_s=f"{tokens_per_second:,.0f}",
        refresh=False,
    )
    run.loss_sum.zero_()
    state.batches_since_log = 0
    run.interval_start, run.interval_tokens = time.perf_counter(), 0


def _inference_model(run: Run, final: bool = False):
    """The model for evaluation and sampling, and whether the main process may use it alone.

    Sharded models (FSDP, DeepSpeed) must run through their wrapper on every process; otherwise
    the plain module, which avoids recompiling a compiled model for the ragged final block.
    Evaluations during training run as the model trains (under bf16 autocast with mixed
    precision, which is faster); the final one drops accelerate's autocast wrapper for good, so
    its figures are those of the fp32 weights as exported.
    """
    from accelerate.utils import DistributedType

    sharded = run.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded:
        return run.model, False
    plain = run.accelerator.unwrap_model(
        run.model, keep_fp32_wrapper=not final, keep_torch_compile=False
    )
    return plain, True


def evaluate(run: Run, final: bool) -> dict:
    """Score the validation split, sample from the prompts, log both, redraw the loss curve."""
    from hfmini.evaluation import evaluate_stream
    from hfmini.generate import generate_text
    from hfmini.plot import plot_runs

    acc, args = run.accelerator, run.config.train
    started = time.perf_counter()
    model, can_sample_alone = _inference_model(run, final)
    metrics = evaluate_stream(
        model,
        run.data.eval_tokens,
        run.data.block_size,
        args.per_device_eval_batch_size,
        run.token_bytes,
        acc,
        max_blocks=None if final else run.config.data.max_eval_samples,
    )
    samples = []
    if acc.is_main_process and can_sample_alone:
        for prompt in args.sample_prompts:
            text = generate_text(
                model,
                run.tokenizer,
                prompt,
                args.sample_max_new_tokens,
                temperature=0.8,
                top_k=50,
                top_p=0.95,
                seed=args.seed,
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
    # Evaluation time is not training time.
    run.interval_start += time.perf_counter() - started
    run.last_samples = samples
    acc.wait_for_everyone()
    return metrics


def save(run: Run) -> Path:
    """A resumable checkpoint of the current step."""
    state = run.state
    state.loss_since_log = float(run.loss_sum.item())
    path = save_checkpoint(
        run.accelerator,
        run.config.train.output_dir,
        state,
        run.scheduler,
        run.tokenizer,
        run.config.train.save_total_limit,
        run.ema,
    )
    logger.info("checkpoint saved: %s", path)
    args = run.config.train
    if args.push_to_hub and args.hub_strategy == "every_save" and run.accelerator.is_main_process:
        from hfmini.hub import push_snapshot

        model, _ = _inference_model(run)
        push_snapshot(model, run.tokenizer, args.hub_model_id, args.hub_private_repo, state.step)
    return path


def _without_compile(model):
    """The module torch.compile wrapped (DDP, FSDP or the model itself), or `model` if none."""
    from accelerate.utils import is_compiled_module

    return model._orig_mod if is_compiled_module(model) else model


def finish(run: Run) -> dict:
    """Final evaluation on the whole validation split, the exported Hub folder with its model
    card and `evaluate` results, and the upload when push_to_hub is set."""
    import evaluate as hf_evaluate

    from hfmini.card import write_model_card

    if run.ema is not None:
        # Training is over: the average takes the weights' place for the evaluation and export.
        run.ema.copy_to_model()
        logger.info("final weights: the moving average (decay %s)", run.config.train.ema_decay)
    metrics = evaluate(run, final=True)
    acc, args = run.accelerator, run.config.train
    # Gathers the full weights on every process when sharded (FSDP/DeepSpeed); a no-op copy else.
    # Without torch.compile's wrapper, whose keys would all start with "_orig_mod." and load as
    # missing weights in from_pretrained.
    state_dict = acc.get_state_dict(_without_compile(run.model))
    if acc.is_main_process:
        model = acc.unwrap_model(run.model, keep_torch_compile=False)
        results = {
            **metrics,
            "step": run.state.step,
            "tokens_seen": run.state.tokens_seen,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        out = args.output_dir
        save_model(model, run.tokenizer, out, run.config.to_dict(), results, state_dict=state_dict)
        hf_evaluate.save(out, **results, config=run.config.to_dict())
        write_model_card(
            out, run.config, results, run.last_samples, acc.num_processes, model.config
        )
        logger.info("model saved to %s", out)
        if args.push_to_hub:
            from hfmini.hub import push_folder

            push_folder(out, args.hub_model_id, args.hub_private_repo, "hfmini: final model")
    acc.wait_for_everyone()
    return metrics


def run_training(config: Config) -> dict:
    """The whole run. Returns the final evaluation metrics (empty if stopped by a signal)."""
    with StopRequest() as stop:
        run = setup(config)
        try:
            completed = train(run, stop)
            metrics = finish(run) if completed else {}
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
        logger.info(
            "done in %.1f min: validation loss %.4f, bits per byte %.4f",
            (time.perf_counter() - started) / 60,
            metrics["eval_loss"],
            metrics["bits_per_byte"],
        )
    return 0
