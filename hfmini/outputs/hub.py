"""Publishing to the Hugging Face Hub: checked before training, uploaded after (or later, by
`hfmini push` for a run trained offline).

The token comes from `HF_TOKEN` or `hf auth login` through huggingface_hub itself; hfmini never
reads it into a variable of its own, so it cannot end up in a file, a log or the model card.
Only the exported model folder is uploaded; optimizer checkpoints and tracker files stay local.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hfmini.errors import HfminiError
from hfmini.outputs.export import save_model
from hfmini.run_folder import (
    ADAPTER_CONFIG,
    GGUF_DIR,
    MODELFILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    UPLOAD_PATTERNS,
    holds_finished_model,
    list_checkpoints,
)

logger = logging.getLogger(__name__)


def check_hub_model_id(hub_model_id: str) -> None:
    """Fail on an id the Hub would refuse, before training or uploading anything."""
    try:
        validate_repo_id(hub_model_id)
    except HFValidationError:
        raise HfminiError(
            f"hub_model_id {hub_model_id!r} is not a valid Hub repo id: write user/name (e.g. "
            "alice/tiny-shakespeare) with letters, digits, '-', '_' and '.', at most 96 "
            "characters, no '--' or '..', not starting or ending with '-' or '.'"
        ) from None


def check_hub_access(hub_model_id: str, alternative: str | None = "drop --push_to_hub") -> str:
    """Fail before training (or uploading) if pushing cannot work; returns the account name.

    `alternative`: what else the user may do, ending each message; None for nothing.
    """
    check_hub_model_id(hub_model_id)
    otherwise = f", or {alternative}" if alternative else ""
    if get_token() is None:
        raise HfminiError(
            f"pushing {hub_model_id} needs a Hugging Face token: set HF_TOKEN or run "
            f"`hf auth login`{otherwise}"
        )
    try:
        user = HfApi().whoami()
    except Exception as err:  # offline mode, DNS, proxy, HTTP 401...: all mean "cannot push"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HfminiError(
            f"cannot reach the Hugging Face Hub to push {hub_model_id} ({reason}): check the "
            f"network and the token (HF_HUB_OFFLINE must be unset){otherwise}"
        ) from None
    return user.get("name", "?")


def check_finished_folder(folder: str | Path, then: str = "push") -> None:
    """Fail unless `folder` holds a finished model: full weights (config.json with complete
    model*.safetensors) or a peft adapter (adapter_config.json with complete weights).

    `then`: what the messages say to do once the folder is fixed ("push", "export")."""

    out = Path(folder)
    if not out.exists():
        raise HfminiError(f"{out} does not exist: pass the output_dir of a finished training run")
    if not out.is_dir():
        raise HfminiError(f"{out} is not a folder: pass the output_dir of a finished training run")
    if holds_finished_model(out):
        # An adapter alone may lean on its base's tokenizer; full weights need their own.
        tokenizer = (out / TOKENIZER_FILE).is_file() or (out / TOKENIZER_CONFIG_FILE).is_file()
        if not tokenizer and not (out / ADAPTER_CONFIG).is_file():
            raise HfminiError(
                f"{out} holds a model but no tokenizer ({TOKENIZER_FILE}): nobody could run it "
                f"from the Hub; copy the tokenizer files of the run into it, then {then}"
            )
        return
    if list_checkpoints(out):
        raise HfminiError(
            f"{out} holds checkpoints but no final model: the run has not finished; finish it "
            "by running its `hfmini train` command again with --resume_from_checkpoint latest, "
            f"then {then}"
        )
    raise HfminiError(
        f"{out} holds no finished model (config.json with complete model*.safetensors, or "
        "adapter_config.json with a complete adapter_model.safetensors): pass the output_dir of "
        "a finished training run"
    )


def upload_patterns(folder: str | Path, gguf: bool = False) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns for upload_folder: the model's top-level files, never
    checkpoints/, wandb/ or logs; with `gguf`, gguf/'s .gguf files and Modelfile too. Patterns
    are fnmatch's, whose `*` crosses `/`: "*.safetensors" alone would take checkpoints' weights."""
    if not gguf:
        return UPLOAD_PATTERNS, ["*/*"]
    others = [f"{p.name}/*" for p in Path(folder).iterdir() if p.is_dir() and p.name != GGUF_DIR]
    return [*UPLOAD_PATTERNS, f"{GGUF_DIR}/*.gguf", f"{GGUF_DIR}/{MODELFILE}"], [
        *others,
        f"{GGUF_DIR}/.*",  # a temporary file of an export under way
    ]


def check_gguf_folder(folder: str | Path) -> None:
    """`hfmini push --gguf` needs what `hfmini export --format gguf` writes."""
    if not any((Path(folder) / GGUF_DIR).glob("*.gguf")):
        raise HfminiError(
            f"{folder} has no {GGUF_DIR}/*.gguf to push: run `hfmini export {folder} --format "
            "gguf` first, or drop --gguf"
        )


def push_folder(
    folder: str | Path,
    hub_model_id: str,
    private: bool,
    message: str,
    kept: bool = True,
    gguf: bool = False,
) -> str:
    """Create the repo if needed and upload the model files of `folder`; returns the commit URL.

    `kept`: `folder` outlives the call, so a failure may suggest `hfmini push` on it later.
    `gguf`: upload gguf/ too (one commit with the rest).
    """
    api = HfApi()
    allow, ignore = upload_patterns(folder, gguf)
    try:
        api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=hub_model_id,
            folder_path=str(folder),
            allow_patterns=allow,
            ignore_patterns=ignore,
            commit_message=message,
        )
    except Exception as err:  # HTTP 403 (another's namespace), 401, the network: all "cannot push"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "check the network and that the token may write to that repo"
        if kept:
            command = ["hfmini", "push", str(folder), "--hub_model_id", hub_model_id]
            command += ["--private"] if private else []
            command += ["--gguf"] if gguf else []
            hint += f", then retry with `{shlex.join(command)}`"
        raise HfminiError(f"could not push {folder} to {hub_model_id} ({reason}): {hint}") from None
    url = getattr(commit, "commit_url", str(commit))
    logger.info("pushed %s to the Hub: %s", folder, url)
    return url


def push_snapshot(model, tokenizer, hub_model_id: str, private: bool, step: int) -> str:
    """Upload the current weights mid-training (hub_strategy every_save), via a temporary export."""

    with tempfile.TemporaryDirectory(prefix="hfmini-push-") as folder:
        save_model(model, tokenizer, folder)
        return push_folder(folder, hub_model_id, private, f"hfmini: step {step}", kept=False)
