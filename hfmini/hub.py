"""Publishing to the Hugging Face Hub: checked before training, uploaded after.

The token comes from `HF_TOKEN` or `hf auth login` through huggingface_hub itself; hfmini never
reads it into a variable of its own, so it cannot end up in a file, a log or the model card.
Only the exported model folder is uploaded; optimizer checkpoints and tracker files stay local.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, get_token

from hfmini.errors import HfminiError

logger = logging.getLogger(__name__)

# What `save_model` and `finish` write; checkpoints/, wandb/ and runs/ never leave the machine.
UPLOAD_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "tokenizer*.json",
    "special_tokens_map.json",
    "README.md",
    "loss_curve.png",
    "eval_results.json",
    "training_config.yaml",
    "metrics.jsonl",
]


def check_hub_access(hub_model_id: str) -> str:
    """Fail before training if pushing cannot work; returns the account name."""
    if get_token() is None:
        raise HfminiError(
            "push_to_hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`, "
            "or drop --push_to_hub"
        )
    try:
        user = HfApi().whoami()
    except Exception as err:  # offline mode, DNS, proxy, HTTP 401...: all mean "cannot push"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HfminiError(
            f"cannot reach the Hugging Face Hub to push {hub_model_id} ({reason}): check the "
            "network and the token (HF_HUB_OFFLINE must be unset), or drop --push_to_hub"
        ) from None
    return user.get("name", "?")


def push_folder(folder: str | Path, hub_model_id: str, private: bool, message: str) -> str:
    """Create the repo if needed and upload the model files of `folder`; returns the commit URL."""
    api = HfApi()
    api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=hub_model_id,
        folder_path=str(folder),
        allow_patterns=UPLOAD_PATTERNS,
        ignore_patterns=["*/*"],  # top-level files only: never checkpoints/, wandb/, logs
        commit_message=message,
    )
    url = getattr(commit, "commit_url", str(commit))
    logger.info("pushed %s to the Hub: %s", folder, url)
    return url


def push_snapshot(model, tokenizer, hub_model_id: str, private: bool, step: int) -> str:
    """Upload the current weights mid-training (hub_strategy every_save), via a temporary export."""
    from hfmini.export import save_model

    with tempfile.TemporaryDirectory(prefix="hfmini-push-") as folder:
        save_model(model, tokenizer, folder)
        return push_folder(folder, hub_model_id, private, f"hfmini: step {step}")
