import pytest
import torch

from hfmini.config import ModelArguments, parse_config
from hfmini.errors import HfminiError
from hfmini.models.gpt2 import build_model
from hfmini.models.tokenizer import train_tokenizer
from hfmini.training.budget import Progress, RunLength
from hfmini.training.optimizers import build_optimizer, orthogonalize
from hfmini.training.schedule import build_scheduler


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
    scheduler = build_scheduler(optimizer, args, RunLength(100, None), Progress())
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.005)
    assert lrs[55] == pytest.approx(0.005, rel=0.05)  # halfway through the cosine
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    tokenizer = train_tokenizer(iter(["some text here\n"] * 10), 300, 32)
    model = build_model(ModelArguments(model_size="nano"), tokenizer, 32)
    args = parse_config(["--optim", "muon", "--weight_decay", "0.05"]).train
    args.learning_rate = 0.01
    optimizer = build_optimizer(model, args)
    muon, adamw = optimizer.parts
    names = {id(p): name for name, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    in_adamw = sorted(names[id(p)] for g in adamw.param_groups for p in g["params"])
    assert in_muon and all(".h." in n and n.endswith(".weight") and "ln_" not in n for n in in_muon)
    assert "transformer.wte.weight" in in_adamw and "transformer.wpe.weight" in in_adamw
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters()))
    # The scheduler sees, and sets, every group of both.
    assert len(optimizer.param_groups) == len(muon.param_groups) + len(adamw.param_groups)
    optimizer.param_groups[0]["lr"] = 0.5
    assert muon.param_groups[0]["lr"] == 0.5


def test_orthogonalize_flattens_the_spectrum():
    """Newton-Schulz maps singular values spread over a factor of 100 to about 0.7-1.2."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64))
    v, _ = torch.linalg.qr(torch.randn(192, 64))
    spread = torch.logspace(-1, 1, 64)
    matrix = u @ torch.diag(spread) @ v.T  # (64, 192)
    for shape in (matrix, matrix.T):
        values = torch.linalg.svdvals(orthogonalize(shape, 5, torch.float32))
        assert values.max() < 1.25 and values.min() > 0.6
    with pytest.raises(HfminiError, match="optim 'sgd' is not one of"):
        parse_config(["--optim", "sgd"])
