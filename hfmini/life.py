"""`python -m hfmini.life` (`make life`): the whole life of a small LLM on the built-in plays, one
stage starting from the last, then one Markdown page of what each stage did.

    pretrain  recipes/shakespeare       a tokenizer and a GPT-2 from scratch on 35 plays' text
    sft       recipes/shakespeare-chat  instruction tuning on the plays' exchanges as chats
    dpo       recipes/shakespeare-dpo   preference tuning: the play's reply over its words shuffled
    grpo      recipes/shakespeare-grpo  reinforcement learning from rewards.py's readable rewards

Each stage is its recipe's YAML with the folders moved under OUTPUT_DIR (the start model, the
data, the output); a stage whose model exists is not run again. The page (OUTPUT_DIR/README.md)
measures every stage's model on the same held-out plays (Twelfth Night, Julius Caesar, The
Tempest, never trained on):
- bits per byte of their text (what pretraining lowers);
- ranking accuracy: the share of held-out preference pairs whose chosen answer the model finds
  more likely than the rejected one (summed log-probs), and DPO's reward accuracy against its
  reference, the SFT model (what DPO raises);
- reward: the GRPO stage's reward functions on sampled answers to held-out prompts (what GRPO
  raises);
- and the same prompts answered by every stage.
The pretrained model has no chat template: it is prompted in the plays' own layout (the speech,
a blank line, `ANSWERER:`) and its answer ends at the next blank line, as a speech does.

`--quick` runs every stage for a few steps and measures on a few rows (the notebook's test).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hfmini.errors import HfminiError

# The recipes live in the repository beside the package (an editable install, as `make install`).
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stage:
    """One stage: its recipe, the data it reads (a folder under OUTPUT_DIR/data), and overrides."""

    name: str
    recipe: str
    data: str | None  # None: the built-in corpus (pretraining)
    quick: tuple[str, ...]  # overrides for --quick


STAGES = (
    Stage(
        "pretrain",
        "recipes/shakespeare/config.yaml",
        None,
        ("--max_steps", "30", "--eval_steps", "0", "--save_steps", "0"),
    ),
    Stage("sft", "recipes/shakespeare-chat/config.yaml", "chat", ("--max_steps", "10")),
    Stage("dpo", "recipes/shakespeare-dpo/config.yaml", "dpo", ("--max_steps", "5")),
    Stage(
        "grpo",
        "recipes/shakespeare-grpo/config.yaml",
        "grpo",
        ("--max_steps", "3", "--per_device_train_batch_size", "16"),
    ),
)
# Every stage in --quick: no tracker, evaluation on a few rows.
QUICK = ("--report_to", "none", "--max_eval_samples", "8", "--logging_steps", "1")
# The page's measurements: (full, --quick).
PAIRS, PROMPTS, COMPLETIONS, SHOWN = (300, 16), (64, 4), (4, 2), (3, 2)
SEED = 0


def write_data(root: Path) -> dict[str, Path]:
    """The fine-tuning stages' data under root/data, as the recipes' make targets write it, and
    the held-out plays' text: {name: folder or file}."""
    from hfmini.data.shakespeare import (
        load_plays,
        write_conversations,
        write_grpo_prompts,
        write_preference_pairs,
    )

    data = root / "data"
    write_conversations(data / "chat", max_chars=300)
    write_preference_pairs(data / "dpo", max_chars=240)
    write_grpo_prompts(data / "grpo")
    held_out = data / "held-out-plays.txt"
    held_out.write_text("\n".join(load_plays()["validation"].values()), encoding="utf-8")
    return {"chat": data / "chat", "dpo": data / "dpo", "grpo": data / "grpo", "text": held_out}


def stage_argv(stage: Stage, root: Path, previous: Path | None, quick: bool) -> list[str]:
    """recipes/train.py's command line for one stage, its folders under root; the recipe's own
    relative paths (its reward functions' files) are read from the repository, so that the
    stages run from any folder (a notebook's)."""
    import yaml

    recipe = REPO / stage.recipe
    argv = ["--config", str(recipe), "--output_dir", str(root / stage.name)]
    specs = yaml.safe_load(recipe.read_text(encoding="utf-8")).get("reward_funcs") or []
    if specs:
        argv += ["--reward_funcs", *(_from_repo(spec) for spec in specs)]
    if previous is not None:
        argv += ["--model_name_or_path", str(previous)]
    if stage.data is not None:
        folder = root / "data" / stage.data
        argv += ["--train_file", str(folder / "train.jsonl")]
        argv += ["--validation_file", str(folder / "validation.jsonl")]
    if quick:
        argv += [*QUICK, *stage.quick]
    return argv


def _from_repo(spec: str) -> str:
    """A reward function's FILE.py:FUNCTION with a relative FILE made the repository's."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py") and not Path(where).is_absolute():
        return f"{REPO / where}:{name}"
    return spec


def run_stages(root: Path, quick: bool = False, extra: list[str] | None = None) -> dict:
    """Train every stage whose model is missing, in order; {stage: seconds it took, 0 if kept}."""
    from hfmini.api import train
    from hfmini.config import parse_config

    seconds, previous = {}, None
    for stage in STAGES:
        folder = root / stage.name
        if (folder / "model.safetensors").is_file():
            print(f"{stage.name}: {folder} exists, kept", flush=True)
            seconds[stage.name] = 0.0
        else:
            print(f"{stage.name}: {stage.recipe} → {folder}", flush=True)
            started = time.perf_counter()
            train(parse_config(stage_argv(stage, root, previous, quick) + (extra or [])))
            if not (folder / "model.safetensors").is_file():  # stopped by Ctrl-C or SIGTERM
                raise HfminiError(
                    f"the {stage.name} stage stopped before its model was saved: run the same "
                    "command again, the stages saved are kept"
                )
            seconds[stage.name] = time.perf_counter() - started
        previous = folder
    return seconds


def _prompt_text(tokenizer, prompt: list[dict]) -> tuple[str, bool]:
    """(the text a model reads for a chat prompt, whether it is chat): the chat template with its
    generation prompt, or for a model without one the plays' layout: the speech, `ANSWERER:`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False
        ), True
    answerer = prompt[0]["content"].removeprefix("You are ").split(" in ")[0]
    return f"{prompt[-1]['content']}\n\n{answerer}:\n", False


def answer_logp(model, tokenizer, prompt: list[dict], answer: str) -> float:
    """Summed log-prob of the answer's tokens after the prompt (with its end of turn in a chat)."""
    import torch

    from hfmini.models.chat_template import stop_token_ids

    text, chat = _prompt_text(tokenizer, prompt)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer + ("" if chat else "\n\n"), add_special_tokens=False)["input_ids"]
    if chat:
        answer_ids.append(stop_token_ids(tokenizer)[0])
    ids = (prompt_ids + answer_ids)[-model.config.n_positions :]
    start = len(ids) - len(answer_ids)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()  # (T - 1, vocab)
    token_logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(token_logps[max(start, 1) - 1 :].sum())


def pair_logps(model, tokenizer, pairs: list[dict]) -> list[tuple[float, float]]:
    """(chosen, rejected) summed answer log-probs of each pair."""
    return [
        (
            answer_logp(model, tokenizer, p["prompt"], p["chosen"][0]["content"]),
            answer_logp(model, tokenizer, p["prompt"], p["rejected"][0]["content"]),
        )
        for p in pairs
    ]


def ranking_accuracy(logps: list[tuple[float, float]]) -> float:
    """Share of pairs whose chosen answer the model finds more likely than the rejected one."""
    return sum(c > r for c, r in logps) / len(logps)


def reward_accuracy(logps, reference) -> float:
    """TRL's rewards/accuracies: the share of pairs whose chosen answer's implicit reward
    (log-prob gained over the reference; beta scales both sides alike) beats the rejected one's."""
    pairs = zip(logps, reference, strict=True)
    return sum((c - rc) > (r - rr) for (c, r), (rc, rr) in pairs) / len(logps)


def sample_answers(model, tokenizer, prompt: list[dict], count: int, max_tokens: int, seed: int):
    """`count` answers to one prompt as (text, ids): temperature 1, KV-cached, stopped at the end
    of the turn (a chat) or cut at the first blank line (the plays' layout)."""
    import torch

    from hfmini.models.batch_sampling import sample_batch
    from hfmini.models.chat_template import stop_token_ids
    from hfmini.models.sampling import sampling_warpers

    text, chat = _prompt_text(tokenizer, prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[-(model.config.n_positions - max_tokens) :]
    prompt_ids = torch.tensor([ids] * count)  # (count, Tp): one prompt, no padding
    stops = stop_token_ids(tokenizer) if chat else [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(seed)
    completion_ids, mask = sample_batch(
        model,
        prompt_ids,
        torch.ones_like(prompt_ids),
        max_tokens,
        sampling_warpers(1.0, None, None),
        stops,
        pad,
        generator=generator,
    )
    answers = []
    for row, row_mask in zip(completion_ids.tolist(), mask.tolist(), strict=True):
        row = [t for t, m in zip(row, row_mask, strict=True) if m]
        answer = tokenizer.decode(row, skip_special_tokens=True)
        if not chat and "\n\n" in answer:
            answer = answer.split("\n\n")[0]
            row = tokenizer(answer, add_special_tokens=False)["input_ids"]
        answers.append((answer.strip(), row))
    return answers


def rewards_of(grpo_config, prompts: list[dict], answers: list[list[tuple[str, list]]]) -> dict:
    """The GRPO stage's reward functions on the answers, as TRL calls them: {name: mean} and
    "reward", the weighted sum (a function's None counts 0, as in training)."""
    from hfmini.training.rewards import load_reward_funcs, score

    functions = load_reward_funcs(grpo_config.train.reward_funcs)
    weights = grpo_config.train.reward_weights or [1.0] * len(functions)
    flat = [(row, a) for row, group in zip(prompts, answers, strict=True) for a in group]
    columns = {k: [row[k] for row, _ in flat] for k in prompts[0] if k != "prompt"}
    table = score(
        functions,
        [row["prompt"] for row, _ in flat],
        [[{"role": "assistant", "content": text}] for _, (text, _) in flat],
        [ids for _, (_, ids) in flat],
        columns,
    )  # (N, F), NaN where a function returned None
    out = {"reward": float((table.nan_to_num(0.0) * table.new_tensor(weights)).sum(1).mean())}
    for j, f in enumerate(functions):
        column = table[:, j][~table[:, j].isnan()]
        out[f.name] = float(column.mean()) if len(column) else math.nan
    return out


def evenly(rows: list, n: int) -> list:
    """n rows spread evenly over `rows`."""
    return rows if n >= len(rows) else [rows[i * len(rows) // n] for i in range(n)]


def measure(root: Path, quick: bool = False) -> dict:
    """Every stage's figures on the held-out plays and its answers to the shown prompts:
    {stage: {"bits_per_byte", "reward_accuracy", "reward", <function>..., "answers"}}."""
    from transformers.utils import logging

    from hfmini.api import evaluate
    from hfmini.config import parse_config
    from hfmini.models.sampling import load_model_and_tokenizer

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    q = int(quick)
    data = root / "data"

    def rows(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]

    pairs = evenly(rows(data / "dpo" / "validation.jsonl"), PAIRS[q])
    prompts = evenly(rows(data / "grpo" / "validation.jsonl"), PROMPTS[q])
    grpo_config = parse_config(stage_argv(STAGES[-1], root, root / "sft", quick))
    max_tokens = grpo_config.train.max_completion_length
    figures = {}
    for stage in STAGES:
        folder = root / stage.name
        print(f"measuring {stage.name} ...", flush=True)
        model, tokenizer = load_model_and_tokenizer(folder, device="cpu")
        answers = [
            sample_answers(model, tokenizer, row["prompt"], COMPLETIONS[q], max_tokens, SEED + i)
            for i, row in enumerate(prompts)
        ]
        figures[stage.name] = {
            "bits_per_byte": evaluate(folder, data / "held-out-plays.txt")["bits_per_byte"],
            "pair_logps": pair_logps(model, tokenizer, pairs),
            **rewards_of(grpo_config, prompts, answers),
            "answers": [group[0][0] for group in answers[: SHOWN[q]]],
        }
    # The preference figures: each model's own ranking, and DPO's reward accuracy against its
    # reference (the SFT model) for the stages after it.
    reference = figures["sft"]["pair_logps"]
    after_sft = [s.name for s in STAGES].index("sft") + 1
    for n, stage in enumerate(STAGES):
        f = figures[stage.name]
        logps = f.pop("pair_logps")
        f["ranking_accuracy"] = ranking_accuracy(logps)
        f["reward_accuracy"] = reward_accuracy(logps, reference) if n >= after_sft else None
    figures["_rows"] = {"pairs": len(pairs), "prompts": len(prompts), "completions": COMPLETIONS[q]}
    figures["_shown"] = [
        {"prompt": row["prompt"], "reply": row["reply"]} for row in prompts[: SHOWN[q]]
    ]
    return figures


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("\n", "<br>") or "*(nothing)*"


def page(figures: dict, seconds: dict, machine: str) -> str:
    """The Markdown page: what every stage did, in figures and in answers."""
    names = [s.name for s in STAGES]
    counts = figures["_rows"]
    preference = ("ranking_accuracy", "reward_accuracy")
    reward_names = [
        k for k in figures[names[0]] if k not in ("bits_per_byte", "answers", *preference)
    ]
    lines = [
        "# The life of a small LLM",
        "",
        "`make life`: pretraining, instruction tuning (SFT), preference tuning (DPO) and "
        "reinforcement learning from rewards (GRPO), each stage starting from the last, measured "
        "on the held-out plays (Twelfth Night, Julius Caesar, The Tempest).",
        "",
        f"Machine: {machine}."
        + (
            " Training time per stage (0: the stage's model existed, kept): "
            + ", ".join(f"{n} {seconds.get(n, 0.0) / 60:.1f} min" for n in names)
            + f"; {sum(seconds.values()) / 60:.1f} min in all."
            if seconds
            else ""
        ),
        "",
        "| stage | bits per byte ↓ | ranking accuracy ↑ | reward accuracy ↑ | "
        + " | ".join(f"{k} ↑" for k in reward_names)
        + " |",
        "|---" * (4 + len(reward_names)) + "|",
    ]
    for n in names:
        f = figures[n]
        dpo = "—" if f["reward_accuracy"] is None else f"{f['reward_accuracy']:.3f}"
        cells = [f"{f['bits_per_byte']:.4f}", f"{f['ranking_accuracy']:.3f}", dpo]
        cells += [f"{f[k]:.3f}" for k in reward_names]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- bits per byte: the held-out plays' text (lower is better).",
        f"- ranking accuracy: of {counts['pairs']} held-out preference pairs (the play's reply "
        "against its words shuffled), the share whose chosen answer the model finds more likely.",
        "- reward accuracy: DPO's (TRL's `rewards/accuracies`) on the same pairs, against DPO's "
        "reference, the SFT model: the share whose chosen answer gained more log-probability "
        "than the rejected one.",
        f"- reward: the GRPO stage's reward functions on {counts['prompts']} held-out prompts × "
        f"{counts['completions']} sampled answers (temperature 1); `reward` is their weighted sum.",
        "- The pretrained model has no chat template: it reads the speech in the plays' layout "
        "and answers until a blank line.",
        "",
        "## The same prompts, answered by every stage",
        "",
        "| prompt | the play's reply | " + " | ".join(names) + " |",
        "|---" * (2 + len(names)) + "|",
    ]
    for i, shown in enumerate(figures["_shown"]):
        system, said = shown["prompt"][0]["content"], shown["prompt"][-1]["content"]
        answers = [_cell(figures[n]["answers"][i]) for n in names]
        head = f"*{_cell(system)}*<br>{_cell(said)}"
        lines.append(f"| {head} | {_cell(shown['reply'])} | " + " | ".join(answers) + " |")
    lines += ["", "Talk to them: `hfmini playground " + " ".join(names) + "` in this folder.", ""]
    return "\n".join(lines)


def machine_name() -> str:
    """The CPU's model name, its cores and torch's threads (or the GPU's name)."""
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = "avx512_bf16" if "avx512_bf16" in cpuinfo.read_text() else "no avx512_bf16"
        model += f" ({flags})"
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hfmini.life", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output_dir", default="output/life")
    parser.add_argument("--quick", action="store_true", help="a few steps a stage (tests)")
    # Anything else is `--key value` pairs given to every stage (`make life ARGS="--seed 1"`).
    args, extra = parser.parse_known_args(argv)
    root = Path(args.output_dir)
    started = time.perf_counter()
    try:
        for stage in STAGES:
            if not Path(stage.recipe).is_file():
                raise HfminiError(
                    f"{stage.recipe} not found: run from the hfmini repository's root"
                )
        write_data(root)
        seconds = run_stages(root, args.quick, extra)
        figures = measure(root, args.quick)
    except HfminiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: run the same command again to go on from the stages saved",
            file=sys.stderr,
        )
        return 130
    text = page(figures, seconds, machine_name())
    (root / "README.md").write_text(text, encoding="utf-8")
    (root / "life.json").write_text(json.dumps({"seconds": seconds, "figures": figures}, indent=1))
    print(text)
    print(
        f"{root / 'README.md'} written; the whole command took {(time.perf_counter() - started) / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
