"""The end of a run: the final weights (the moving average, when kept) scored on the whole
validation split, then exported as a Hub folder with its model card and `evaluate` results, and
uploaded when push_to_hub is set. A signal during that validation checkpoints instead.
"""

from __future__ import annotations

import logging

import torch

from hfmini.data.preference import PREFERENCE_FORMAT
from hfmini.data.prompts import PROMPT_FORMAT
from hfmini.models.device import peak_memory_bytes, without_compile
from hfmini.models.size import count_parameters
from hfmini.outputs.card import write_model_card
from hfmini.outputs.export import (
    atomic_export,
    save_evaluate_results,
    save_model,
    weights_bytes,
)
from hfmini.outputs.hub import push_folder
from hfmini.run_folder import checkpoint_name, list_checkpoints
from hfmini.training.interrupt import StopRequest
from hfmini.training.run import Run, save_to_resume
from hfmini.training.validation import validate

logger = logging.getLogger("hfmini")


def finish(run: Run, stop: StopRequest) -> dict:
    """Final validation, export and upload; returns the final validation metrics (with the
    starting model's as start_*), or {} when a signal cut the validation short."""
    trained = use_final_weights(run)
    validated = validate(run, stop, final=True)
    if validated is None:
        keep_for_resume(run, trained, stop)
        return {}
    metrics, samples = validated
    start = {f"start_{k}": v for k, v in run.state.start_metrics.items()}
    export(run, {**metrics, **start}, samples)
    return {**metrics, **start}


def use_final_weights(run: Run) -> list[torch.Tensor] | None:
    """With a weight average, put it in the weights' place for the validation and export; returns
    a copy of the trained weights (for a checkpoint, should a signal cut the validation short)."""
    if run.ema is None:
        return None
    trained = [p.detach().clone() for p in run.ema.params]
    run.ema.copy_to_model()
    logger.info("final weights: the moving average (decay %s)", run.config.train.ema_decay)
    return trained


def keep_for_resume(run: Run, trained: list[torch.Tensor] | None, stop: StopRequest) -> None:
    """Back to the trained weights, and a checkpoint unless resumed from this very step."""
    if trained is not None:
        with torch.no_grad():
            torch._foreach_copy_(run.ema.params, trained)
    kept = list_checkpoints(run.config.train.output_dir)
    save_to_resume(run, any(p.name == checkpoint_name(run.state.step) for p in kept), stop)


def export(run: Run, metrics: dict, samples: list[tuple[str, str]]) -> None:
    """The Hub folder in output_dir (written by the main process), then the upload if asked."""
    acc, args = run.accelerator, run.config.train
    lora = run.config.model.use_peft
    # Gathers the full weights on every process when sharded (FSDP/DeepSpeed); a no-op copy else.
    # Without torch.compile's wrapper, whose keys would all start with "_orig_mod." and load as
    # missing weights in from_pretrained. (LoRA runs are never sharded.)
    state_dict = None if lora else acc.get_state_dict(without_compile(run.model))
    if acc.is_main_process:
        model = acc.unwrap_model(run.model, keep_torch_compile=False)
        trainable = count_parameters(model)
        if lora and run.config.model.merge_adapters:
            model = model.merge_and_unload()  # B A folded into W: a plain model, no peft needed
        results = {
            **metrics,
            "step": run.state.step,
            "tokens_seen": run.state.tokens_seen,
            "parameters": count_parameters(model, trainable_only=False),
            "trainable_parameters": trainable,
            "train_runtime": run.clock.seconds(),
            "peak_memory_bytes": peak_memory_bytes(acc.device),
        }
        with atomic_export(args.output_dir, needed=weights_bytes(model)) as folder:
            config_dict = run.config.to_dict()
            save_model(model, run.tokenizer, folder, config_dict, results, state_dict=state_dict)
            save_evaluate_results(folder, results, config_dict)
            card = (run.config, results, samples, acc.num_processes, model.config)
            write_model_card(
                folder,
                *card,
                acc.mixed_precision,
                run.base_model,
                chat=run.is_chat,
                preference=run.data.format == PREFERENCE_FORMAT,
                grpo=run.data.format == PROMPT_FORMAT,
            )
        logger.info("model saved to %s", args.output_dir)
        if args.push_to_hub:
            push_folder(
                args.output_dir, args.hub_model_id, args.hub_private_repo, "hfmini: final model"
            )
    acc.wait_for_everyone()
