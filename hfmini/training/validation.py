"""Validation during and at the end of training: the validation set scored, samples drawn from
the prompts, both logged, the loss curve redrawn. Fine-tuning scores the starting model too.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hfmini.config import SAMPLING_DEFAULTS
from hfmini.data.preference import PREFERENCE_FORMAT
from hfmini.data.prompts import PROMPT_FORMAT
from hfmini.models.sampling import generate_text
from hfmini.outputs.export import resume_hint
from hfmini.outputs.plot import plot_runs
from hfmini.run_folder import LOSS_CURVE_FILE
from hfmini.training.accelerator import inference_model
from hfmini.training.evaluation import score_validation
from hfmini.training.grpo import score_prompts
from hfmini.training.interrupt import StopRequest
from hfmini.training.preference import score_pairs
from hfmini.training.run import Run, stop_agreed

logger = logging.getLogger("hfmini")


def validate(run: Run, stop: StopRequest, final: bool) -> tuple[dict, list] | None:
    """Score the validation split, sample from the prompts, log both, redraw the loss curve.
    Returns (metrics, [(prompt, sample)]), or None if a signal cut the scoring short."""
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
    metrics = score_validation(model, run.data.validation, batch_size, run.token_bytes, **scoring)
    if metrics is None:
        return None
    if run.data.format == PREFERENCE_FORMAT:  # the held-out pairs' rewards, beside the drift
        metrics |= score_pairs(
            run.objective, model, run.data, batch_size, acc, scoring["max_blocks"]
        )
    if run.data.format == PROMPT_FORMAT:  # the held-out prompts' rewards, beside the drift
        metrics |= score_prompts(
            run.objective, model, run.data, batch_size, acc, scoring["max_blocks"]
        )
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
                chat=run.is_chat,
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
            Path(args.output_dir) / LOSS_CURVE_FILE,
            labels=[args.run_name or Path(args.output_dir).name],
            then=resume_hint(args.output_dir),
        )
        logger.info(
            "step %d: eval loss %.4f, perplexity %.2f, bits per byte %.4f (%.1fs)",
            run.state.step,
            metrics["eval_loss"],
            metrics["perplexity"],
            metrics["bits_per_byte"],
            time.perf_counter() - started,
        )
        if "rewards/accuracies" in metrics:
            logger.info(
                "step %d: held-out pairs: reward accuracy %.3f, margin %.4f, pair loss %.4f",
                run.state.step,
                metrics["rewards/accuracies"],
                metrics["rewards/margins"],
                metrics["pair_loss"],
            )
        if "reward" in metrics:
            logger.info(
                "step %d: held-out prompts: mean reward %.4f (%s), completions %.1f tokens, "
                "%.0f%% cut at max_completion_length",
                run.state.step,
                metrics["reward"],
                ", ".join(
                    f"{k.split('/')[1]} {v:.4f}"
                    for k, v in metrics.items()
                    if k.startswith("rewards/") and k.endswith("/mean")
                ),
                metrics["completions/mean_length"],
                100 * metrics["completions/clipped_ratio"],
            )
        for prompt, text in samples:
            logger.info("sample:\n%s%s", prompt, text)
    # Validation time is not training time.
    run.window.started += time.perf_counter() - started
    acc.wait_for_everyone()
    return metrics, samples


def sample_prompt(run: Run, prompt: str) -> str:
    """A sample prompt as the model will be used: for a chat run, a user turn and the generation
    prompt of its chat template; else the text itself."""
    if not run.is_chat:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return run.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


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
