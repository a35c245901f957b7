"""`make bench` section: a preference optimizer step against an SFT step, same model, same text.

The SFT twin of each pair trains on its prompt and chosen answer (prompt-completion, one example
a sequence, padded as pairs are), so both variants read the same rows of B per micro-batch: the
SFT step puts B sequences through the model, a preference step 2B (chosen and rejected), plus a
no-grad forward of the reference unless it is computed ahead (precompute_ref_log_probs) or not
needed (SimPO). Tokens are those of the padded batches that go through the trained model.
"""

from __future__ import annotations

import json
from pathlib import Path

from hfmini.bench.finetuning import _base_model, _finetuning_recipe
from hfmini.bench.timing import LONG_RUN_STEPS, first_batches, optimizer_step, timed_rounds
from hfmini.config import parse_config
from hfmini.data.shakespeare import preference_pairs
from hfmini.training.setup import setup

# Four training plays: a few thousand pairs, enough for the timed batches, quick to cut.
PLAYS = ["hamlet", "macbeth", "othello", "king-lear"]
VARIANTS = {
    "sft": (),
    "dpo": ("--loss_type", "sigmoid"),
    "dpo_precomputed": ("--loss_type", "sigmoid", "--precompute_ref_log_probs", "true"),
    "simpo": ("--loss_type", "simpo", "--beta", "2.0"),
}


def _write_rows(work_dir: Path, rows: list[dict]) -> Path:
    path = work_dir / ("pairs.jsonl" if "chosen" in rows[0] else "sft.jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def bench_preference(
    recipe: str, rounds: int, steps_per_round: int, work_dir: Path, preset: str = "mini"
) -> dict:
    """Steps/s, rows/s and tokens/s of SFT, DPO (a frozen reference copy), DPO with the
    reference computed ahead, and SimPO, interleaved round by round; ratios to SFT."""
    from accelerate.state import AcceleratorState

    base = _base_model(recipe, preset, work_dir / f"base-pref-{preset}")
    finetune_recipe = _finetuning_recipe(recipe, base, work_dir / "pref-finetune.yaml")
    pairs = [
        {k: row[k] for k in ("prompt", "chosen", "rejected")}
        for row in preference_pairs(PLAYS, max_chars=240)
    ]
    pair_file = _write_rows(work_dir, pairs)
    sft_file = _write_rows(
        work_dir, [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs]
    )

    def argv(name: str) -> list[str]:
        data = sft_file if name == "sft" else pair_file
        return [
            *("--config", str(finetune_recipe), "--output_dir", str(work_dir / f"pref-{name}")),
            *("--train_file", str(data), "--packing", "false", "--dropout", "0"),
            *("--report_to", "none", "--max_steps", LONG_RUN_STEPS, *VARIANTS[name]),
        ]

    AcceleratorState._reset_state(reset_partial_state=True)  # a fresh state, as a new process
    runs = {name: setup(parse_config(argv(name))) for name in VARIANTS}
    batches = {name: first_batches(run) for name, run in runs.items()}
    steps = {name: optimizer_step(runs[name], batches[name]) for name in runs}
    for step in steps.values():
        for _ in range(2):  # warm up (allocator, any compilation)
            step()
    steps_per_second = timed_rounds(steps, rounds, steps_per_round, 1)
    accumulation = runs["sft"].config.train.gradient_accumulation_steps
    report: dict = {}
    for name, rate in steps_per_second.items():
        group = batches[name]
        # (rows, sequences, padded tokens) of one optimizer step, averaged over the batches timed
        sequences = sum(b["input_ids"].shape[0] for b in group) / len(group) * accumulation
        tokens = sum(b["input_ids"].numel() for b in group) / len(group) * accumulation
        rows = sequences / (1 if name == "sft" else 2)
        report[name] = {
            "steps_per_second": rate,
            "rows_per_second": rate * rows,
            "tokens_per_second": rate * tokens,
            "sequence_length": tokens / sequences,
        }
    for name in VARIANTS:
        report[name]["step_time_vs_sft"] = (
            report["sft"]["steps_per_second"] / report[name]["steps_per_second"]
        )
    shape = runs["sft"].accelerator.unwrap_model(runs["sft"].model).config
    precision = runs["sft"].accelerator.mixed_precision.replace("no", "fp32")
    for run in runs.values():
        run.accelerator.end_training()
    return {
        "model": f"{preset} ({shape.n_layer}, {shape.n_head}, {shape.n_embd})",
        "rows_per_micro_batch": runs["sft"].config.train.per_device_train_batch_size,
        "pairs": len(pairs),
        "precision": precision,
        **report,
    }
