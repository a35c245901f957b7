"""Starting from existing weights: find the model, check it, load it, fit it to the run.

    model_name_or_path ─► a local folder, or a Hub id (the cache, or a download when online)
      ─► checks: a model and not a training run; safetensors weights; an architecture
         transformers has built in (no remote code); block_size within its context
      ─► AutoModelForCausalLM in fp32 ─► fitted to the tokenizer (pad token, embedding rows)

A LoRA adapter folder (hfmini's `merge_adapters: false` export, or a LoRA run's checkpoint) loads
as its base model with the adapters merged in. Every check fails with one line that names the
fix, before any data is read or any weight is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hfmini.errors import HfminiError
from hfmini.models.size import context_length
from hfmini.models.tokenizer import check_has_tokenizer
from hfmini.run_folder import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    STATE_FILE,
    TRAINING_CONFIG_FILE,
    list_checkpoints,
    weights_readable,
)

logger = logging.getLogger("hfmini")


@dataclass
class ModelSource:
    """Where a run's starting weights are, with their configuration (read, not yet loaded)."""

    name: str  # as the user gave it
    location: str  # an absolute folder, or the Hub id
    is_local: bool
    config: object  # transformers.PretrainedConfig of the (base) model
    adapter: str | None = None  # a LoRA adapter folder to merge into the base
    recorded_hub_id: str | None = None  # a local folder's Hub id, when it says (recorded_hub_id)

    @property
    def hub_id(self) -> str | None:
        """The Hub id of the weights, for the card's base_model: a local folder's only when it
        records one (None: the Hub cannot link to it)."""
        return self.recorded_hub_id if self.is_local else self.location

    @property
    def context(self) -> int | None:
        return context_length(self.config)


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise HfminiError(
            f"{file} is not valid JSON ({first_line(err)}): the folder is damaged; copy or export "
            "the model again"
        ) from None


def check_model_type(path: Path, config) -> None:
    """transformers must know the architecture by itself: hfmini never runs a folder's code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not isinstance(config, dict):
        raise HfminiError(f"{path / 'config.json'} is not a model configuration (a JSON object)")
    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES:
        return
    needs_code = "auto_map" in config
    raise HfminiError(
        f"{path} has model_type {model_type!r}, which transformers does not know"
        + (
            " and would need the code shipped with the model (auto_map in config.json)"
            if needs_code
            else ""
        )
        + ": hfmini never runs code shipped with a model (trust_remote_code), so it loads only "
        "the architectures transformers has built in, such as gpt2, llama or qwen2"
    )


def check_model_folder(path: Path) -> dict:
    """A folder that from_pretrained can load with safetensors alone; returns its config.json.

    Tells apart what people point at by mistake: an unfinished run's output_dir, a training
    checkpoint an older hfmini wrote, a folder of pickle weights, damaged files.
    """
    from safetensors import SafetensorError, safe_open

    kept = list_checkpoints(path)
    if kept and not any(path.glob("model*.safetensors")) and not is_adapter_folder(path):
        # A run's output_dir holds config.json from its start, the weights only at the end.
        raise HfminiError(
            f"{path} is the output_dir of a run that has not finished (no model, only "
            f"checkpoints): start from its newest checkpoint with --model_name_or_path "
            f"{kept[-1]}, or finish the run with --output_dir {path} --resume_from_checkpoint "
            "latest"
        )
    if not (path / "config.json").is_file():
        if (path / STATE_FILE).is_file():
            raise HfminiError(
                f"{path} is a training checkpoint without model files (an older hfmini wrote "
                f"it): continue that run with --resume_from_checkpoint {path}"
            )
        raise HfminiError(f"{path} holds no model (no config.json): point at a model folder")
    config = read_json(path / "config.json")
    check_model_type(path, config)
    weights = sorted(path.glob("model*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        if pickles:
            raise HfminiError(
                f"{path} holds only pickle weights ({pickles[0]}), which can run code when "
                "loaded; hfmini loads safetensors only: if you trust the file, convert it once "
                'with python -c "from transformers import AutoModelForCausalLM as M; '
                f"M.from_pretrained('{path}').save_pretrained('{path}')\""
            )
        raise HfminiError(f"{path} has no model*.safetensors weights: copy or export it again")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise HfminiError(
                f"{file} is truncated or damaged ({first_line(err)}): copy or export the model "
                "again"
            ) from None
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (path / name).is_file():
            read_json(path / name)
    return config


def is_adapter_folder(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def _adapter_base(path: Path) -> str:

    if not weights_readable(path / ADAPTER_WEIGHTS):
        raise HfminiError(
            f"{path / ADAPTER_WEIGHTS} is missing, truncated or damaged: copy or export the "
            "adapter again"
        )
    base = read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise HfminiError(f"{path / ADAPTER_CONFIG} names no base_model_name_or_path")
    return base


def recorded_hub_id(folder: Path) -> str | None:
    """The Hub id a local model folder is known by: a snapshot in the Hugging Face cache
    (`models--user--name/snapshots/<commit>`), or an hfmini run trained with push_to_hub (its
    training_config.yaml names hub_model_id). None otherwise."""
    import yaml

    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    try:
        settings = yaml.safe_load((folder / TRAINING_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if isinstance(settings, dict) and settings.get("push_to_hub") and settings.get("hub_model_id"):
        return str(settings["hub_model_id"])
    return None


def resolve(name: str) -> ModelSource:
    """Find model `name` (a folder, or a Hub id in the cache or online) and read its config."""
    from transformers import AutoConfig

    path = Path(name).expanduser()
    if path.is_dir():
        path = path.resolve()
        if is_adapter_folder(path):
            try:
                base = resolve(_adapter_base(path))
            except HfminiError as err:  # name the file the base was read from
                raise HfminiError(
                    f"the base model of adapter {name} ({path / ADAPTER_CONFIG}'s "
                    f"base_model_name_or_path) cannot be loaded: {err}"
                ) from None
            base.name, base.adapter = name, str(path)
            return base
        check_model_folder(path)
        config = AutoConfig.from_pretrained(path)
        return ModelSource(name, str(path), True, config, recorded_hub_id=recorded_hub_id(path))
    if path.exists():
        raise HfminiError(f"model_name_or_path {name} is a file: give the folder that holds it")
    return ModelSource(name, name, False, _hub_config(name))


def _hub_config(name: str):
    """The config of Hub model `name`, from the cache when offline; one line for each failure."""
    from huggingface_hub import is_offline_mode
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import AutoConfig

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise HfminiError(
            f"model_name_or_path {name!r} is neither a folder here nor a Hub id (user/name or "
            "name): check the path"
        ) from None
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise HfminiError(
                f"{name} needs the code shipped with it (trust_remote_code), which hfmini never "
                "runs: pick a model whose architecture transformers has built in"
            ) from None
        raise HfminiError(f"could not read {name}'s config ({first_line(err)})") from None
    except OSError as err:
        if is_offline_mode():
            raise HfminiError(
                f"model_name_or_path {name} is neither a folder here nor a Hub model in the "
                "Hugging Face cache, and HF_HUB_OFFLINE is set: check the path, or download it "
                f"once online (hf download {name})"
            ) from None
        raise HfminiError(
            f"model_name_or_path {name} is neither a folder here nor a model on the Hub "
            f"({first_line(err)}): check the path or the id"
        ) from None


def check_fits_run(source: ModelSource, model_args, block_size: int) -> None:
    """What can be told from the config alone, before any data or weight is read."""
    if source.context is not None and block_size > source.context:
        raise HfminiError(
            f"block_size {block_size} is above {source.name}'s context of {source.context} "
            f"tokens: lower block_size to at most {source.context}"
        )
    if source.adapter is not None and model_args.use_peft and not model_args.merge_adapters:
        raise HfminiError(
            f"{source.name} is a LoRA adapter folder: new adapters would sit on its base with "
            "these adapters merged in, a model no folder holds; keep merge_adapters true to "
            "export full weights"
        )


# The dropout knobs of the architectures transformers has built in, by config attribute.
_DROPOUT_ATTRIBUTES = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout")


def load_model(source: ModelSource, dropout: float | None, attn_implementation: str = "sdpa"):
    """The model in fp32 (the training weights; mixed precision autocasts around them), with a
    LoRA adapter merged in when `source` is an adapter folder."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(source.config)
    if dropout is not None:
        for attribute in _DROPOUT_ATTRIBUTES:
            if hasattr(config, attribute):
                setattr(config, attribute, dropout)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location,
            config=config,
            use_safetensors=True,
            trust_remote_code=False,
            dtype="float32",
            attn_implementation=attn_implementation,
        )
    except (OSError, ValueError, RuntimeError) as err:
        if "safetensors" in str(err) and not source.is_local:
            raise HfminiError(
                f"{source.name} has no safetensors weights, and hfmini loads no pickle "
                "(pytorch_model.bin can run code when loaded): pick a model that ships "
                "model.safetensors"
            ) from None
        raise HfminiError(f"could not load {source.name} ({first_line(err)})") from None
    if source.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter).merge_and_unload()
        model.requires_grad_(True)  # peft froze the base weights; as a start, they all train
        logger.info("merged the LoRA adapter %s into its base %s", source.adapter, source.location)
    # transformers infers the loss from the class name, which for some classes (GPT2LMHeadModel)
    # names none, so every forward with labels warns and, compiled, breaks the graph.
    model.loss_type = "ForCausalLM"
    return model


def fit_to_tokenizer(model, tokenizer, model_args) -> list[int]:
    """Give the model the tokenizer's pad id, and embedding rows for every token it can emit
    (a chat template's new special tokens, say). Returns the ids of the rows added: LoRA trains
    just those rows of the otherwise frozen embedding."""
    rows = model.get_input_embeddings().weight.shape[0]
    new_ids = list(range(rows, len(tokenizer)))
    if new_ids:
        if model_args.use_peft and not model_args.merge_adapters:
            raise HfminiError(
                f"the tokenizer has {len(new_ids)} more tokens than the model's embedding "
                f"({len(tokenizer)} vs {rows}): an adapter-only export would not load on the "
                "unchanged base model; keep merge_adapters true, or use the model's own tokenizer"
            )
        model.resize_token_embeddings(len(tokenizer))
        logger.info(
            "the tokenizer has %d tokens, the model's embedding had %d rows: added %d rows "
            "(initialised to the mean embedding), trained with the rest",
            len(tokenizer),
            rows,
            len(new_ids),
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return new_ids


def load_for_inference(model_dir: str | Path):
    """(model, tokenizer) of a folder for generation and scoring: an hfmini output_dir, a
    checkpoint, any save_pretrained folder, or a LoRA adapter folder (merged into its base)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise HfminiError(f"{model_dir} is not a folder: point at a training output_dir")
    recorded = None  # the folder's own config.json (an adapter folder has none)
    if is_adapter_folder(path):
        source = resolve(str(path))
    else:
        recorded = check_model_folder(path)
        source = ModelSource(str(path), str(path), True, AutoConfig.from_pretrained(path))
    check_has_tokenizer(str(path), "or export the model again")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise HfminiError(
            f"could not load the tokenizer in {model_dir} ({first_line(err)}): copy or export "
            "the model again"
        ) from None
    vocab_size = recorded.get("vocab_size") if recorded else None
    if isinstance(vocab_size, int) and vocab_size < len(tokenizer):
        raise HfminiError(
            f"{path / 'config.json'} has vocab_size {vocab_size} but the tokenizer has "
            f"{len(tokenizer)} tokens: they do not belong together; use the tokenizer the model "
            "was trained with (hfmini train exports both into one folder)"
        )
    return load_model(source, dropout=None), tokenizer
