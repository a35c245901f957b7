"""How big a causal LM is, whichever way it was made (from scratch, fine-tuned, LoRA): its
parameters, its training FLOPs per token (for MFU), and its context."""

from __future__ import annotations

import torch


def context_length(model_config) -> int | None:
    """The most tokens the model attends over (GPT-2's n_positions), read from its config; None
    when the config records none. The one place a model's context is read."""
    return getattr(model_config, "max_position_embeddings", None)


def count_parameters(model, trainable_only: bool = True) -> int:
    """Unique parameters (a tied embedding counted once), the trainable ones by default."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_token(model, sequence_length: int) -> float:
    """Training FLOPs per token: 2N forward + 2N backward to the activations + 2N_trainable for
    the weight gradients + 12·L·T·d for attention (PaLM appendix B; nanoGPT's estimate_mfu).
    From scratch every weight trains and this is the familiar 6N + 12·L·T·d; with LoRA the weight
    gradients are only the adapters'. T is the trained sequence length (block_size), which can be
    shorter than the model's context.

    N counts the weights that multiply: embedding tables are looked up, not multiplied, unless the
    table doubles as the output layer (GPT-2's tied wte).
    """
    config = model.config
    output = model.get_output_embeddings().weight
    looked_up = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.weight is not output
    }
    multiplying = [p for p in model.parameters() if id(p) not in looked_up]
    n_all = sum(p.numel() for p in multiplying)
    n_trainable = sum(p.numel() for p in multiplying if p.requires_grad)
    attention = 12 * config.num_hidden_layers * sequence_length * config.hidden_size
    return 4 * n_all + 2 * n_trainable + attention
