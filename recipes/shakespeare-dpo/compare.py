"""The shakespeare-dpo table: what DPO changed on the held-out plays' preference pairs. Prints
Markdown.

    python recipes/shakespeare-dpo/compare.py [output] [--pairs 0] [--samples 3]

1. The run's own held-out metrics (output/shakespeare-dpo/metrics.jsonl) at step 0 and at the
   last step: reward accuracy, margin, rewards and log-probs. At step 0 the policy is the
   reference, every reward is 0 and the accuracy (chosen's reward strictly above rejected's)
   is 0 by construction; the margin's growth is the signal.
2. Each model's own ranking of the held-out pairs: the share where the summed log-prob of the
   chosen answer's tokens beats the rejected one's, for the chat model and the DPO model. Chosen
   and rejected replies are one pool (pairs of exchanges swap their replies) at matched lengths,
   so a model that ignores the prompt ranks about half of them right. Tokenized as TRL does: the prompt rendered with the
   generation prompt, prompt + answer rendered whole, the answer being the tokens after their
   common prefix, cut to the model's context.
3. A few held-out prompts with both models' answers (seeded sampling, the same seed for both).

Reads the models with transformers alone (and hfmini's sampler), not with the trainer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MAX_NEW_TOKENS = 60
SEED = 0
MODELS = {"chat model (before)": "shakespeare-chat", "DPO model (after)": "shakespeare-dpo"}
EVAL_KEYS = (
    ("reward accuracy", "eval/rewards/accuracies"),
    ("margin", "eval/rewards/margins"),
    ("reward chosen", "eval/rewards/chosen"),
    ("reward rejected", "eval/rewards/rejected"),
    ("log-prob chosen", "eval/logps/chosen"),
    ("log-prob rejected", "eval/logps/rejected"),
    ("pair loss", "eval/pair_loss"),
    ("language-model loss (chosen)", "eval/loss"),
    ("bits per byte (chosen)", "eval/bits_per_byte"),
)


class Missing(Exception):
    """A file the table needs is absent: one line saying which and what makes it."""


def eval_rows(metrics: Path) -> tuple[dict, dict]:
    """(the held-out metrics at step 0, those at the last step) from a run's metrics.jsonl."""
    if not metrics.is_file():
        raise Missing(f"{metrics} is missing: run `make dpo-recipe` first")
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line]
    evals = [row for row in rows if "eval/rewards/accuracies" in row]
    if not evals:
        raise Missing(f"{metrics} has no held-out preference metrics: is it a preference run?")
    return min(evals, key=lambda r: r["step"]), max(evals, key=lambda r: r["step"])


def answer_logp(model, tokenizer, prompt: list[dict], answer: list[dict]) -> float:
    """Summed log-prob of the answer's tokens after the prompt (TRL's tokenization, see top)."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=False)
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    ids = ids[: model.config.n_positions]
    if start >= len(ids):
        return float("-inf")  # no answer token fits the context (TRL drops such a pair)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()  # (T - 1, vocab)
    logps = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(ids[1:])
    token_logps = logps.gather(1, targets[:, None])[:, 0]  # token t + 1's log-prob given 0..t
    return float(token_logps[start - 1 :].sum())


def ranking_accuracy(model, tokenizer, pairs: list[dict]) -> float:
    wins = sum(
        answer_logp(model, tokenizer, p["prompt"], p["chosen"])
        > answer_logp(model, tokenizer, p["prompt"], p["rejected"])
        for p in pairs
    )
    return wins / len(pairs)


def answer(model, tokenizer, prompt: list[dict]) -> str:
    from hfmini.config import SAMPLING_DEFAULTS
    from hfmini.models.sampling import generate_text

    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return generate_text(
        model, tokenizer, text, MAX_NEW_TOKENS, **SAMPLING_DEFAULTS, seed=SEED, chat=True
    )


def cell(text: str) -> str:
    """Text for one Markdown table cell: line breaks as <br>, pipes escaped."""
    return text.strip().replace("|", "\\|").replace("\n", "<br>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", default="output")
    parser.add_argument("--pairs", type=int, default=0, help="held-out pairs to rank; 0: all")
    parser.add_argument("--samples", type=int, default=3, help="held-out prompts to answer")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        first, last = eval_rows(root / "shakespeare-dpo" / "metrics.jsonl")
        validation = root / "shakespeare-dpo-data" / "validation.jsonl"
        if not validation.is_file():
            raise Missing(f"{validation} is missing: run `make dpo-recipe` first")
        for folder in MODELS.values():
            if not (root / folder / "model.safetensors").is_file():
                raise Missing(
                    f"{root / folder}/model.safetensors is missing: run `make dpo-recipe`"
                )
    except Missing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # Heavy imports after the checks: a missing folder answers at once.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    # Quiet: no progress bars, and no "longer than the maximum" warning for the few pairs that
    # answer_logp cuts to the context.
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    every = [json.loads(line) for line in validation.read_text(encoding="utf-8").splitlines()]
    pairs = every[: args.pairs] if args.pairs else every

    print("## Held-out pairs, the run's metrics\n")
    print(f"| metric | step {first['step']} | step {last['step']} |")
    print("|---|---|---|")
    for label, key in EVAL_KEYS:
        before, after = first.get(key), last.get(key)
        shown = [f"{v:.4f}" if isinstance(v, int | float) else "" for v in (before, after)]
        print(f"| {label} | {shown[0]} | {shown[1]} |")

    # One prompt from each held-out play, in file order.
    samples, plays = [], set()
    for pair in every:
        if pair.get("play") not in plays and len(samples) < args.samples:
            samples.append(pair)
            plays.add(pair.get("play"))
    answers: dict[str, list[str]] = {}
    print(f"\n## Ranking {len(pairs)} held-out pairs: log p(chosen) > log p(rejected)\n")
    print("| model | pairs ranked right |")
    print("|---|---|")
    for label, folder in MODELS.items():
        model = AutoModelForCausalLM.from_pretrained(root / folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(root / folder)
        print(f"| {label} | {ranking_accuracy(model, tokenizer, pairs):.1%} |")
        answers[label] = [answer(model, tokenizer, pair["prompt"]) for pair in samples]

    print(f"\n## Held-out prompts (sampled, seed {SEED}, at most {MAX_NEW_TOKENS} tokens)\n")
    print(f"| prompt | the play's reply | {' | '.join(MODELS)} |")
    print("|---" * (2 + len(MODELS)) + "|")
    for i, pair in enumerate(samples):
        system, said = pair["prompt"][0]["content"], pair["prompt"][-1]["content"]
        replies = " | ".join(cell(answers[label][i]) for label in MODELS)
        print(
            f"| {cell(system)}<br>{cell(said)} | {cell(pair['chosen'][0]['content'])} | {replies} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
