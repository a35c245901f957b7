"""The `datasets` cache on a full disk: the error that names the variable moving the cache, and the
clean-up around a map that fails half-way."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from hfmini.errors import cache_full, disk_full


def datasets_cache_full(what: str):
    """The error for a full disk under the datasets cache (HF_HOME/datasets by default)."""
    import datasets

    variable = "HF_DATASETS_CACHE" if os.environ.get("HF_DATASETS_CACHE") else "HF_HOME"
    return cache_full(what, datasets.config.HF_DATASETS_CACHE, variable)


@contextmanager
def map_cache_space(splits, what: str):
    """Around a `datasets.map` over `splits`: on a full disk, remove the temporary file the map
    leaves behind and name the cache that is full.

    map writes its result to a `tmp*` file beside the source's cache files and renames it when
    done; on a full disk datasets (5.2) fails a second time while closing that file and never
    removes it, leaving up to the size of the result on the full disk.
    """
    folders = {Path(f["filename"]).parent for ds in splits.values() for f in ds.cache_files}
    before = {path for folder in folders for path in folder.glob("tmp*")}
    try:
        yield
    except Exception as err:
        if not disk_full(err):
            raise
        for folder in folders:
            for path in set(folder.glob("tmp*")) - before:
                path.unlink(missing_ok=True)
        raise datasets_cache_full(what) from None
