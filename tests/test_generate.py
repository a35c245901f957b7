import pytest
import torch

from hfmini.config import ModelArguments
from hfmini.errors import HfminiError
from hfmini.generate import generate_text
from hfmini.model import build_model
from hfmini.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = train_tokenizer(iter(["ROMEO: soft, what light\n"] * 30), 300, 16)
    torch.manual_seed(0)
    model = build_model(ModelArguments(model_size="nano"), tokenizer, context_length=16).eval()
    # Never end early: make EOS impossible so that lengths are exact.
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = 0
        model.transformer.wte.weight[tokenizer.eos_token_id] = 0
    return model, tokenizer


def test_generates_past_the_context_by_sliding(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    streamed = []
    text = generate_text(
        model, tokenizer, "ROMEO:", max_new_tokens=40, temperature=0.0, on_text=streamed.append
    )
    assert "".join(streamed) == text
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= 30


def test_greedy_is_deterministic_and_seeded_sampling_repeats(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert generate_text(model, tokenizer, "soft", 10, temperature=0) == generate_text(
        model, tokenizer, "soft", 10, temperature=0
    )
    a = generate_text(model, tokenizer, "soft", 10, temperature=1.0, seed=3)
    b = generate_text(model, tokenizer, "soft", 10, temperature=1.0, seed=3)
    assert a == b


def test_long_prompt_keeps_recent_tokens(model_and_tokenizer, caplog):
    model, tokenizer = model_and_tokenizer
    text = generate_text(model, tokenizer, "soft light " * 40, 5, temperature=0)
    assert isinstance(text, str)
    assert "keeping the most recent" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be positive"),
        ({"max_new_tokens": 5, "temperature": -0.1}, "temperature must be >= 0"),
    ],
)
def test_bad_sampling_arguments(model_and_tokenizer, kwargs, message):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(HfminiError, match=message):
        generate_text(model, tokenizer, "x", **kwargs)
