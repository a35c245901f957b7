"""Preference tuning (DPO and kin) in hfmini's own loop: TRL's row formats, the reference, the
shared loop's promises (accumulation, exact resume, LoRA), the metrics, and bad input.
Agreement of the numbers with TRL itself: tests/test_preference_trl.py."""

import json
import random
import shutil

import pytest
import torch
from conftest import reset_accelerate, tiny_run_args, train_error
from safetensors.torch import load_file
from test_sft import WORDS, write_jsonl

from hfmini.config import parse_config
from hfmini.data.preference import (
    extract_prompt,
    fit_pair,
    pair_problem,
    tokenize_pair,
)
from hfmini.errors import HfminiError
from hfmini.models.pretrained import load_model, resolve
from hfmini.run_folder import list_checkpoints
from hfmini.training.preference import sequence_logps
from hfmini.training.setup import setup
from hfmini.training.trainer import run_training


def words(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(k))


def pair_rows(n: int, seed: int = 0, kind: str = "standard") -> list[dict]:
    """Pairs whose chosen answer repeats the prompt's words in order and whose rejected answer
    is other words: a preference a tiny model can pick up in a few steps. Answers of uneven
    length (1 to 12 words), so that pairs weigh alike only if the loss is per pair."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = words(rng, 4)
        chosen = " " + " ".join(prompt.split()[: 1 + i % 4])
        rejected = chosen
        while rejected == chosen:
            rejected = " " + words(rng, 1 + (3 * i) % 12)
        if kind == "conversational":
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen.strip()}],
                    "rejected": [{"role": "assistant", "content": rejected.strip()}],
                }
            )
        elif kind == "implicit":
            rows.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


@pytest.fixture
def pairs(tmp_path):
    """--train_file / --validation_file of 48 and 16 standard pairs."""

    def make(kind="standard", n=48):
        train = write_jsonl(tmp_path / f"{kind}-train.jsonl", pair_rows(n, 0, kind))
        held_out = write_jsonl(tmp_path / f"{kind}-validation.jsonl", pair_rows(16, 1, kind))
        return ["--train_file", str(train), "--validation_file", str(held_out)]

    return make


def dpo_args(out, base, data, steps=4, *extra):
    """DPO from the tiny base model: full fine-tuning, no dropout, a rate that moves it."""
    args = tiny_run_args(out, steps, *data, "--dropout", "0", finetune_from=base)
    args += ["--learning_rate", "1e-3", "--logging_steps", "1", "--warmup_steps", "0"]
    args += ["--per_device_train_batch_size", "8", "--mixed_precision", "no"]
    return [*args, *extra]


def metric_rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --- rows and tokens: milliseconds ---------------------------------------------------------


def test_the_implicit_prompt_is_the_shared_beginning_as_trl_cuts_it():
    row = extract_prompt({"chosen": "Good morrow, my lord", "rejected": "Good morrow, sweet"})
    assert row == {"prompt": "Good morrow,", "chosen": " my lord", "rejected": " sweet"}
    user = {"role": "user", "content": "hi"}
    turns = extract_prompt(
        {
            "chosen": [user, {"role": "assistant", "content": "a"}],
            "rejected": [user, {"role": "assistant", "content": "b"}],
        }
    )
    assert turns["prompt"] == [user] and turns["chosen"][0]["content"] == "a"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": "p", "chosen": " a", "rejected": None}, "rejected is missing"),
        ({"prompt": "p", "chosen": " a", "rejected": " a"}, "the same answer"),
        ({"prompt": "p", "chosen": "  ", "rejected": " b"}, "the chosen answer is empty"),
        ({"prompt": "p", "chosen": [], "rejected": []}, "all text or all message lists"),
        (
            {"prompt": [], "chosen": [{"role": "assistant", "content": ""}], "rejected": []},
            "the chosen answer is empty",
        ),
    ],
)
def test_a_bad_row_is_named(row, problem):
    assert problem in pair_problem(row)


def test_a_pair_is_cut_as_trl_cuts_it():
    """The prompt keeps its end (max_prompt_length), then prompt + answer its start."""
    prompt, answers = list(range(10)), [[20, 21, 22, 23], [30]]
    kept, (chosen, rejected), cut = fit_pair(prompt, answers, max_length=8, max_prompt=6)
    assert kept == [4, 5, 6, 7, 8, 9] and chosen == [20, 21] and rejected == [30]
    assert cut == 4 + 2  # four prompt tokens, two of the chosen answer
    assert fit_pair(prompt, answers, max_length=10, max_prompt=None) is None  # no room: dropped


def test_text_and_conversations_tokenize_to_prompt_then_answer(tiny_base):
    from transformers import AutoTokenizer

    from hfmini.models.chat_template import apply_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    prompt, chosen, rejected = tokenize_pair(pair_rows(1)[0], tokenizer)
    assert chosen[-1] == rejected[-1] == tokenizer.eos_token_id  # text answers end on eos
    assert tokenizer.decode(prompt + chosen[:-1]) == "".join(
        pair_rows(1)[0][k] for k in ("prompt", "chosen")
    )
    apply_template(tokenizer, None)
    row = pair_rows(1, kind="conversational")[0]
    prompt, chosen, _ = tokenize_pair(row, tokenizer)
    rendered = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)
    assert tokenizer.decode(prompt) == tokenizer.decode(rendered)
    assert tokenizer.decode(chosen).startswith(row["chosen"][0]["content"])


# --- runs of a few steps: seconds each -------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["standard", "conversational", pytest.param("implicit", marks=pytest.mark.slow)]
)
def test_preference_rows_select_dpo_and_it_learns_the_preference(
    tiny_base, tmp_path, pairs, kind, caplog
):
    """Rows of each TRL preference format select DPO on their own (logged); after a few steps
    the training pairs' reward accuracy is up and TRL's metric names are in the log."""
    out = tmp_path / kind
    caplog.set_level("INFO")
    metrics = run_training(parse_config(dpo_args(out, tiny_base, pairs(kind), 12)))
    reset_accelerate()
    assert "preference pairs (" in caplog.text and "for loss_type sigmoid" in caplog.text
    rows = metric_rows(out)
    train = [r for r in rows if "train/rewards/accuracies" in r]
    assert len(train) == 12
    for name in ("chosen", "rejected", "accuracies", "margins"):
        assert f"train/rewards/{name}" in train[-1] and f"eval/rewards/{name}" in rows[-1]
    assert "train/logps/chosen" in train[-1] and "eval/bits_per_byte" in rows[-1]
    assert metrics["start_rewards/accuracies"] == 0.0  # the model is its own reference at first
    assert metrics["rewards/margins"] > 0 and train[-1]["train/rewards/accuracies"] >= 0.5
    card = (out / "README.md").read_text()
    assert "DPO (loss_type sigmoid, beta=0.1" in card and "Held-out reward accuracy" in card


def test_lora_takes_the_base_with_its_adapter_off_as_the_reference(tiny_base, tmp_path, pairs):
    """No second model: the reference log-probs are the base model's own, loaded apart."""
    config = parse_config(dpo_args(tmp_path / "lora", tiny_base, pairs(), 2, "--use_peft", "true"))
    run = setup(config)
    assert run.objective.reference is None
    batch = next(iter(run.train_loader))
    base = load_model(resolve(str(tiny_base)), 0.0, "eager").eval()
    with torch.no_grad():
        expected = sequence_logps(base, batch)[0]
    ours = run.objective.reference_logps(run.model, batch, "train")
    # The same sums up to float rounding (sums of about a hundred nats: an ulp is 1e-5).
    assert torch.allclose(ours, expected, rtol=1e-6, atol=1e-6)
    assert run.model.training  # the reference pass leaves the model training
    run.accelerator.end_training()


def test_the_split_of_a_step_into_micro_batches_does_not_change_the_weights(
    tiny_base, tmp_path, pairs
):
    """8 pairs in one micro-batch, 2 × 4 and 4 × 2: one optimizer step, the same weights and
    the same logged loss (each pair weighs alike). Adam's epsilon large, so that a step is
    proportional to the gradient."""

    def one_step(name, batch, accumulation, lr="0.01"):
        args = dpo_args(tmp_path / name, tiny_base, pairs(), 1, "--learning_rate", lr)
        args += ["--per_device_train_batch_size", str(batch)]
        args += ["--gradient_accumulation_steps", str(accumulation), "--adam_epsilon", "1"]
        args += ["--weight_decay", "0", "--max_grad_norm", "0", "--lr_scheduler_type", "constant"]
        run_training(parse_config(args))
        reset_accelerate()
        loss = next(r["train/loss"] for r in metric_rows(tmp_path / name) if "train/loss" in r)
        return load_file(tmp_path / name / "model.safetensors"), loss

    whole, loss = one_step("8x1", 8, 1)
    start, _ = one_step("start", 8, 1, lr="1e-12")
    step = max_difference(whole, start)
    for batch, accumulation in ((2, 4), (4, 2)):
        split, split_loss = one_step(f"{batch}x{accumulation}", batch, accumulation)
        difference = max_difference(whole, split)
        print(f"{batch}x{accumulation}: max |Δw| {difference:.2e} against a step of {step:.2e}")
        assert difference < 1e-3 * step and split_loss == pytest.approx(loss, rel=1e-5)
    assert step > 1e-5


@pytest.mark.parametrize("precompute", [pytest.param("false", marks=pytest.mark.slow), "true"])
def test_resume_mid_run_is_exact(tiny_base, tmp_path, pairs, precompute):
    """Stopped after step 3 of 6 and resumed: the losses, rewards and weights of the unbroken
    run. With precompute_ref_log_probs the resumed run scores the pairs again from the
    starting weights (the model it resumes holds trained ones)."""
    data = (
        *pairs(),
        "--precompute_ref_log_probs",
        precompute,
        "--gradient_accumulation_steps",
        "2",
    )
    full, saved, resumed = tmp_path / "full", tmp_path / "saved", tmp_path / "resumed"
    run_training(
        parse_config(dpo_args(full, tiny_base, data, 6, "--per_device_train_batch_size", "4"))
    )
    reset_accelerate()
    args = dpo_args(
        saved, tiny_base, data, 6, "--per_device_train_batch_size", "4", "--save_steps", "3"
    )
    run_training(parse_config(args))
    reset_accelerate()
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(saved / "checkpoints" / "step-3", resumed / "checkpoints" / "step-3")
    kept = [
        r for r in (saved / "metrics.jsonl").read_text().splitlines() if json.loads(r)["step"] <= 3
    ]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    args = dpo_args(resumed, tiny_base, data, 6, "--per_device_train_batch_size", "4")
    run_training(parse_config([*args, "--resume_from_checkpoint", "latest"]))
    reset_accelerate()

    def logged(out):
        return {
            (r["step"], k): v
            for r in metric_rows(out)
            for k, v in r.items()
            if k.startswith(("train/loss", "train/rewards", "train/logps", "eval/rewards"))
        }

    assert logged(resumed) == pytest.approx(logged(full), rel=1e-5, abs=1e-7)
    assert (
        max_difference(
            load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
        )
        < 1e-6
    )


def test_reference_log_probs_computed_ahead_give_the_same_run(tiny_base, tmp_path, pairs):
    runs = {}
    for precompute in ("false", "true"):
        out = tmp_path / precompute
        runs[precompute] = run_training(
            parse_config(
                dpo_args(out, tiny_base, pairs(), 3, "--precompute_ref_log_probs", precompute)
            )
        )
        reset_accelerate()
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-5, abs=1e-7)


# The numbers of each loss are TRL's (test_preference_trl.py); here, that each trains end to end.
@pytest.mark.parametrize(
    "loss_type",
    [
        pytest.param("ipo", marks=pytest.mark.slow),
        pytest.param("robust", marks=pytest.mark.slow),
        "simpo",
    ],
)
def test_each_loss_trains(tiny_base, tmp_path, pairs, loss_type):
    extra = {"robust": ("--label_smoothing", "0.1"), "simpo": ("--beta", "2.0")}.get(loss_type, ())
    out = tmp_path / loss_type
    # With a weight average too: it averages any model, whatever its loss.
    args = dpo_args(
        out, tiny_base, pairs(), 3, "--loss_type", loss_type, *extra, "--ema_decay", "0.5"
    )
    metrics = run_training(parse_config(args))
    reset_accelerate()
    assert metrics["pair_loss"] < metrics["start_pair_loss"]
    name = {"ipo": "IPO", "robust": "robust DPO", "simpo": "SimPO"}[loss_type]
    assert f"{name} (loss_type {loss_type}" in (out / "README.md").read_text()


# --- bad input: one line, exit 2, nothing lost ------------------------------------------------


def test_bad_preference_input_ends_on_one_line(tiny_base, tmp_path, pairs, capsys):
    rows = pair_rows(8)
    cases = {
        "no rejected column": (
            [{k: v for k, v in r.items() if k != "rejected"} for r in rows],
            "but no 'rejected'",
        ),
        "a row without rejected": (
            rows[:3] + [{**rows[3], "rejected": None}],
            "row 4: rejected is missing",
        ),
        "chosen equals rejected": (
            rows[:1] + [{**rows[1], "rejected": rows[1]["chosen"]}],
            "row 2: chosen and rejected are the same answer",
        ),
        "an empty answer": ([{**rows[0], "chosen": ""}], "row 1: the chosen answer is empty"),
    }
    for name, (bad, message) in cases.items():
        train = write_jsonl(tmp_path / f"{name}.jsonl", bad)
        args = dpo_args(tmp_path / name, tiny_base, ["--train_file", str(train)], 2)
        assert message in train_error(capsys, *args), name
        assert not (tmp_path / name / "model.safetensors").exists()


def test_prompts_longer_than_max_length_are_dropped_and_counted(tiny_base, tmp_path, caplog):
    rows = pair_rows(40)
    rows[:8] = [{**r, "prompt": r["prompt"] * 30} for r in rows[:8]]
    train = write_jsonl(tmp_path / "long.jsonl", rows)
    caplog.set_level("INFO")
    out = tmp_path / "out"
    run_training(
        parse_config(
            dpo_args(out, tiny_base, ["--train_file", str(train)], 1, "--max_length", "32")
        )
    )
    reset_accelerate()
    assert "dropped" in caplog.text and "max_length 32" in caplog.text
    only_long = write_jsonl(tmp_path / "only-long.jsonl", rows[:8] * 4)
    args = dpo_args(
        tmp_path / "out2", tiny_base, ["--train_file", str(only_long)], 1, "--max_length", "32"
    )
    with pytest.raises(HfminiError, match="no pair left whose prompt fits max_length"):
        run_training(parse_config(args))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max_length", "65"), "max_length 65 is above block_size 64"),
        (("--block_size", "128"), "block_size 128"),  # beyond the model's context of 64
        (("--max_prompt_length", "64"), "max_prompt_length 64 leaves no room"),
        (("--label_smoothing", "0.1"), "use loss_type robust"),
        (("--loss_type", "kto"), "loss_type 'kto' is not one of"),
        (("--beta", "0"), "beta must be above 0"),
    ],
)
def test_bad_preference_settings_end_on_one_line(
    tiny_base, tmp_path, pairs, capsys, extra, message
):
    args = dpo_args(tmp_path / "out", tiny_base, pairs(), 2, *extra)
    assert message in train_error(capsys, *args)


def test_a_reference_loss_needs_a_starting_model(tmp_path, pairs, capsys):
    args = tiny_run_args(tmp_path / "out", 2, *pairs())
    assert "set model_name_or_path (a trained model), or loss_type simpo" in train_error(
        capsys, *args
    )
    assert not list_checkpoints(tmp_path / "out")


def test_the_loss_curve_draws_the_reward_accuracy_beside_the_pair_losses(tmp_path):
    from matplotlib.figure import Figure

    from hfmini.outputs.plot import draw_reward_accuracy, plot_runs

    rows = [
        {"step": 1, "train/loss": 0.69, "train/rewards/accuracies": 0.4},
        {"step": 2, "train/loss": 0.6, "train/rewards/accuracies": 0.7},
        {"step": 2, "eval/loss": 5.0, "eval/pair_loss": 0.62, "eval/rewards/accuracies": 0.65},
    ]
    axis = Figure().subplots()
    accuracy = draw_reward_accuracy(axis, None, rows, "run", "C0")
    drawn = {line.get_label(): list(line.get_ydata()) for line in accuracy.get_lines()}
    assert drawn == {"run train reward accuracy": [0.4, 0.7], "run eval reward accuracy": [0.65]}
    assert draw_reward_accuracy(axis, None, rows[:0], "plain", "C1") is None  # no pairs, no axis
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_runs([run], tmp_path / "curve.png").stat().st_size > 0


@pytest.mark.slow
def test_two_processes_weigh_every_pair_like_one(tiny_base, tmp_path, pairs):
    """2 torchrun processes × 4 pairs against 1 process × 8 pairs: one optimizer step, the same
    weights and logged loss; the held-out rewards are all-reduced into the same figures."""
    from conftest import run_command, torchrun_command

    def args(name, batch, lr="0.01"):
        extra = ["--per_device_train_batch_size", str(batch), "--adam_epsilon", "1"]
        extra += ["--weight_decay", "0", "--max_grad_norm", "0", "--lr_scheduler_type", "constant"]
        return dpo_args(tmp_path / name, tiny_base, pairs(), 1, "--learning_rate", lr, *extra)

    two = run_command(torchrun_command(*args("two", 4)))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "4 per device × 1 accumulation × 2 processes" in two.stderr
    one = run_training(parse_config(args("one", 8)))
    reset_accelerate()
    run_training(parse_config(args("start", 8, lr="1e-12")))
    reset_accelerate()
    weights = {n: load_file(tmp_path / n / "model.safetensors") for n in ("one", "two", "start")}
    step = max_difference(weights["one"], weights["start"])
    difference = max_difference(weights["one"], weights["two"])
    print(f"max |Δw| 2 processes × 4 pairs against 1 × 8: {difference:.2e}, a step of {step:.2e}")
    assert step > 1e-5 and difference < 1e-3 * step
    final = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    for name in ("rewards/accuracies", "rewards/margins", "pair_loss"):
        assert final[name] == pytest.approx(one[name], rel=1e-4, abs=1e-6), name
