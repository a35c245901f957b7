"""`make bench` section 4: chat data packed with position ids, one example a sequence, and packed
without position ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hfmini.config import parse_config
from hfmini.data.packing import pad_sequences
from hfmini.data.prepare import prepare_data
from hfmini.data.shakespeare import write_conversations
from hfmini.models.gpt2 import build_model
from hfmini.training.objectives import model_inputs

if TYPE_CHECKING:
    pass


from hfmini.bench.timing import timed_rounds


def bench_packing(work_dir: Path, rounds: int, n: int = 8) -> dict:
    """Training tokens/s (real tokens, padding not counted) on the Shakespeare conversations,
    micro GPT-2 with a 128-token context, fp32, in three layouts of the same examples: packed
    with position ids (block-diagonal attention, hfmini's default), one example per sequence
    padded to the batch's longest, and packed without position ids (attention crosses examples:
    wrong, kept as the speed of plain causal attention)."""

    paths = write_conversations(work_dir / "chat", max_chars=300)
    layouts = {}
    for packing in ("true", "false"):
        argv = ["--train_file", str(paths["train"]), "--validation_file", str(paths["validation"])]
        argv += ["--block_size", "128", "--vocab_size", "2048", "--model_size", "micro"]
        argv += ["--packing", packing, "--per_device_train_batch_size", "16"]
        config = parse_config(
            [*argv, "--output_dir", str(work_dir / "packing"), "--report_to", "none"]
        )
        data, tokenizer = prepare_data(config)
        order = torch.randperm(
            len(data.train_sequences), generator=torch.Generator().manual_seed(0)
        )
        size = config.train.per_device_train_batch_size
        rows = [
            [data.train_sequences[int(k)] for k in order[i * size : (i + 1) * size]]
            for i in range(n)
        ]
        real = sum(row["input_ids"].numel() for batch in rows for row in batch)
        layouts[packing] = ([pad_sequences(batch, data.pad_id) for batch in rows], real)
    torch.manual_seed(0)
    model = build_model(config.model, tokenizer, 128, "sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def stepper(batches: list[dict], keep_positions: bool) -> Callable[[], None]:
        position = 0

        def step() -> None:
            nonlocal position
            batch = dict(batches[position % len(batches)])
            position += 1
            if not keep_positions:
                batch.pop("position_ids")
            model(**model_inputs(batch), use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    variants = {
        "packed, position ids": (layouts["true"], True),
        "one example a sequence, padded": (layouts["false"], True),
        "packed, no position ids (crosses examples)": (layouts["true"], False),
    }
    results = {}
    for name, ((batches, real), keep) in variants.items():
        step = stepper(batches, keep)
        for _ in range(2):
            step()
        rate = timed_rounds({name: step}, rounds, n, real // n)[name]
        filled = real / sum(b["input_ids"].numel() for b in batches)
        results[name] = {"tokens_per_second": rate, "fill": filled}
    return results
