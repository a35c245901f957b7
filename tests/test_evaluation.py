import math

import pytest
import torch

from hfmini.data.blocks import TokenValidation, block_ranges
from hfmini.training.evaluation import score_validation


class UniformModel(torch.nn.Module):
    """Predicts every token with probability 1/vocab: NLL is ln(vocab) per predicted token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=None):  # the arguments hfmini passes a causal LM
        b, t = input_ids.shape
        return type("Out", (), {"logits": torch.zeros(b, t, self.vocab) + self.dummy})()


def test_block_ranges_cover_the_stream():
    assert block_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert block_ranges(9, 4) == [(0, 4), (4, 8)]  # a 1-token tail predicts nothing


def test_bits_per_byte_definition():
    vocab = 16
    tokens = torch.randint(0, vocab, (103,))
    token_bytes = torch.arange(vocab, dtype=torch.float64) % 4  # 0..3 bytes per token
    metrics = score_validation(
        UniformModel(vocab), TokenValidation(tokens, 10), batch_size=4, token_bytes=token_bytes
    )
    predicted = [tokens[s + 1 : e] for s, e in block_ranges(103, 10)]
    n_predicted = sum(p.numel() for p in predicted)
    n_bytes = sum(token_bytes[p].sum().item() for p in predicted)
    assert metrics["eval_tokens"] == n_predicted == 103 - 11
    assert metrics["eval_loss"] == pytest.approx(math.log(vocab))
    assert metrics["perplexity"] == pytest.approx(vocab)
    assert metrics["bits_per_byte"] == pytest.approx(
        n_predicted * math.log(vocab) / (math.log(2) * n_bytes)
    )


def test_max_blocks_limits_the_work():
    tokens = torch.randint(0, 8, (100,))
    metrics = score_validation(
        UniformModel(8), TokenValidation(tokens, 10), 3, torch.ones(8), max_blocks=2
    )
    assert metrics["eval_tokens"] == 18
