"""hfmini's preference tuning agrees with TRL 1.16 itself, to 1e-5: the tokens (TRL's three
row formats), the cut to max_length, and for each loss the batch loss, the per-pair losses,
TRL's six reward metrics and the gradients. DPO, robust DPO and IPO against trl.DPOTrainer;
SimPO against trl.experimental.cpo.CPOTrainer (loss_type simpo, cpo_alpha 0).

Both sides run on the same tiny GPT-2 (no dropout) and a reference that is a perturbed copy of
it, so that the rewards are not zero; TRL's batches come from its own dataset preparation and
collator, hfmini's from its own (tokenize_pairs → pair_rows → collate_pairs)."""

import copy

import pytest
import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hfmini.config import make_config
from hfmini.data.preference import collate_pairs, pair_rows, tokenize_pair, tokenize_pairs
from hfmini.training.preference import METRICS, PreferenceObjective, pair_losses, sequence_logps

trl = pytest.importorskip("trl", minversion="1.16")
cpo = pytest.importorskip("trl.experimental.cpo")

TOL = 1e-5
# Answers of uneven length, some long enough for MAX_LENGTH to cut them.
STANDARD = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green and full of cheese today."},
    {"prompt": "Two plus two equals", "chosen": " four", "rejected": " five"},
    {"prompt": "Name a fruit:", "chosen": " an apple, crisp and red", "rejected": " a chair"},
    {
        "prompt": "Water boils at one hundred degrees",
        "chosen": " Celsius at sea level.",
        "rejected": " Fahrenheit.",
    },
    {"prompt": "Say hello", "chosen": " hello there, friend", "rejected": " no"},
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
        "rejected": [{"role": "assistant", "content": row["rejected"].strip()}],
    }
    for row in STANDARD[:4]
]
CONVERSATIONAL[0]["prompt"].insert(0, {"role": "system", "content": "Answer briefly."})
IMPLICIT = [
    {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
    for row in STANDARD[1:]
]
ROWS = {"standard": STANDARD, "conversational": CONVERSATIONAL, "implicit": IMPLICIT}
# One role tag, the content, then eos, per message; the generation prompt opens the answer.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROLE_TAGS = ["<|system|>", "<|user|>", "<|assistant|>"]  # one token each
# Tokens of prompt + answer at most: cuts the longest answers of each set, on both sides.
MAX_LENGTH = {"standard": 10, "conversational": 16, "implicit": 10}


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE trained here on the rows' texts, the chat tags its added tokens."""
    texts = [row[name] for row in STANDARD for name in row]
    texts.append("Answer briefly.")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<pad>", *ROLE_TAGS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<pad>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def models_pair(tokenizer):
    """(policy, reference): a tiny GPT-2 with dropout off, and a copy with noise on every weight
    (so the log-ratios, hence the rewards, differ from zero)."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    policy = GPT2LMHeadModel(config)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference.eval()


def dpo_trainer(tmp_path, models_pair, tokenizer, rows, loss_type="sigmoid", **args):
    """A DPOTrainer on fresh copies of the models (it patches their forward in place)."""
    policy, reference = (copy.deepcopy(m) for m in models_pair)
    config = trl.DPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=len(rows),
        loss_type=[loss_type],
        disable_dropout=True,
        # TRL's DPOConfig defaults to bf16 (accelerate then wraps the reference's forward in
        # autocast) and gradient checkpointing: this comparison is of the float32 math.
        bf16=False,
        gradient_checkpointing=False,
        **args,
    )
    return trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def hfmini_batch(rows, tokenizer, max_length: int) -> dict:
    """All the pairs as one batch, through hfmini's own data path."""
    tokenized = tokenize_pairs(
        DatasetDict(train=Dataset.from_list(rows)), tokenizer, max_length, None, None
    )
    pairs, _ = pair_rows(tokenized["train"], "train")
    return collate_pairs([pairs[k] for k in range(len(pairs))], tokenizer.pad_token_id)


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    found = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found


def report(what: str, diffs: dict[str, float]) -> None:
    """Print the measured differences (pytest -s shows them), then hold each to TOL."""
    print(f"{what}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, (what, diffs)


def grad_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("kind", list(ROWS))
def test_tokens_match_trl(kind, tmp_path, models_pair, tokenizer):
    """tokenize_pair gives TRL's prompt_ids, chosen_ids and rejected_ids; the batch cut to
    MAX_LENGTH is TRL's collated batch (input_ids, and labels where its completion_mask is)."""
    rows = ROWS[kind]
    trainer = dpo_trainer(tmp_path, models_pair, tokenizer, rows, max_length=MAX_LENGTH[kind])
    assert len(trainer.train_dataset) == len(rows)
    for i, row in enumerate(rows):
        ex = trainer.train_dataset[i]
        assert tokenize_pair(row, tokenizer) == (
            ex["prompt_ids"],
            ex["chosen_ids"],
            ex["rejected_ids"],
        )
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    ours = hfmini_batch(rows, tokenizer, MAX_LENGTH[kind])
    assert theirs["input_ids"].shape[1] == MAX_LENGTH[kind]  # the cut happened
    # Pad ids may differ where TRL's attention_mask is 0: neither reads them.
    real = theirs["attention_mask"].bool()
    assert torch.equal(ours["input_ids"][real], theirs["input_ids"][real])
    scored = theirs["completion_mask"][:, 1:].bool()  # the first token is never predicted
    assert torch.equal(ours["labels"][:, 1:] != -100, scored)
    assert torch.equal(ours["labels"][:, 1:][scored], theirs["input_ids"][:, 1:][scored])


LOSSES = {"sigmoid": {}, "robust": {"label_smoothing": 0.2}, "ipo": {}}


@pytest.mark.parametrize("kind", list(ROWS))
@pytest.mark.parametrize("loss_type", list(LOSSES))
def test_dpo_losses_match_trl(loss_type, kind, tmp_path, models_pair, tokenizer):
    """The batch loss, each pair's loss, TRL's metrics and the gradients, on the same weights."""
    rows, beta = ROWS[kind], 0.5
    smoothing = LOSSES[loss_type].get("label_smoothing", 0.0)
    trainer = dpo_trainer(
        tmp_path,
        models_pair,
        tokenizer,
        rows,
        loss_type,
        beta=beta,
        label_smoothing=smoothing,
        max_length=MAX_LENGTH[kind],
    )
    model = trainer.model  # TRL patched its forward; both sides use this module
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    trl_loss = trainer._compute_loss(model, trainer.data_collator(examples), False)
    trl_metrics = {name: trainer._metrics["train"][name][-1] for name in METRICS}
    trl_grads = grads(model, trl_loss)
    trl_pairs = torch.stack(
        [
            trainer._compute_loss(model, trainer.data_collator([ex]), False).detach()
            for ex in examples
        ]
    )

    config = make_config(loss_type=loss_type, beta=beta, label_smoothing=smoothing)
    objective = PreferenceObjective(config, copy.deepcopy(models_pair[1]))  # not TRL's
    batch = hfmini_batch(rows, tokenizer, MAX_LENGTH[kind])
    out = objective(model, batch)
    loss = out.total / out.items
    logps, counts = sequence_logps(model, batch)
    ref = objective.reference_logps(model, batch, "train")
    ours_pairs = pair_losses(logps, ref, counts, config.train)[0].detach()

    diffs = {"loss": abs(loss.item() - trl_loss.item())}
    diffs["pair losses"] = (ours_pairs - trl_pairs).abs().max().item()
    for name in METRICS:
        diffs[name] = abs((out.metrics[name] / out.items).item() - trl_metrics[name])
    diffs["grads"] = grad_diff(grads(model, loss), trl_grads)
    report(f"{loss_type} {kind}", diffs)
    assert 0 < abs(trl_metrics["rewards/margins"])  # a real comparison, not zeros


def test_ipo_without_prompt_differs_in_its_token_count(tmp_path, models_pair, tokenizer):
    """The one difference found, pinned: for a pair with no prompt tokens (an empty prompt, or
    implicit-prompt answers with no shared beginning, with a tokenizer that adds no BOS), TRL's
    IPO averages the log-ratio over all the answer's tokens, the first one included, which no
    position predicts and so adds nothing to the sum; hfmini's averages over the tokens it
    scores, one fewer (as TRL's CPO does for SimPO). Sigmoid and robust do not count tokens."""
    row = {"prompt": "", "chosen": "Celsius at sea level.", "rejected": "Fahrenheit."}
    trainer = dpo_trainer(tmp_path, models_pair, tokenizer, [row], "ipo", beta=0.5)
    assert trainer.train_dataset[0]["prompt_ids"] == []
    model = trainer.model
    with torch.no_grad():
        trl_loss = trainer._compute_loss(
            model, trainer.data_collator([trainer.train_dataset[0]]), False
        )
        config = make_config(loss_type="ipo", beta=0.5)
        batch = hfmini_batch([row], tokenizer, 64)
        logps, counts = sequence_logps(model, batch)
        ref = sequence_logps(models_pair[1], batch)[0]
        ours = pair_losses(logps, ref, counts, config.train)[0]
        as_trl = pair_losses(logps, ref, counts + 1, config.train)[0]
    report("ipo empty prompt, TRL's count", {"loss": abs(as_trl.item() - trl_loss.item())})
    assert abs(ours.item() - trl_loss.item()) > 1e-3


def test_simpo_matches_trl_cpo(tmp_path, models_pair, tokenizer):
    """SimPO as TRL's CPOTrainer computes it (loss_type simpo, cpo_alpha 0): no reference,
    rewards beta × the length-averaged log-probability, margin simpo_gamma."""
    kind, beta, gamma, smoothing = "standard", 2.0, 0.5, 0.1
    rows = ROWS[kind]
    policy = copy.deepcopy(models_pair[0])
    args = cpo.CPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=len(rows),
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=beta,
        simpo_gamma=gamma,
        label_smoothing=smoothing,
        max_length=MAX_LENGTH[kind],
        disable_dropout=True,
        bf16=False,
    )
    trainer = cpo.CPOTrainer(
        model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    model = trainer.model
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    ours = hfmini_batch(rows, tokenizer, MAX_LENGTH[kind])
    # CPO tokenizes its own way (prompt, then the answer's tokens, eos as an id): same ids here.
    for name, half in (("chosen", slice(0, len(rows))), ("rejected", slice(len(rows), None))):
        labels, width = theirs[f"{name}_labels"], theirs[f"{name}_labels"].shape[1]
        assert torch.equal(labels[:, 1:], ours["labels"][half, 1:width])
        assert (ours["labels"][half, width:] == -100).all()

    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, theirs)
    chosen_logps, rejected_logps = trainer.concatenated_forward(model, theirs)[:2]
    trl_pairs = trainer.cpo_loss(chosen_logps, rejected_logps)[0].detach()
    trl_grads = grads(model, trl_loss)

    config = make_config(loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=smoothing)
    objective = PreferenceObjective(config, None)
    out = objective(model, ours)
    loss = out.total / out.items
    logps, counts = sequence_logps(model, ours)
    ours_pairs = pair_losses(logps, None, counts, config.train)[0].detach()

    diffs = {"loss": abs(loss.item() - trl_loss.item())}
    diffs["pair losses"] = (ours_pairs - trl_pairs).abs().max().item()
    for name in METRICS:
        diffs[name] = abs((out.metrics[name] / out.items).item() - trl_metrics[name])
    diffs["grads"] = grad_diff(grads(model, loss), trl_grads)
    report("simpo standard", diffs)
