"""`make bench` section: a GRPO step split into its rollout and its policy update, same model.

A GRPO micro-batch is b prompts (b, Tp); the rollout (GRPOObjective.sample) samples G completions
of each with sample_batch, KV-cached, N = b·G rows of at most Tc = max_completion_length new
tokens, and scores them (a trivial reward here, so that scoring costs next to nothing); the
update is one forward over (N, Tp + Tc), the policy loss on the completion tokens, backward and
the optimizer step. Three variants, interleaved round by round on one run:

    sampling  the rollout alone (objective.sample on the step's prompts)
    update    hfmini's training_step with the rollout reused: each batch's first rollout, kept,
              so the step does no sampling (the compute does not depend on the weights moving)
    step      hfmini's training_step as training runs it, sampling inside

Sampled tokens are the tokens generated (each completion up to and with its stop token);
update tokens are the padded (N, Tp + Tc) positions that go through the model forward and
backward, completion tokens those the loss covers.
"""

from __future__ import annotations

import json
from pathlib import Path

from hfmini.bench.finetuning import _base_model, _finetuning_recipe
from hfmini.bench.timing import LONG_RUN_STEPS, first_batches, optimizer_step, timed_rounds
from hfmini.config import parse_config
from hfmini.data.shakespeare import grpo_prompts
from hfmini.training.setup import setup

# Two plays: about a thousand prompts, more than the timed batches read, quick to cut.
PLAYS = ["hamlet", "macbeth"]

# Cheap and not constant (a constant reward would give every completion a zero advantage).
REWARD = '''
def even_ids(prompts, completions, completion_ids, **kwargs):
    """The share of even token ids in each completion."""
    return [sum(1 for i in ids if i % 2 == 0) / max(1, len(ids)) for ids in completion_ids]
'''


def bench_grpo(
    recipe: str,
    rounds: int,
    steps_per_round: int,
    work_dir: Path,
    preset: str = "mini",
    num_generations: int = 8,
    prompts_per_step: int = 4,
    max_completion_length: int = 48,
    base: Path | None = None,
) -> dict:
    """Completions/s and sampled tokens/s of the rollout, tokens/s of the policy update, and the
    share of a full GRPO step spent sampling. One micro-batch a step: prompts_per_step prompts ×
    num_generations completions (the shakespeare-grpo recipe's shape by default). The model: a
    `preset` GPT-2 with random weights and the recipe's tokenizer, or the model folder `base`."""
    from accelerate.state import AcceleratorState

    name = preset if base is None else Path(base).name
    if base is None:
        base = _base_model(recipe, preset, work_dir / f"base-grpo-{preset}")
    finetune_recipe = _finetuning_recipe(recipe, base, work_dir / "grpo-finetune.yaml")
    prompts = [{"prompt": row["prompt"]} for row in grpo_prompts(PLAYS)]
    prompt_file = work_dir / "grpo-prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(row) + "\n" for row in prompts), encoding="utf-8")
    reward_file = work_dir / "grpo_rewards.py"
    reward_file.write_text(REWARD, encoding="utf-8")
    argv = [
        *("--config", str(finetune_recipe), "--output_dir", str(work_dir / "grpo")),
        *("--train_file", str(prompt_file), "--reward_funcs", f"{reward_file}:even_ids"),
        *("--num_generations", str(num_generations)),
        *("--per_device_train_batch_size", str(prompts_per_step * num_generations)),
        *("--gradient_accumulation_steps", "1", "--num_iterations", "1"),
        *("--max_completion_length", str(max_completion_length), "--dropout", "0"),
        *("--report_to", "none", "--max_steps", LONG_RUN_STEPS),
    ]
    AcceleratorState._reset_state(reset_partial_state=True)  # a fresh state, as a new process
    run = setup(parse_config(argv))
    run.model.train()  # as the loop holds it, sampling included
    objective = run.objective
    batches = first_batches(run, count=4)
    real_sample = objective.sample
    generated: list[float] = []  # tokens sampled by each rollout of the sampling variant

    # Each batch's first rollout, kept for the update variant (these calls warm sampling up).
    kept = {_key(b): real_sample(run.model, b) for b in batches}
    reuse = False

    def sample(model, batch):  # the objective's own, or the batch's kept rollout
        return kept[_key(batch)] if reuse else real_sample(model, batch)

    objective.sample = sample  # an instance attribute: rollout_for calls it in place of the method
    position = 0

    def sampling() -> None:
        nonlocal position
        rollout = real_sample(run.model, batches[position % len(batches)])
        generated.append(rollout.metrics["completions/mean_length"])  # a sum of lengths
        position += 1

    full_step = optimizer_step(run, batches)

    def update() -> None:
        nonlocal reuse
        reuse = True
        try:
            full_step()
        finally:
            reuse = False

    variants = {"sampling": sampling, "update": update, "step": full_step}
    for _ in range(2):  # warm up (allocator, any compilation)
        update()
        full_step()
    generated.clear()
    rates = timed_rounds(variants, rounds, steps_per_round, 1)  # calls per second
    objective.sample = real_sample

    figures = _figures(run, list(kept.values()), generated, rates)
    shape = run.accelerator.unwrap_model(run.model).config
    precision = run.accelerator.mixed_precision.replace("no", "fp32")
    run.accelerator.end_training()
    return {
        "model": f"{name} ({shape.n_layer}, {shape.n_head}, {shape.n_embd})",
        "precision": precision,
        "prompts_per_step": prompts_per_step,
        "num_generations": num_generations,
        "max_completion_length": max_completion_length,
        **figures,
    }


def _figures(run, rollouts: list, generated: list[float], rates: dict[str, float]) -> dict:
    """The rates as completions and tokens: per rollout (averaged over the kept ones, those the
    update reads), N completions, (N, Tp + Tc) positions through the model, and the completion
    tokens the loss covers."""
    completions = rollouts[0].completion_ids.shape[0]
    positions = sum(r.prompt_ids.numel() + r.completion_ids.numel() for r in rollouts)
    positions /= len(rollouts)
    loss_tokens = sum(float(r.completion_mask.sum()) for r in rollouts) / len(rollouts)
    sampled = sum(float(n) for n in generated) / len(generated)
    prompt_width = sum(r.prompt_ids.shape[1] for r in rollouts) / len(rollouts)
    completion_width = sum(r.completion_ids.shape[1] for r in rollouts) / len(rollouts)
    return {
        "completions_per_step": completions,
        "prompt_width": prompt_width,  # Tp: the batch's longest prompt, the others left-padded
        # Tc: max_completion_length, less when every completion stopped before it
        "completion_width": completion_width,
        "sampling": {
            "rollouts_per_second": rates["sampling"],
            "completions_per_second": rates["sampling"] * completions,
            "sampled_tokens_per_second": rates["sampling"] * sampled,
            "sampled_tokens_per_rollout": sampled,
        },
        "update": {
            "steps_per_second": rates["update"],
            "tokens_per_second": rates["update"] * positions,  # prompt + completion positions
            "completion_tokens_per_second": rates["update"] * loss_tokens,
            "tokens_per_step": positions,
        },
        "step": {
            "steps_per_second": rates["step"],
            "completions_per_second": rates["step"] * completions,
        },
        # time shares of a full step, each part timed alone (they need not sum to exactly 1)
        "sampling_share": rates["step"] / rates["sampling"],
        "update_share": rates["step"] / rates["update"],
    }


def _key(batch: dict) -> tuple:
    return tuple(batch["prompt_index"].tolist())
