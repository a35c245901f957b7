from types import SimpleNamespace

import pytest
import torch
from conftest import assert_eval_reproduces_report
from safetensors.torch import load_file

from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.training.ema import WeightAverage
from hfmini.training.trainer import run_training


def test_average_follows_the_ramped_decay(tmp_path):
    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    ema = WeightAverage(model, decay=0.9)
    expected = [s.clone() for s in start]
    for step in range(1, 201):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # a stand-in for an optimizer step
        ema.update()
        decay = min(0.9, (1 + step) / (10 + step))  # 0.18, 0.25, ..., 0.9 from step 80 on
        weights = [p.detach() for p in model.parameters()]
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights, strict=True)]
    for average, want in zip(ema.average, expected, strict=True):
        torch.testing.assert_close(average, want)
    # It lags the weights (which rose by 1 a step) by decay / (1 - decay) = 9 steps.
    lag = (model.weight - ema.average[0]).mean().item()
    assert 8 < lag < 10

    ema.save(tmp_path)
    restored = WeightAverage(torch.nn.Linear(3, 2), decay=0.9)
    assert restored.load(tmp_path) and restored.updates == 200
    for a, b in zip(restored.average, ema.average, strict=True):
        torch.testing.assert_close(a, b)
    assert not WeightAverage(model, 0.9).load(tmp_path / "elsewhere")

    ema.copy_to_model()
    torch.testing.assert_close(model.weight.detach(), ema.average[0])


@pytest.mark.slow
def test_a_run_with_ema_exports_and_scores_the_average(tiny_args, tmp_path, capsys):
    plain, averaged = tmp_path / "plain", tmp_path / "averaged"
    run_training(parse_config(tiny_args + ["--output_dir", str(plain)]))
    run_training(parse_config(tiny_args + ["--output_dir", str(averaged), "--ema_decay", "0.5"]))
    w_plain = load_file(plain / "model.safetensors")
    w_avg = load_file(averaged / "model.safetensors")
    assert w_plain.keys() == w_avg.keys()
    assert max((w_plain[k] - w_avg[k]).abs().max().item() for k in w_plain) > 1e-4
    # The reported figures are those of the exported average.
    assert_eval_reproduces_report(averaged, capsys)
    assert "moving average, decay 0.5" in (averaged / "README.md").read_text()


@pytest.mark.parametrize("sharding", ["FSDP", "DEEPSPEED"])
def test_sharded_training_refuses_the_average_with_a_one_line_error(sharding):
    from accelerate.utils import DistributedType

    from hfmini.training.ema import weight_average_for

    accelerator = SimpleNamespace(distributed_type=getattr(DistributedType, sharding))
    model = torch.nn.Linear(2, 2)
    with pytest.raises(HfminiError, match="set ema_decay 0 or train with DDP"):
        weight_average_for(accelerator, model, 0.99, resume_path=None)
    assert weight_average_for(accelerator, model, 0.0, resume_path=None) is None  # off
