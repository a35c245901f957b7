"""The fixed choices every layer reads: model presets, default learning rates, sampling defaults,
the optimizers offered. Defined once here; the argument groups' help texts and checks use them."""

from __future__ import annotations

# Byte-level BPE needs all 256 byte symbols plus the special tokens before it can merge anything.
MIN_VOCAB_SIZE = 256 + 1
# torch_compile auto on a CPU: shortest run (optimizer steps) whose time saved pays the warm-up.
COMPILE_MIN_CPU_STEPS = 1000
COMPILE_MIN_CPU_MINUTES = 2.0
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "muon")

# GPT-2 shapes; the context (n_positions) follows block_size unless set. `gpt2-small` is the
# 124M-parameter GPT-2 of Radford et al. (2019) with its 50257-token vocabulary replaced by ours.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "nano": {"n_layer": 2, "n_head": 2, "n_embd": 64},
    "micro": {"n_layer": 4, "n_head": 4, "n_embd": 128},
    "mini": {"n_layer": 6, "n_head": 6, "n_embd": 384},
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}

# Settings that only describe a model built from scratch; refused with model_name_or_path.
FROM_SCRATCH_ONLY = ("model_size", "n_layer", "n_head", "n_embd", "n_positions", "vocab_size")

# Peak learning rate when none is given: from scratch; full fine-tuning (transformers'
# TrainingArguments default); LoRA adapters (the usual choice with TRL and peft).
DEFAULT_LEARNING_RATES = {"scratch": 1e-3, "full": 5e-5, "lora": 2e-4}

# Sampling defaults of training samples, `hfmini generate` and the exported generation_config.json
# (what `pipeline("text-generation")` uses).
SAMPLING_DEFAULTS: dict[str, float | int] = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
# Tokens generated when no length is given: `hfmini generate` and `chat`, the playground, and the
# exported generation_config.json (which caps it at half the model's context).
DEFAULT_MAX_NEW_TOKENS = 200

# Preference losses, under TRL's names (DPOConfig.loss_type; simpo: CPOConfig's).
PREFERENCE_LOSSES = ("sigmoid", "robust", "ipo", "simpo")
# GRPO's losses, under TRL's names (GRPOConfig.loss_type): they differ in how the token losses are
# averaged (per completion, over a fixed length, over every token of the step).
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo")
# How GRPO scales the rewards' distance from their group's mean (GRPOConfig.scale_rewards).
SCALE_REWARDS = ("group", "batch", "none")

# `hfmini eval --tasks` alone: lm-evaluation-harness on the model's own validation text, which
# needs no download (hfmini.training.harness writes the task).
HARNESS_DEFAULT_TASK = "hfmini_validation"
