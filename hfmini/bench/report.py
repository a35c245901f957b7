"""The bench's table, and the machine it names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    pass


def _training_rows(train: dict) -> list[tuple[str, str, str]]:
    return [
        (
            "training: hfmini loop",
            f"{train['hfmini_tokens_per_second']:,.0f} tokens/s",
            f"{train['speedup']:.2f}x plain eager ({train['plain_eager_tokens_per_second']:,.0f} tokens/s)",
        ),
        (
            "training: MFU",
            f"{train['mfu']:.1%}",
            f"of the {train['precision']} peak {train['peak_flops'] / 1e9:,.0f} GFLOP/s measured; "
            f"plain eager {train['plain_mfu']:.1%} of fp32 {train['fp32_peak_flops'] / 1e9:,.0f}",
        ),
        (
            "training: first steps",
            f"{train['hfmini_warmup_seconds']:.1f} s",
            f"torch_compile={train['torch_compile']}, {train['precision']}, "
            f"{train['attention']} attention",
        ),
    ]


def _finetuning_rows(tune: dict) -> list[tuple[str, str, str]]:
    full, lora = tune["full"], tune["lora"]
    labels = {"gradients": "gradient", "adamw_moments": "2 AdamW moments", "ema": "EMA"}
    state_formula = " + ".join(labels[name] for name in lora["training_state"])
    return [
        (
            "finetuning: LoRA step",
            f"{lora['tokens_per_second']:,.0f} tokens/s",
            f"{tune['lora_speedup']:.2f}x full fine-tuning ({full['tokens_per_second']:,.0f} "
            f"tokens/s); {tune['model']}, {tune['lora_settings']}",
        ),
        (
            "finetuning: LoRA peak memory",
            f"{lora['peak_memory_bytes'] / 2**20:,.0f} MiB",
            f"full {full['peak_memory_bytes'] / 2**20:,.0f} MiB ({tune['peak_memory_measure']}, "
            "each run in its own process)",
        ),
        (
            "finetuning: LoRA training state",
            f"{lora['training_state_bytes'] / 2**20:,.1f} MiB",
            f"full {full['training_state_bytes'] / 2**20:,.1f} MiB: {lora['trainable_parameters']:,}"
            f" vs. {full['trainable_parameters']:,} trainable weights × ({state_formula})",
        ),
    ]


def _packing_rows(packing: dict) -> list[tuple[str, str, str]]:
    rows = []
    packed = packing["packed, position ids"]["tokens_per_second"]
    for name, figures in packing.items():
        rows.append(
            (
                f"chat data: {name}",
                f"{figures['tokens_per_second']:,.0f} tokens/s",
                f"{figures['tokens_per_second'] / packed:.2f}x packed with position ids; "
                f"{figures['fill']:.0%} of positions are tokens",
            )
        )
    return rows


def _generation_rows(gen: dict) -> list[tuple[str, str, str]]:
    return [
        (
            "generation: KV cache",
            f"{gen['kv_cache_tokens_per_second']:,.0f} tokens/s",
            f"{gen['speedup']:.2f}x recompute ({gen['recompute_tokens_per_second']:,.0f} tokens/s), {gen['new_tokens']} new tokens",
        ),
        (
            "generation: transformers generate",
            f"{gen['transformers_generate_tokens_per_second']:,.0f} tokens/s",
            f"{gen['generate_speedup']:.2f}x recompute (KV cache too, more per-token work)",
        ),
    ]


def _data_rows(data: dict) -> list[tuple[str, str, str]]:
    return [
        (
            "data: tokenizer training",
            f"{data['tokenizer_training_mb_per_second']:.2f} MB/s",
            f"{data['train_megabytes']:.1f} MB of training text",
        ),
        (
            "data: tokenize and pack",
            f"{data['tokenize_and_pack_mb_per_second']:.2f} MB/s",
            "1 process",
        ),
        (
            "data: tokenize and pack, all cores",
            f"{data['tokenize_and_pack_all_cores_mb_per_second']:.2f} MB/s",
            f"preprocessing_num_workers {data['cores']}",
        ),
        (
            "data: prepare, cached",
            f"{data['cached_prepare_seconds']:.2f} s",
            f"cold {data['cold_prepare_seconds']:.1f} s",
        ),
    ]


def _preference_rows(pref: dict) -> list[tuple[str, str, str]]:
    rows = []
    for name in ("sft", "dpo", "dpo_precomputed", "simpo"):
        entry = pref[name]
        rows.append(
            (
                f"preference: {name} step",
                f"{entry['tokens_per_second']:,.0f} tok/s",
                f"{entry['rows_per_second']:.1f} rows/s, {entry['step_time_vs_sft']:.2f}× an SFT "
                f"step's time ({pref['model']}, {pref['precision']})",
            )
        )
    return rows


def _grpo_rows(grpo: dict) -> list[tuple[str, str, str]]:
    sampling, update = grpo["sampling"], grpo["update"]
    shape = (
        f"{grpo['prompts_per_step']} prompts × {grpo['num_generations']} completions of at most "
        f"{grpo['max_completion_length']} tokens; {grpo['model']}, {grpo['precision']}"
    )
    return [
        (
            "grpo: sampling (KV cache)",
            f"{sampling['sampled_tokens_per_second']:,.0f} tok/s",
            f"{sampling['completions_per_second']:.1f} completions/s, tokens generated; {shape}",
        ),
        (
            "grpo: policy update",
            f"{update['tokens_per_second']:,.0f} tok/s",
            "prompt + completion tokens through forward, backward and the optimizer step "
            f"({update['completion_tokens_per_second']:,.0f} completion tok/s)",
        ),
        (
            "grpo: step spent sampling",
            f"{grpo['sampling_share']:.0%}",
            f"update {grpo['update_share']:.0%}; full step {grpo['step']['steps_per_second']:.2f} "
            "steps/s, each part timed alone",
        ),
    ]


ROW_MAKERS = {
    "training": _training_rows,
    "finetuning": _finetuning_rows,
    "packing": _packing_rows,
    "generation": _generation_rows,
    "data": _data_rows,
    "preference": _preference_rows,
    "grpo": _grpo_rows,
}


def print_table(results: dict) -> None:
    rows = []
    for section, row_maker in ROW_MAKERS.items():
        if section in results:
            rows += row_maker(results[section])
    width = max(len(r[0]) for r in rows)
    print(f"\nhfmini bench — {results['machine']}")
    if "training" in results:
        train = results["training"]
        print(
            f"model: {train['model']}, {train['parameters']:,} parameters, batch {train['batch']}"
        )
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")


def machine() -> str:
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
