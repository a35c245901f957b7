import pytest
import torch

from hfmini.config import ModelArguments, parse_config
from hfmini.model import build_model
from hfmini.optim import build_optimizer, build_scheduler
from hfmini.tokenizer import train_tokenizer


def test_weight_decay_on_matrices_only():
    tokenizer = train_tokenizer(iter(["some text here\n"] * 10), 300, 32)
    model = build_model(ModelArguments(model_size="nano"), tokenizer, 32)
    args = parse_config(["--weight_decay", "0.05"]).train
    decay, no_decay = build_optimizer(model, args).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() < 2 for p in no_decay["params"]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine_to_zero():
    args = parse_config(["--warmup_steps", "10", "--learning_rate", "0.01"]).train
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=args.learning_rate)
    scheduler = build_scheduler(optimizer, args, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.005)
    assert lrs[55] == pytest.approx(0.005, rel=0.05)  # halfway through the cosine
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
