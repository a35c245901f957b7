"""A GPT-2 sized down from a preset, built from scratch with transformers' GPT2LMHeadModel."""

from __future__ import annotations


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

    sdpa is PyTorch's fused attention kernel; `hfmini.training.accelerator.attention_for` says when to differ.
    """
    from transformers import GPT2LMHeadModel

    config = build_model_config(model_args, tokenizer, context_length)
    model = GPT2LMHeadModel._from_config(config, attn_implementation=attn_implementation)
    # transformers infers the loss from the class name, which for GPT2LMHeadModel names none, so
    # every forward with labels logs a warning; under torch.compile that call also split each
    # step's graph in pieces (6 graph breaks). It is the causal-LM loss either way.
    model.loss_type = "ForCausalLM"
    return model


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in backward instead of keeping them: about a third more compute for
    activation memory that no longer grows with depth."""
    # transformers 5 renamed the method; keep working on both names.
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
    model.config.use_cache = False
