"""The training loop and what it stands on.

trainer (run_training, main) ─► setup ─► loop (objectives: the loss of a batch) ─► validation
  ─► finish (export)
run.py: the Run they share; accelerator, optimizers, schedule, budget, ema, evaluation,
tracking, throughput, interrupt: the pieces, each importable alone.
"""
