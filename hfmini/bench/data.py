"""`make bench` section 5: tokenizer training, tokenize-and-pack, and a cached data preparation."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hfmini.config import parse_config
from hfmini.data.prepare import chunk_and_split, prepare_data, text_bytes, tokenize_and_pack
from hfmini.data.sources import load_sources
from hfmini.models.tokenizer import train_tokenizer

if TYPE_CHECKING:
    pass


def bench_data(recipe: str, work_dir: Path) -> dict:
    """Cold and cached data preparation in a private datasets cache."""
    import datasets

    config = parse_config(["--config", recipe])
    chunks = chunk_and_split(load_sources(config.data), config.data)
    megabytes = text_bytes(chunks["train"]) / 1e6

    start = time.perf_counter()
    tokenizer = train_tokenizer(iter(chunks["train"]["text"]), config.model.vocab_size, 1024)
    tokenizer_seconds = time.perf_counter() - start

    datasets.disable_caching()  # measure real tokenization, not a cache read
    seconds = {}
    try:
        for workers in (1, os.cpu_count() or 1):
            data_args = dataclasses.replace(config.data, preprocessing_num_workers=workers)
            start = time.perf_counter()
            tokenize_and_pack(chunks, tokenizer, data_args)
            seconds[workers] = time.perf_counter() - start
    finally:
        datasets.enable_caching()

    start = time.perf_counter()
    prepare_data(config)
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    prepare_data(config)
    cached_seconds = time.perf_counter() - start
    return {
        "train_megabytes": megabytes,
        "tokenizer_training_mb_per_second": megabytes / tokenizer_seconds,
        "tokenize_and_pack_mb_per_second": megabytes / seconds[1],
        "tokenize_and_pack_all_cores_mb_per_second": megabytes / seconds[max(seconds)],
        "cores": max(seconds),
        "cold_prepare_seconds": cold_seconds,
        "cached_prepare_seconds": cached_seconds,
    }
