"""hfmini's GRPO arithmetic (training/grpo_loss.py) agrees with TRL 1.16's GRPOTrainer itself, to
1e-5: the advantages from the rewards (scale_rewards group, batch and none; weighted reward
functions, one of which returns None, one completion that no function scores), and for each
loss_type (grpo, dr_grpo, dapo) with and without the KL penalty, the loss, every gradient and
TRL's kl, entropy and clip_ratio metrics.

TRL's side runs its real code: `_generate_and_score_completions` with the sampler replaced by
fixed completions (so rewards, padding and advantages are its own), and `_compute_loss`. Both
sides run the same tiny GPT-2 (no dropout), saved to disk so that TRL builds its reference from
it when beta > 0. Old log-probs are the current ones perturbed, so that some ratios leave
[1 - epsilon, 1 + epsilon] and the clipping is exercised (and once none: on-policy).

The one difference found, fixed in policy_loss: with beta > 0, TRL ≥ 1.16 multiplies the per-token
KL by the ratio to the sampling policy (use_bias_correction_kl, on by default), which changes the
gradient even on-policy; hfmini's KL was unweighted (loss equal, gradients 3.6e-3 apart).

The prompts all have the same length, with no padding: TRL passes no position_ids (a left-padded
prompt would start past 0), hfmini counts real tokens only; the two agree only without padding."""

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hfmini.training.grpo_loss import TOKENS, completion_logps, group_advantages, policy_loss

trl = pytest.importorskip("trl", minversion="1.16")

TOL = 1e-5
WORDS = ["<eos>", "<pad>", "the", "sky", "is", "blue", "grass", "green", "two", "four", "yes", "no"]
EOS, PAD = 0, 1
PROMPTS = ["the sky is", "the grass is"]  # three tokens each: no padding (see the docstring)
G, L = 4, 5  # completions per prompt, max_completion_length
# b·G completions, group after group: some end in eos before L, some are cut at L.
COMPLETIONS = [
    [5, 0],
    [7, 7, 10, 11, 2],
    [10, 0],
    [5, 5, 5, 2, 3],
    [7, 0],
    [0],
    [6, 7, 8, 9, 10],
    [11, 4, 0],
]
# Per completion: the first function's reward, the second's (None: not scored by it).
REWARDS = [
    (1.0, 0.5),
    (0.0, None),
    (0.5, 1.0),
    (2.0, -1.0),
    (None, None),  # scored by neither: advantage 0
    (1.0, 0.0),
    (-1.0, None),
    (0.5, 2.0),
]
WEIGHTS = [1.0, 0.5]
TEMPERATURE, EPSILON, EPSILON_HIGH = 0.7, 0.2, 0.28


def first_reward(completions, **kwargs):
    assert len(completions) == len(REWARDS)
    return [r[0] for r in REWARDS]


def second_reward(completions, **kwargs):
    return [r[1] for r in REWARDS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A word-level tokenizer and a tiny GPT-2 (dropout 0, seeded), saved for TRL to load."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    vocab = {w: i for i, w in enumerate(WORDS)}
    word = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    word.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=word, eos_token="<eos>", pad_token="<pad>")
    assert all(len(tok(p)["input_ids"]) == 3 for p in PROMPTS)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(WORDS),
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def grpo_trainer(path, tmp_path, loss_type="grpo", beta=0.0, scale_rewards="group", **extra):
    """A GRPOTrainer on the saved model, one micro-batch of all b·G completions, one step per
    generation, sampling replaced by COMPLETIONS."""
    args = trl.GRPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        per_device_train_batch_size=len(COMPLETIONS),
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=G,
        max_completion_length=L,
        temperature=TEMPERATURE,
        loss_type=loss_type,
        beta=beta,
        epsilon=EPSILON,
        epsilon_high=EPSILON_HIGH,
        scale_rewards=scale_rewards,
        reward_weights=WEIGHTS,
        **extra,
    )
    trainer = trl.GRPOTrainer(
        model=str(path),
        reward_funcs=[first_reward, second_reward],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        processing_class=PreTrainedTokenizerFast.from_pretrained(path),
    )
    trainer._generate_single_turn = lambda *a, **k: ([list(c) for c in COMPLETIONS], None)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop only
    return trainer


def trl_batch(trainer) -> dict:
    """TRL's own padded batch and advantages, from the prompts repeated G times."""
    trainer.model.train()
    inputs = [{"prompt": p} for p in PROMPTS for _ in range(G)]
    return trainer._generate_and_score_completions(inputs)


def rewards_per_func() -> torch.Tensor:
    return torch.tensor([[torch.nan if r is None else r for r in row] for row in REWARDS])


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    found = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found


def grad_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_match_trl(scale_rewards, model_dir, tmp_path):
    """group_advantages gives the advantages TRL computes from the same rewards, and the batch
    TRL pads is the one the loss tests below use."""
    trainer = grpo_trainer(model_dir, tmp_path, scale_rewards=scale_rewards)
    batch = trl_batch(trainer)
    assert batch["completion_ids"].shape == (len(COMPLETIONS), L)
    assert batch["completion_mask"].sum(1).tolist() == [len(c) for c in COMPLETIONS]
    ours, rewards, _ = group_advantages(rewards_per_func(), torch.tensor(WEIGHTS), G, scale_rewards)
    diff = (ours - batch["advantages"]).abs().max().item()
    assert diff < TOL, f"{scale_rewards}: advantages differ by {diff:.2e}"
    assert ours[4] == 0 and torch.isnan(rewards[4])  # the unscorable completion
    assert batch["advantages"].abs().max() > 0.1  # a real comparison, not zeros


LOSS_METRICS = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]


# (loss_type, beta, use_bias_correction_kl, old log-probs given): off-policy, so that clipping
# happens, and once on-policy (no old log-probs: the ratio is 1, its gradient is not).
CASES = [(loss, beta, True, True) for loss in ("grpo", "dr_grpo", "dapo") for beta in (0.0, 0.04)]
CASES += [("grpo", 0.04, False, True), ("grpo", 0.04, True, False)]


@pytest.mark.parametrize(("loss_type", "beta", "bias_correction", "off_policy"), CASES)
def test_loss_and_grads_match_trl(
    loss_type, beta, bias_correction, off_policy, model_dir, tmp_path
):
    """completion_logps → policy_loss → total / items is TRL's _compute_loss: the loss, every
    parameter's gradient and TRL's token metrics (kl, entropy, clip ratios). With beta > 0, TRL
    ≥ 1.16 weighs the KL by the ratio to the sampling policy unless use_bias_correction_kl is off."""
    trainer = grpo_trainer(
        model_dir, tmp_path, loss_type, beta, use_bias_correction_kl=bias_correction
    )
    batch = trl_batch(trainer)
    prompt = (batch["prompt_ids"], batch["prompt_mask"])
    completion = (batch["completion_ids"], batch["completion_mask"])
    ours_model = GPT2LMHeadModel.from_pretrained(model_dir).train()  # same weights, unpatched
    with torch.no_grad():
        logps, _ = completion_logps(ours_model, *prompt, *completion, TEMPERATURE)
    generator = torch.Generator().manual_seed(1)
    old = logps + 0.3 * torch.randn(logps.shape, generator=generator) if off_policy else None
    ref = logps + 0.5 * torch.randn(logps.shape, generator=generator) if beta else None
    mask = batch["completion_mask"]
    inputs = dict(batch, num_items_in_batch=mask.sum())
    if off_policy:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref

    trainer._metrics["train"].clear()
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    trl_grads = grads(trainer.model, trl_loss)

    new, entropy = completion_logps(ours_model, *prompt, *completion, TEMPERATURE)
    args = trainer.args
    total, items, metrics = policy_loss(new, old, ref, batch["advantages"], mask, args)
    loss = total / items
    metrics["entropy"] = (entropy * mask).sum()

    diffs = {"loss": abs(loss.item() - trl_loss.item())}
    diffs["grads"] = grad_diff(grads(ours_model, loss), trl_grads)
    names = LOSS_METRICS + ["entropy"] + (["kl"] if beta else [])
    for name in names:
        diffs[name] = abs((metrics[name] / metrics[TOKENS]).item() - trl_metrics[name])
    assert max(diffs.values()) < TOL, (
        f"{loss_type} beta {beta} {bias_correction} {off_policy}: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    if off_policy:
        ratio = torch.exp(new.detach() - old)[mask.bool()]
        assert ((ratio < 1 - EPSILON) | (ratio > 1 + EPSILON_HIGH)).any()  # the clipping matters
        assert trl_metrics["clip_ratio/region_mean"] > 0
