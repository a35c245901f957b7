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

    def forward(self, input_ids, attention_mask=None, use_cache=None):  # what hfmini passes
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


# --- `hfmini eval` and `hfmini generate` print their own lines only -----------------------


@pytest.mark.slow
def test_eval_and_generate_print_their_own_lines_only(tmp_path):
    """On a tiny local model: stdout holds the command's output, stderr nothing at all (no
    "Loading weights" bar, no datasets progress, no attention-mask warning)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO, write_lines
    from test_chat import ENV, _model_folder

    from hfmini.models.sampling import generate_text, load_model_and_tokenizer

    folder = _model_folder(tmp_path / "model", template=False)
    text = write_lines(tmp_path / "val.txt", 40)

    def run(*argv):
        command = [sys.executable, "-m", "hfmini.cli", *argv]
        done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    out, err = run("eval", str(folder), "--validation_file", str(text))
    assert err == "" and len(out.splitlines()) == 1 and "bits_per_byte" in json.loads(out)
    model, tokenizer = load_model_and_tokenizer(folder, device="cpu")
    expected = generate_text(model, tokenizer, "hello", 8, 0.8, 50, 0.95, seed=0)
    out, err = run("generate", str(folder), "--prompt", "hello", "--max_new_tokens", "8")
    assert err == ""
    out, err = run(
        "generate", str(folder), "--prompt", "hello", "--max_new_tokens", "8", "--seed", "0"
    )
    assert (out, err) == (f"hello{expected}\n", "")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_a_folder_without_tokenizer_is_one_line(tmp_path, capsys):
    """transformers 5 would build an empty one-token tokenizer there, and eval would then score
    nothing and generate print nothing, both exiting 0."""
    from test_chat import _model_folder

    from hfmini.cli import main as cli_main

    folder = _model_folder(tmp_path / "model", template=False)
    for path in folder.glob("tokenizer*"):
        path.unlink()
    capsys.readouterr()  # save_pretrained's own progress bar
    for command in ("eval", "generate"):
        assert cli_main([command, str(folder)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: {folder} has no tokenizer (no tokenizer.json or tokenizer_config.json): "
            "copy the tokenizer files of the model it came from into it, or export the model again"
        ]
