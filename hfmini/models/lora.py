"""LoRA with peft: train small low-rank adapters beside frozen weights, then merge or ship them.

    W x  →  W x + (alpha / r) · B A x        A: (r, d_in), B: (d_out, r), B starts at zero

Only A and B train: the optimizer state and gradients shrink to those of the adapters (a few
percent of the weights at r = 16 on GPT-2), while the forward and the backward through the frozen
weights cost what they did. Export merges B A into W by default, so the result is a plain model.
"""

from __future__ import annotations

import logging

import torch

from hfmini.config.checks import check_lora_rank
from hfmini.errors import HfminiError

logger = logging.getLogger("hfmini")

# GPT-2's attention and MLP are transformers' Conv1D layers (fused qkv c_attn, c_proj, c_fc),
# which peft's all-linear choice leaves out; other architectures use nn.Linear.
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def adaptable_layer_names(model) -> list[str]:
    """Short names (the last part of the module path) of the layers LoRA can adapt."""
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not output
    }
    return sorted(names)


def target_modules_for(model, requested: list[str] | None) -> list[str] | str:
    """The layers to adapt: `requested`, checked against the model, or the architecture's default."""
    available = adaptable_layer_names(model)
    if requested is None:
        return GPT2_TARGETS if model.config.model_type == "gpt2" else "all-linear"
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise HfminiError(
            f"lora_target_modules {', '.join(unknown)} match no layer of this "
            f"{model.config.model_type} model: choose among {', '.join(available)}"
        )
    return requested


def add_lora(
    model, model_args, gradient_checkpointing: bool = False, new_token_ids: list[int] = ()
):
    """Wrap `model` in peft LoRA adapters (its weights frozen); logs trainable vs. total.

    `new_token_ids`: embedding rows added for new tokens, trained as peft's trainable tokens (a
    delta for those rows only; the tied output layer follows)."""
    from peft import LoraConfig, get_peft_model

    check_lora_rank(model_args.lora_r, model.config.hidden_size)
    targets = target_modules_for(model, model_args.lora_target_modules)
    embedding = model.get_input_embeddings()
    embedding_name = next(n for n, m in model.named_modules() if m is embedding).split(".")[-1]
    token_rows = {embedding_name: list(new_token_ids)} if new_token_ids else None
    if gradient_checkpointing:
        # Recomputed blocks need an input that requires grad, which a frozen embedding is not.
        model.enable_input_require_grads()
    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        # Conv1D stores its weight as (in, out), the transpose of nn.Linear.
        fan_in_fan_out=model.config.model_type == "gpt2",
        task_type="CAUSAL_LM",
        trainable_token_indices=token_rows,
    )
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d alpha=%d on %s: %s of %s parameters trainable (%.2f%%)",
        model_args.lora_r,
        model_args.lora_alpha,
        ", ".join(targets) if isinstance(targets, list) else targets,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model
