"""`make bench`: how much model per minute hfmini gets from this machine, as side-by-side ratios.

    python -m hfmini.bench [--recipe recipes/shakespeare/config.yaml] [--output output/bench.json]
                           [--only data training finetuning packing generation preference grpo]

1. Training: tokens/s of hfmini's real training step (`hfmini.training.loop.training_step` on a Run built
   by `setup` from the recipe) vs. a minimal eager PyTorch loop (forward, backward, AdamW step) on
   the same GPT2LMHeadModel, batch and sequence length; and MFU against the peak matmul FLOP/s
   measured in the same run. The two loops alternate in rounds, so load on a shared machine hits
   both alike; the ratio of medians is reported.
2. Fine-tuning: LoRA (`--use_peft true`, default settings) vs. full fine-tuning of a `mini`
   GPT-2 (random weights saved as a model folder, the recipe's tokenizer, batch and block size):
   tokens/s of hfmini's step, alternating rounds as above; peak memory of each in its own
   subprocess (CUDA: max allocated; CPU: peak RSS of the process); and the bytes of training state
   that scale with the trainable weights (gradients, AdamW's two moments, the EMA if the recipe
   keeps one), read from the tensors.
3. Generation: new tokens/s of hfmini's KV-cache decoding vs. recomputing the whole context for
   each new token, at 256 new tokens; transformers' `generate` on the same model for reference.
4. Chat data: training tokens/s (padding not counted) on the Shakespeare conversations, packed
   with position ids (attention kept within each example), one example per sequence padded, and
   packed without position ids (attention crossing examples: wrong, the plain causal speed).
5. Data: tokenizer training MB/s, tokenize-and-pack MB/s, and a second (cached) data preparation.
6. Preference: a DPO, precomputed-reference DPO and SimPO step against an SFT step (preference.py).
7. GRPO: one step split into its rollout (completions/s and tokens generated per second by
   sample_batch, KV-cached) and its policy update (prompt + completion tokens/s through forward,
   backward and the optimizer step), and the share of a full step spent sampling (grpo.py).

`--only packing generation` runs some sections.
"""
