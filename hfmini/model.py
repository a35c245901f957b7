"""A GPT-2 sized down from a preset, built from scratch with transformers' GPT2LMHeadModel; and
the parameter and FLOP counts of any causal LM a run trains (from scratch, fine-tuned or LoRA)."""

from __future__ import annotations

import torch


def build_model_config(model_args, tokenizer, context_length: int):
    """GPT2Config for the preset (`hfmini.config.MODEL_PRESETS`) with overrides, vocabulary and
    special ids from the tokenizer."""
    from transformers import GPT2Config

    n_layer, n_head, n_embd = model_args.shape()
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context_length,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        # The same tanh-approximated GELU as GPT-2's "gelu_new", as one fused PyTorch kernel
        # instead of five elementwise ops (~10% of a CPU training step at this size).
        activation_function="gelu_pytorch_tanh",
        resid_pdrop=model_args.dropout or 0.0,
        embd_pdrop=model_args.dropout or 0.0,
        attn_pdrop=model_args.dropout or 0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(model_args, tokenizer, context_length: int, attn_implementation: str = "sdpa"):
    """A freshly initialised GPT2LMHeadModel (GPT-2's init, tied input/output embeddings).

    sdpa is PyTorch's fused attention kernel; `hfmini.runtime.attention_for` says when to differ.
    """
    from transformers import GPT2LMHeadModel

    config = build_model_config(model_args, tokenizer, context_length)
    model = GPT2LMHeadModel._from_config(config, attn_implementation=attn_implementation)
    # transformers infers the loss from the class name, which for GPT2LMHeadModel names none, so
    # every forward with labels logs a warning; under torch.compile that call also split each
    # step's graph in pieces (6 graph breaks). It is the causal-LM loss either way.
    model.loss_type = "ForCausalLM"
    return model


def count_parameters(model, trainable_only: bool = True) -> int:
    """Unique parameters (a tied embedding counted once), the trainable ones by default."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in backward instead of keeping them: about a third more compute for
    activation memory that no longer grows with depth."""
    # transformers 5 renamed the method; keep working on both names.
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
    model.config.use_cache = False


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
