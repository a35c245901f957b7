"""GRPO in hfmini's loop: prompt-only rows, reward functions named as TRL names them, the metrics
under TRL's names, and the promises of the loop kept (exact resume with the sampler's state,
every completion token weighing alike however a step is split). TRL agreement of the loss
itself: tests/test_grpo_trl.py."""

import json
import random

import pytest
import torch
from conftest import tiny_run_args, train_error
from safetensors.torch import load_file
from test_sft import WORDS, write_jsonl

from hfmini.config import make_config, parse_config
from hfmini.data.prompts import WindowSampler, collate_prompts
from hfmini.errors import HfminiError
from hfmini.training import grpo
from hfmini.training.grpo_loss import group_advantages
from hfmini.training.rewards import load_reward_funcs, load_reward_function, score
from hfmini.training.trainer import run_training

REWARDS = '''
def letter_e(prompts, completions, completion_ids, **kwargs):
    """The share of the letter e in each completion: a reward a tiny model can climb."""
    return [c.count("e") / max(1, len(c)) for c in completions]


def length(prompts, completions, completion_ids, **kwargs):
    return [len(ids) / 8 for ids in completion_ids]


def needs_topic(prompts, completions, completion_ids, topic, **kwargs):
    """Reads an extra column; None (not scored) for rows whose topic is "skip"."""
    return [None if t == "skip" else float(t in c) for t, c in zip(topic, completions)]


def broken(prompts, completions, completion_ids, **kwargs):
    raise ValueError("no scansion today")


def too_few(prompts, completions, completion_ids, **kwargs):
    return [1.0]


def not_a_list(prompts, completions, completion_ids, **kwargs):
    return 1.0


def infinite(prompts, completions, completion_ids, **kwargs):
    return [float("inf")] * len(completions)
'''


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    return path


def prompt_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    topics = ["king", "night", "skip"]
    return [
        {"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))), "topic": t}
        for t in (topics[i % 3] for i in range(n))
    ]


def grpo_args(tmp_path, name, rewards_file, tiny_base, steps=4, *overrides, functions=None):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(64))
    functions = functions or [f"{rewards_file}:letter_e", f"{rewards_file}:needs_topic"]
    return tiny_run_args(
        tmp_path / name,
        steps,
        "--train_file",
        str(data),
        "--reward_funcs",
        *functions,
        "--num_generations",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--max_completion_length",
        "8",
        "--block_size",
        "32",
        "--logging_steps",
        "1",
        "--max_eval_samples",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--dropout",
        "0",
        *overrides,
        finetune_from=tiny_base,
    )


def metric_rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# -- configuration and reward functions ---------------------------------------------------------


def test_grpo_takes_trl_defaults_and_preference_keeps_its_own():
    assert (make_config().train.loss_type, make_config().train.beta) == ("sigmoid", 0.1)
    args = make_config(reward_funcs=["r.py:f"], per_device_train_batch_size=8).train
    assert (args.loss_type, args.beta, args.needs_reference) == ("dapo", 0.0, False)
    assert make_config(
        reward_funcs=["r.py:f"], per_device_train_batch_size=8, beta=0.04
    ).train.needs_reference


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_generations": 1}, "num_generations must be at least 2"),
        ({"per_device_train_batch_size": 6}, "must be a multiple of num_generations 4"),
        ({"loss_type": "sigmoid"}, "sigmoid is a loss of preference pairs"),
        ({"reward_weights": [1.0, 2.0]}, "2 values for 1 reward_funcs"),
        ({"temperature": 0}, "temperature must be above 0"),
        ({"scale_rewards": "mean"}, "scale_rewards must be one of group, batch, none"),
    ],
)
def test_bad_grpo_settings_are_one_line_errors(values, message):
    keys = {"reward_funcs": ["r.py:f"], "num_generations": 4, "per_device_train_batch_size": 8}
    with pytest.raises(HfminiError, match=message):
        make_config(**{**keys, **values})


def test_a_grpo_loss_without_reward_funcs_is_refused():
    with pytest.raises(HfminiError, match="dapo is a loss of GRPO"):
        make_config(loss_type="dapo")


def test_reward_functions_load_from_a_file_or_a_module(rewards_file):
    assert load_reward_function(f"{rewards_file}:length").fn([], ["a"], [[1, 2]]) == [0.25]
    assert load_reward_function("json:dumps").name == "dumps"  # any importable module


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{file}", "is not FILE.py:FUNCTION"),
        ("{dir}/missing.py:f", "missing.py not found"),
        ("{file}:nope", "'nope' not found in .*it defines broken, infinite, length"),
        ("no_such_module_xyz:f", "module 'no_such_module_xyz' cannot be imported"),
    ],
)
def test_a_reward_function_that_is_not_found_is_one_line(rewards_file, spec, message):
    with pytest.raises(HfminiError, match=message):
        load_reward_function(spec.format(file=rewards_file, dir=rewards_file.parent))


@pytest.mark.parametrize(
    "name, message",
    [
        ("broken", "raised ValueError: no scansion today .*prompt 'thou art'"),
        ("too_few", "returned 1 rewards for 2 completions"),
        ("not_a_list", "returned a float: it must return a list of 2"),
        ("infinite", "returned inf .*return a finite number, or None"),
    ],
)
def test_a_reward_function_that_fails_names_itself_and_the_prompt(rewards_file, name, message):
    functions = load_reward_funcs([f"{rewards_file}:{name}"])
    with pytest.raises(HfminiError, match=message):
        score(functions, ["thou art", "thou art"], ["x", "y"], [[1], [2]], {})


def test_none_skips_a_function_and_an_unscored_completion_gets_no_advantage(rewards_file):
    functions = load_reward_funcs([f"{rewards_file}:needs_topic", f"{rewards_file}:length"])
    completions = ["the king", "no", "a king", "night"]
    columns = {"topic": ["king", "king", "skip", "skip"]}
    rewards = score(functions, ["p"] * 4, completions, [[1] * 8, [1] * 4, [1], [1]], columns)
    assert torch.isnan(rewards[2:, 0]).all() and rewards[0, 0] == 1.0
    # Weighted sum with None skipped (nansum): 1 + 1, 0 + 0.5, then the length alone.
    advantages, summed, _ = group_advantages(rewards, torch.tensor([1.0, 1.0]), 2, "none")
    assert summed.tolist() == [2.0, 0.5, 0.125, 0.125]
    assert advantages.tolist() == [0.75, -0.75, 0.0, 0.0]
    everything_none = torch.full((2, 1), float("nan"))
    assert group_advantages(everything_none, torch.ones(1), 2, "group")[0].tolist() == [0.0, 0.0]


# -- data ----------------------------------------------------------------------------------------


def test_each_window_of_prompts_comes_round_num_iterations_times():
    sampler = WindowSampler(size=10, window=4, iterations=2, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 16  # 2 whole windows of 4, twice each; 2 prompts left
    first, again = order[:4], order[4:8]
    assert [k - 10 for k in again] == first  # the second pass: same prompts, iteration 1
    sampler.set_epoch(1)
    assert list(sampler) != order and list(WindowSampler(10, 4, 2, 0)) == order


def test_prompts_are_left_padded_so_completions_start_together():
    rows = [
        {"input_ids": torch.tensor([5, 6, 7]), "index": 0},
        {"input_ids": torch.tensor([9]), "index": 3},
    ]
    batch = collate_prompts(rows, pad_id=0)
    assert batch["prompt_ids"].tolist() == [[5, 6, 7], [0, 0, 9]]
    assert batch["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["prompt_index"].tolist() == [0, 3]


def test_prompt_rows_without_reward_funcs_and_answers_with_them_are_refused(
    tmp_path, capsys, rewards_file
):
    prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(8))
    line = train_error(capsys, "--train_file", str(prompts), "--output_dir", str(tmp_path / "o"))
    assert "add --reward_funcs path/to/rewards.py:function" in line
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "completion": "b"}] * 8)
    line = train_error(
        capsys,
        "--train_file",
        str(answers),
        "--reward_funcs",
        f"{rewards_file}:length",
        "--per_device_train_batch_size",
        "8",
        "--output_dir",
        str(tmp_path / "o"),
    )
    assert "GRPO needs prompt-only rows" in line


def test_a_completion_longer_than_the_block_is_refused(tmp_path, capsys, rewards_file, tiny_base):
    args = grpo_args(tmp_path, "long", rewards_file, tiny_base, 1, "--max_completion_length", "32")
    line = train_error(capsys, *args)
    assert "max_completion_length 32 leaves no room for a prompt in block_size 32" in line


# -- training ------------------------------------------------------------------------------------


def test_grpo_trains_logs_trl_metrics_and_exports(tmp_path, rewards_file, tiny_base):
    out = tmp_path / "grpo"
    metrics = run_training(parse_config(grpo_args(tmp_path, "grpo", rewards_file, tiny_base, 3)))
    rows = metric_rows(out)
    train = [r for r in rows if "train/reward" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for name in (
        "reward",
        "reward_std",
        "rewards/letter_e/mean",
        "rewards/needs_topic/mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "clip_ratio/region_mean",
        "entropy",
    ):
        assert f"train/{name}" in train[0], name
    assert 0 < train[0]["train/completions/mean_length"] <= 8
    assert not any(k.startswith("train/_") for k in train[0])  # counts are not logged
    tables = [r for r in rows if "completions" in r]
    assert [t["step"] for t in tables] == [1, 2, 3] and len(tables[0]["completions"]) == 8
    assert {"prompt", "completion", "letter_e", "needs_topic", "advantage"} <= set(
        tables[0]["completions"][0]
    )
    # The held-out prompts were scored before and after.
    assert "reward" in metrics and "start_reward" in metrics and "rewards/letter_e/mean" in metrics
    card = (out / "README.md").read_text()
    assert "GRPO (loss_type dapo" in card and "`letter_e`" in card and "`needs_topic`" in card
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def fake_completions(calls):
    """A stand-in for the sampler whose completions depend on the prompt only (its tokens), so
    that two runs that split a step differently see the same completions: what is left to
    compare is how the loop weighs them. Lengths differ, to make token weighting matter."""

    def sample(model, prompt_ids, prompt_mask, max_new_tokens, warpers, stop_ids, pad_id, **kw):
        calls.append(prompt_ids.shape[0])
        rows, masks = [], []
        for n, prompt in enumerate(prompt_ids.tolist()):
            g = n % 4  # the completion's place in its group (groups of 4)
            length = 1 + (sum(prompt) * (g + 1)) % max_new_tokens
            ids = [(sum(prompt) * 7 + 13 * k * (g + 1)) % 200 + 3 for k in range(length)]
            rows.append(ids + [pad_id] * (max_new_tokens - length))
            masks.append([1] * length + [0] * (max_new_tokens - length))
        return torch.tensor(rows), torch.tensor(masks)

    return sample


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_the_split_of_a_step_does_not_change_the_weights(
    tmp_path, rewards_file, tiny_base, monkeypatch, loss_type
):
    """One optimizer step of 4 prompts × 4 completions: in one micro-batch, or in 2 × 2 with
    accumulation. dapo weighs every completion token alike over the step, grpo every completion;
    the same step either way (the sampler replaced by one that depends on the prompt only)."""
    calls = []
    monkeypatch.setattr(grpo, "sample_batch", fake_completions(calls))
    step = ("--loss_type", loss_type, "--learning_rate", "0.01", "--warmup_steps", "0")
    step += ("--lr_scheduler_type", "constant", "--adam_epsilon", "1", "--weight_decay", "0")
    step += ("--max_grad_norm", "0", "--mixed_precision", "no", "--scale_rewards", "none")
    functions = [f"{rewards_file}:length"]

    def one_step(name, batch, accumulation):
        args = grpo_args(tmp_path, name, rewards_file, tiny_base, 1, *step, functions=functions)
        args += ["--per_device_train_batch_size", str(batch)]
        args += ["--gradient_accumulation_steps", str(accumulation), "--eval_steps", "0"]
        run_training(parse_config(args))
        return load_file(tmp_path / name / "model.safetensors")

    whole, split = one_step("16x1", 16, 1), one_step("8x2", 8, 2)
    assert 16 in calls and 8 in calls
    start = load_file(tiny_base / "model.safetensors")
    moved = max((whole[k] - start[k]).abs().max().item() for k in whole)
    differ = max((whole[k] - split[k]).abs().max().item() for k in whole)
    assert moved > 1e-4 and differ < 1e-3 * moved, (moved, differ)


def test_resume_mid_grpo_with_reused_completions_is_exact(tmp_path, rewards_file, tiny_base):
    """num_iterations 2: a checkpoint at step 3 falls between the two steps on one batch of
    completions; the resumed run must sample with the sampler's saved state and reuse the
    completions kept, and end on the unbroken run's weights."""
    import shutil

    extra = ("--num_iterations", "2", "--learning_rate", "1e-3", "--eval_steps", "0")
    full = grpo_args(tmp_path, "full", rewards_file, tiny_base, 6, *extra)
    run_training(parse_config(full))
    saved = grpo_args(tmp_path, "saved", rewards_file, tiny_base, 6, *extra, "--save_steps", "3")
    run_training(parse_config(saved))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "saved/checkpoints/step-3", resumed / "checkpoints/step-3")
    rows = (tmp_path / "saved/metrics.jsonl").read_text().splitlines()
    kept = [r for r in rows if json.loads(r)["step"] <= 3]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    again = grpo_args(tmp_path, "resumed", rewards_file, tiny_base, 6, *extra)
    run_training(parse_config([*again, "--resume_from_checkpoint", "latest"]))

    def rewards(folder):
        return {r["step"]: r["train/reward"] for r in metric_rows(folder) if "train/reward" in r}

    assert rewards(resumed) == pytest.approx(rewards(tmp_path / "full"), rel=1e-6)
    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


FAKE_SAMPLER_SCRIPT = """
import runpy, sys
sys.path.insert(0, {tests!r})
from test_grpo import fake_completions
from hfmini.training import grpo
grpo.sample_batch = fake_completions([])  # completions that depend on the prompt only
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_two_processes_weigh_every_token_like_one(
    tmp_path, rewards_file, tiny_base, monkeypatch, loss_type
):
    """2 torchrun processes × 8 completions against 1 process × 16: one optimizer step, the same
    weights (dapo divides by the completion tokens of the whole step, over both processes; grpo
    by its completions), and the same logged reward."""
    from conftest import BIN, REPO, TRAIN_SCRIPT, run_command

    monkeypatch.setattr(grpo, "sample_batch", fake_completions([]))
    script = tmp_path / "train_with_fake_sampler.py"
    script.write_text(
        FAKE_SAMPLER_SCRIPT.format(tests=str(REPO / "tests"), script=str(TRAIN_SCRIPT))
    )
    step = ("--loss_type", loss_type, "--learning_rate", "0.01", "--warmup_steps", "0")
    step += ("--lr_scheduler_type", "constant", "--adam_epsilon", "1", "--weight_decay", "0")
    step += ("--max_grad_norm", "0", "--mixed_precision", "no", "--scale_rewards", "none")
    functions = [f"{rewards_file}:length"]

    def args(name, batch):
        extra = ["--per_device_train_batch_size", str(batch), "--eval_steps", "0"]
        return (
            grpo_args(tmp_path, name, rewards_file, tiny_base, 1, *step, functions=functions)
            + extra
        )

    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script)]
    two = run_command([*torchrun, *args("two", 8)])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "8 per device × 1 accumulation × 2 processes" in two.stderr
    run_training(parse_config(args("one", 16)))
    start = load_file(tiny_base / "model.safetensors")
    one, two_w = (load_file(tmp_path / n / "model.safetensors") for n in ("one", "two"))
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    differ = max((one[k] - two_w[k]).abs().max().item() for k in one)
    print(
        f"{loss_type}: max |Δw| 2 processes × 8 against 1 × 16: {differ:.2e}, a step of {moved:.2e}"
    )
    assert moved > 1e-4 and differ < 1e-3 * moved, (moved, differ)
    rewards = [
        [r["train/reward"] for r in metric_rows(tmp_path / n) if "train/reward" in r]
        for n in ("one", "two")
    ]
    assert rewards[0] == pytest.approx(rewards[1], rel=1e-5)
