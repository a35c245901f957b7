"""hfmini's own cache folder (the built-in corpus files, trained tokenizers), under the Hugging
Face cache root, and the check that it takes files before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from hfmini.errors import HfminiError


def hfmini_cache_dir() -> Path:
    """`$HF_HOME/hfmini` (default `~/.cache/huggingface/hfmini`), read from HF_HOME at call time
    so that a changed HF_HOME is honoured."""
    root = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(root) / "hfmini"


def check_cache_writable() -> None:
    """The Hugging Face cache (datasets, trained tokenizers, the built-in corpus) must take files:
    checked before any work, so that a read-only HF_HOME is one line, not a traceback later."""
    folder = hfmini_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise HfminiError(
            f"the Hugging Face cache {folder.parent} cannot be written ({err.strerror or err}): "
            "set HF_HOME to a folder you can write to"
        ) from None
