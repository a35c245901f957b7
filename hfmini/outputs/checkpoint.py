"""Training checkpoints under `output_dir/checkpoints/step-N/`, written so a kill never leaves half.

A checkpoint is a model folder plus what a resume needs:

  config.json  model.safetensors  generation_config.json  tokenizer*.json   ← opens like a model
  (LoRA runs: adapter_config.json  adapter_model.safetensors instead of the weights)
  optimizer.bin  scheduler.pt  random_states_N.pkl   ← accelerate's save_state, per process
  training_config.yaml  trainer_state.json           ← the settings; counters and data position

so `from_pretrained(".../checkpoints/step-N")`, `hfmini generate`, `hfmini eval` and
`model_name_or_path` take it as it is. trainer_state.json is JSON so that loading never unpickles.
A checkpoint is written into `step-N.tmp/` and renamed to `step-N/` only once complete; a folder
without the final marker is never resumed from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hfmini.config.parsing import ARG_GROUPS, read_yaml
from hfmini.errors import HfminiError, disk_full
from hfmini.models.device import is_sharded
from hfmini.models.tokenizer import save_tokenizer
from hfmini.outputs.export import add_n_ctx, generation_config_for
from hfmini.run_folder import (
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    MODEL_CARD_FILE,
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    STATE_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TRAINING_CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_name,
    checkpoints_dir,
    list_checkpoints,
    weights_readable,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where the run is: what a checkpoint needs to continue exactly, besides tensors and RNG."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)
    tokens_seen: int = 0  # over all processes
    train_seconds: float = 0.0  # in training steps so far (budget.TrainClock), every session
    # The logging window at save time, so the first loss logged after a resume is exact.
    loss_since_log: float = 0.0  # summed item losses since the last logged step (this process)
    items_since_log: int = 0  # the items (label tokens) they sum over
    metrics_since_log: dict = dataclasses.field(default_factory=dict)  # the objective's other sums
    batches_since_log: int = 0
    # What the run is, so that a resume with other settings or data is refused.
    settings: dict = dataclasses.field(default_factory=dict)  # training_settings(config)
    data_fingerprint: str = ""  # PreparedData.fingerprint()
    # Fine-tuning: the starting model's validation metrics, scored before the first step.
    start_metrics: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def resolve_resume_path(output_dir: str | Path, resume_from_checkpoint: str) -> Path:
    """'latest' → the newest intact checkpoint in output_dir; a path → that checkpoint, checked."""
    if resume_from_checkpoint == "latest":
        candidates = list_checkpoints(output_dir)
        for path in reversed(candidates):
            reason = damage(path)
            if reason is None:
                return path
            logger.warning("skipping damaged checkpoint %s (%s)", path, reason)
        raise HfminiError(
            f"no intact checkpoint in {checkpoints_dir(output_dir)}: drop "
            "--resume_from_checkpoint to start fresh (with --overwrite_output_dir)"
        )
    path = Path(resume_from_checkpoint)
    if path.is_dir() and not (path / STATE_FILE).is_file() and (path / CONFIG_FILE).is_file():
        raise HfminiError(
            f"{resume_from_checkpoint} is a model, not a training checkpoint: to train it further "
            f"(on new data, with a fresh optimizer and schedule) use --model_name_or_path "
            f"{resume_from_checkpoint} instead of --resume_from_checkpoint"
        )
    if not path.is_dir() or not (path / STATE_FILE).is_file():
        raise HfminiError(
            f"{resume_from_checkpoint} is not an hfmini checkpoint (no {STATE_FILE}): point "
            f"--resume_from_checkpoint at output_dir/checkpoints/step-N or use 'latest'"
        )
    reason = damage(path)
    if reason is not None:
        raise HfminiError(
            f"checkpoint {path} is damaged ({reason}): resume from an older one or use 'latest', "
            "which skips damaged checkpoints"
        )
    return path


def resolve_init_path(init_from_checkpoint: str, output_dir: str | Path) -> Path:
    """The checkpoint a new run starts from: the folder given, or a run folder's newest intact
    checkpoint; refused when it is not one, is damaged, or lies in the new run's output_dir."""
    path = Path(init_from_checkpoint)
    if path.is_dir() and not (path / STATE_FILE).is_file() and list_checkpoints(path):
        intact = [p for p in reversed(list_checkpoints(path)) if damage(p) is None]
        if not intact:
            raise HfminiError(f"no intact checkpoint in {checkpoints_dir(path)} to start from")
        path = intact[0]
    if not (path / STATE_FILE).is_file():
        model_hint = (
            f": it is a model without optimizer state; start from its weights alone with "
            f"--model_name_or_path {init_from_checkpoint}"
            if (path / CONFIG_FILE).is_file()
            else ": point it at output_dir/checkpoints/step-N or at a run folder with checkpoints"
        )
        raise HfminiError(f"init_from_checkpoint {path} is not an hfmini checkpoint{model_hint}")
    reason = damage(path)
    if reason is not None:
        raise HfminiError(f"checkpoint {path} is damaged ({reason}): start from an older one")
    out = Path(output_dir).resolve()
    if out == path.resolve() or out in path.resolve().parents:
        raise HfminiError(
            f"init_from_checkpoint {path} lies inside output_dir {output_dir}, which the new run "
            "writes: choose another output_dir (to continue the same run, resume it instead)"
        )
    return path


def check_init_matches(path: Path, config) -> None:
    """A checkpoint starts only a run of the same model: from scratch, or from the same
    model_name_or_path, fully or by LoRA as it was trained (its training_config.yaml says)."""
    saved = read_yaml(path / TRAINING_CONFIG_FILE, str(path / TRAINING_CONFIG_FILE), "") or {}
    if not isinstance(saved, dict) or not saved:
        return

    def same(a, b) -> bool:
        if a is None or b is None:
            return a is b
        if Path(a).is_dir() and Path(b).is_dir():
            return Path(a).resolve() == Path(b).resolve()
        return str(a) == str(b)

    was, now = saved.get("model_name_or_path"), config.model.model_name_or_path
    if not same(was, now):
        fix = f"give --model_name_or_path {was}" if was else "drop --model_name_or_path"
        raise HfminiError(
            f"checkpoint {path} was trained {f'from {was}' if was else 'from scratch'}, this run "
            f"{f'names {now}' if now else 'builds a model from scratch'}: {fix} to continue it"
        )
    if bool(saved.get("use_peft")) != bool(config.model.use_peft):
        fix = "--use_peft true" if saved.get("use_peft") else "--use_peft false"
        raise HfminiError(
            f"checkpoint {path} was trained {'by LoRA' if saved.get('use_peft') else 'fully'}: "
            f"continue it with {fix}"
        )


def load_for_new_run(accelerator, model, optimizer, path: Path) -> None:
    """Start a new run from checkpoint `path`: its weights and its optimizer's moments, with this
    run's optimizer settings (learning rate, betas, decay) and a schedule of its own. The model
    and optimizer must be those the checkpoint was trained with."""
    import torch

    try:
        if not _load_model_files(accelerator.unwrap_model(model, keep_torch_compile=False), path):
            raise ValueError(f"no {WEIGHTS_FILE} or {ADAPTER_WEIGHTS}")
        saved = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        now = optimizer.state_dict()
        sizes = [len(group["params"]) for group in now["param_groups"]]
        if [len(group["params"]) for group in saved["param_groups"]] != sizes:
            raise ValueError("its optimizer holds other parameter groups")
        # The moments continue; the hyperparameters are this run's (a saved initial_lr would
        # otherwise lay the new schedule over the old peak).
        saved["param_groups"] = [
            {**group, "params": old["params"]}
            for group, old in zip(now["param_groups"], saved["param_groups"], strict=True)
        ]
        optimizer.load_state_dict(saved)
    except (ValueError, RuntimeError, KeyError, OSError) as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise HfminiError(
            f"checkpoint {path} cannot start this run ({reason}): give the model settings and "
            f"optim it was trained with (its {TRAINING_CONFIG_FILE})"
        ) from None
    logger.info("starting from %s: its weights and optimizer state, a fresh schedule", path)


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    state: TrainState,
    scheduler,
    tokenizer,
    save_total_limit: int | None,
    ema=None,
    config_dict: dict | None = None,
    data_position: dict | None = None,
    objective_state: dict | None = None,
) -> Path:
    """Write step-N atomically on all processes (each saves its own RNG state); main renames.
    `ema` (hfmini.training.ema.WeightAverage), when given, is saved with it; `config_dict` (the run's
    settings) as training_config.yaml, which `hfmini eval` reads for the data source. `data_position`
    (TrainingData.position(): a stream's state): each process saves where its reading stands;
    `objective_state` (GRPO's sampler state and kept rollouts): each process saves its own.

    Cost: a full copy of model + optimizer state (about 3× the weights in fp32) to disk.
    """
    import torch
    import yaml

    root = checkpoints_dir(output_dir)
    final = root / checkpoint_name(state.step)
    tmp = root / f"{final.name}.tmp"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if data_position is not None:
            torch.save(data_position, tmp / f"stream-{accelerator.process_index}.pt")
        if objective_state is not None:
            torch.save(objective_state, tmp / f"objective-{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)

            save_tokenizer(tokenizer, tmp)
            if config_dict is not None:
                (tmp / TRAINING_CONFIG_FILE).write_text(
                    yaml.safe_dump(config_dict, sort_keys=False), encoding="utf-8"
                )
            (tmp / STATE_FILE).write_text(state.to_json())
            if ema is not None:
                ema.save(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    except Exception as err:
        # A full disk reaches us as OSError, as safetensors' or tokenizers' own error, or from
        # torch.save as a RuntimeError that names no cause: tell it by the free space left,
        # measured before the half-written folder is removed.
        full = disk_full(err, root)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if not full and not isinstance(err, OSError):
            raise
        raise _write_error(final, err, full) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and save_total_limit:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_weights_as_model(accelerator, tokenizer) -> None:
    """Make accelerate's save_state and load_state keep the weights as a model folder.

    accelerate would save the weights under the wrappers' names ("module.", "_orig_mod.", which
    from_pretrained cannot read); instead save_pretrained writes config.json and model.safetensors
    (a LoRA run: the adapters only, the base stays where model_name_or_path points), and the
    load reads them back into the plain module. FSDP and DeepSpeed keep their own sharded format.
    """

    if is_sharded(accelerator):
        return

    def save_hook(models, weights, output_dir) -> None:
        if len(models) != 1:
            return
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(models[0], keep_torch_compile=False)
            model.generation_config = generation_config_for(model, tokenizer)
            add_n_ctx(model.config)
            model.save_pretrained(output_dir)
            Path(output_dir, MODEL_CARD_FILE).unlink(missing_ok=True)  # peft's boilerplate card
        weights.clear()  # accelerate then writes no second copy

    def load_hook(models, input_dir) -> None:
        if len(models) == 1 and _load_model_files(
            accelerator.unwrap_model(models[0], keep_torch_compile=False), Path(input_dir)
        ):
            models.clear()  # loaded: accelerate skips its own (older checkpoints have only that)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _load_model_files(model, folder: Path) -> bool:
    """Load a checkpoint's model files into `model`; False if it has none (an older checkpoint)."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        if not (folder / ADAPTER_WEIGHTS).is_file():
            return False
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(folder / ADAPTER_WEIGHTS))
        if result.unexpected_keys:
            raise ValueError(f"unexpected adapter weights {result.unexpected_keys[:3]}")
        return True
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        return False
    state = load_file(folder / WEIGHTS_FILE)
    result = model.load_state_dict(state, strict=False)
    # save_pretrained stores a tied weight once (GPT-2's lm_head is wte): missing is fine for
    # those, and only those.
    tensors = {name: p for name, p in model.named_parameters(remove_duplicate=False)}
    loaded = {id(tensors[name]) for name in state if name in tensors}
    missing = [name for name in result.missing_keys if id(tensors.get(name)) not in loaded]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights do not match the model: {(missing + result.unexpected_keys)[:3]}"
        )
    return True


def load_checkpoint(accelerator, path: Path, scheduler) -> TrainState:
    """Restore model, optimizer, RNG (via accelerate), scheduler and counters from `path`.

    Every tensor file is read with torch.load(weights_only=True) or as safetensors: a checkpoint
    cannot run code.
    """
    import torch

    try:
        accelerator.load_state(str(path))
        scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=True))
    except (
        Exception
    ) as err:  # unpickling, shape or I/O errors: all mean "this checkpoint is unusable"
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise HfminiError(
            f"checkpoint {path} could not be loaded ({reason}): it is damaged or from another "
            "model shape; resume from an older checkpoint or start fresh"
        ) from None
    _warn_if_rng_state_unreadable(path, accelerator.process_index)
    return TrainState.from_json((path / STATE_FILE).read_text())


def load_data_position(path: Path, accelerator) -> dict:
    """This process's reading position (a stream's state) in checkpoint `path` (tensors, ints and strings only)."""
    return _process_file(
        path,
        accelerator,
        "stream",
        "stream position",
        "the number of processes and the streaming setting it was saved with",
    )


def load_objective_state(path: Path, accelerator) -> dict:
    """This process's objective state (GRPO's sampler and kept rollouts) in checkpoint `path`."""
    return _process_file(
        path, accelerator, "objective", "sampler state", "the number of processes it was saved with"
    )


def _process_file(path: Path, accelerator, stem: str, what: str, resume_with: str) -> dict:
    """checkpoint `path`'s {stem}-{process}.pt for this process (tensors, ints and strings only);
    missing, a one-line error naming `what` it holds and what to resume with."""
    import torch

    file = path / f"{stem}-{accelerator.process_index}.pt"
    if not file.is_file():
        raise HfminiError(
            f"checkpoint {path} holds no {what} for process {accelerator.process_index}: "
            f"resume with {resume_with}"
        )
    return torch.load(file, weights_only=True)


# Settings a resumed run may change: they decide what is logged, evaluated, saved or published, or
# where the data is read from, never what the weights become. The data itself is compared by its
# fingerprint instead.
RESUMABLE_SETTINGS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "init_from_checkpoint",  # a resume reads its own checkpoint, never this one again
        "logging_steps",
        "disable_tqdm",
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "report_to",
        "run_name",
        "project_name",
        "sample_prompts",
        "sample_max_new_tokens",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "hub_strategy",
        "license",
        "max_eval_samples",
        "per_device_eval_batch_size",
        "preprocessing_num_workers",
        "torch_compile",
        "use_cpu",
        "gradient_checkpointing",
        "dataset_name",
        "dataset_config_name",
        "train_file",
        "validation_file",
        "text_column",
        "tokenizer_name",
        "merge_adapters",
    }
)
# With a schedule that does not depend on the run's length, these may grow on resume.
_LENGTH_SETTINGS = {"max_steps", "num_train_epochs", "max_train_minutes"}
_LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def training_settings(config) -> dict:
    """The settings that decide what the weights become, as JSON values (what a checkpoint keeps)."""
    values = config.to_dict()
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in RESUMABLE_SETTINGS}))


def check_resume_settings(saved: TrainState, config) -> None:
    """Refuse a resume whose settings would not continue the same run, listing the changes."""
    if not saved.settings:
        logger.warning(
            "the checkpoint records no settings (an older hfmini wrote it): cannot check that "
            "this run's settings match the checkpoint's"
        )
        return
    now = training_settings(config)
    # A setting newer than the checkpoint's hfmini had its default then.
    recorded = {**_setting_defaults(), **saved.settings}
    changed = sorted(k for k in set(now) | set(saved.settings) if now.get(k) != recorded.get(k))
    if (
        set(changed) <= _LENGTH_SETTINGS
        and config.train.lr_scheduler_type in _LENGTH_FREE_SCHEDULES
    ):
        for key in changed:
            logger.info(
                "%s %s → %s: the %s learning rate %g goes on unchanged",
                key,
                saved.settings[key],
                now[key],
                config.train.lr_scheduler_type,
                config.train.learning_rate,
            )
        return
    if changed:
        listed = "; ".join(f"{k} {recorded.get(k)!r} → {now.get(k)!r}" for k in changed)
        schedule = (
            f" (the {config.train.lr_scheduler_type} schedule is laid out over the run's length)"
            if set(changed) & _LENGTH_SETTINGS
            else ""
        )
        raise HfminiError(
            f"these settings differ from the checkpoint's, so the run would not continue as it "
            f"was{schedule}: {listed}; resume with the checkpoint's settings, or train its "
            "weights further in a new run: --init_from_checkpoint CHECKPOINT (its weights and "
            "optimizer state, a fresh schedule) with another output_dir"
        )


def _setting_defaults() -> dict:

    return {
        f.name: f.default
        for group in ARG_GROUPS
        for f in dataclasses.fields(group)
        if f.default is not dataclasses.MISSING
    }


def check_resume_data(saved: TrainState, fingerprint: str) -> None:
    """Refuse a resume on other data: the saved data position would skip blocks of the new data."""
    if saved.data_fingerprint and saved.data_fingerprint != fingerprint:
        raise HfminiError(
            "the training or validation data differ from the checkpoint's (after tokenization), "
            "so resuming would skip blocks of the new data: resume on the same data, or "
            "continue on the new data in a new run: --init_from_checkpoint CHECKPOINT (its "
            "weights and optimizer state, a fresh schedule) with another output_dir"
        )


# ---------------------------------------------------------------------------------------------
# What makes a checkpoint usable, and what a failed save says


def damage(path: Path) -> str | None:
    """Why the resume could not read checkpoint `path` ("optimizer.bin is unreadable"), or None.

    Checks every file the resume reads: the state and tokenizer JSON are parsed; safetensors
    files (weights, weight average) must have a header that parses and covers the file; torch
    files (optimizer, scheduler) are opened as `torch.load(mmap=True, weights_only=True)` does,
    which parses their pickle and maps the tensor data without reading it. The RNG states are
    not required: accelerate goes on without them (load_checkpoint warns).
    """
    try:
        TrainState.from_json((path / STATE_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return f"{STATE_FILE} is unreadable"
    if not list(path.glob("model*.safetensors")) and not (path / ADAPTER_WEIGHTS).is_file():
        return "no model*.safetensors weights"
    if not list(path.glob("optimizer*")):
        return "no optimizer state"
    tokenizer = "" if (path / TOKENIZER_FILE).is_file() else "tokenizer/"
    for name in (f"{tokenizer}{TOKENIZER_FILE}", f"{tokenizer}{TOKENIZER_CONFIG_FILE}"):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{name} is unreadable"
    checks = [(p, weights_readable) for p in sorted(path.glob("*.safetensors"))]
    checks += [(p, _torch_file_readable) for p in sorted(path.glob("optimizer*.bin"))]
    checks += [(path / SCHEDULER_FILE, _torch_file_readable)]
    for file, readable in checks:
        if not readable(file):
            return f"{file.name} is unreadable"
    return None


def _torch_file_readable(path: Path) -> bool:
    from accelerate.utils.other import load  # torch.load(weights_only=True) as load_state calls it

    try:
        load(path, map_location="cpu", mmap=True)
        return True
    except Exception:  # missing, truncated, not a zip archive, a forbidden global: unreadable
        return False


def _warn_if_rng_state_unreadable(path: Path, process_index: int) -> None:
    """accelerate.load_state skips an unreadable RNG state file with an info line: say it louder."""
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils.other import load

    file = path / f"{RNG_STATE_NAME}_{process_index}.pkl"
    try:
        states = load(file)
        readable = isinstance(states, dict) and "torch_manual_seed" in states
    except Exception:  # missing, truncated or garbage: accelerate skipped it
        readable = False
    if not readable:
        logger.warning(
            "could not read the random states in %s: resuming with the current ones, so the data "
            "order and dropout differ and the run will not repeat an uninterrupted run exactly",
            file,
        )


def _write_error(final: Path, err: BaseException, full: bool) -> HfminiError:
    reason = "No space left on device" if full else (err.strerror or str(err))
    kept = list_checkpoints(final.parent.parent)  # final is output_dir/checkpoints/step-N
    hint = (
        f"{kept[-1].name} is untouched; resume from it with --resume_from_checkpoint latest"
        if kept
        else "no checkpoint was saved before this one"
    )
    return HfminiError(f"could not write checkpoint {final} ({reason}): free disk space; {hint}")
