import pytest
import torch

from hfmini.config import ModelArguments
from hfmini.errors import HfminiError
from hfmini.models.gpt2 import build_model
from hfmini.models.sampling import decode, generate_text, sampling_warpers
from hfmini.models.tokenizer import train_tokenizer


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


@pytest.mark.parametrize(
    "sampling",
    [
        {"do_sample": False},
        {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.95},
        {"do_sample": True, "temperature": 1.3, "top_k": 0, "top_p": 1.0},
    ],
    ids=["greedy", "temperature-top_k-top_p", "temperature-only"],
)
def test_decode_picks_the_tokens_transformers_generate_picks(sampling):
    """The KV-cache loop must equal `model.generate` token for token, sampling included (same
    warpers, same seed, one multinomial draw per token)."""
    tokenizer = train_tokenizer(iter(["ROMEO: soft, what light\n"] * 30), 300, 16)
    torch.manual_seed(0)
    model = build_model(ModelArguments(model_size="nano"), tokenizer, context_length=96).eval()
    prompt = tokenizer("ROMEO: soft", add_special_tokens=False)["input_ids"]
    new_tokens = 80
    torch.manual_seed(7)
    expected = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=None,  # the loop below is told of no EOS either: compare all 80 tokens
        **sampling,
    )[0, len(prompt) :].tolist()
    warpers = sampling_warpers(
        sampling.get("temperature", 0.0) if sampling["do_sample"] else 0.0,
        sampling.get("top_k"),
        sampling.get("top_p"),
    )
    torch.manual_seed(7)
    got = decode(model, prompt, new_tokens, warpers, sample=sampling["do_sample"])
    assert len(got) == new_tokens
    assert got == expected


def test_decode_stops_after_eos():
    tokenizer = train_tokenizer(iter(["ROMEO: soft, what light\n"] * 30), 300, 16)
    torch.manual_seed(0)
    model = build_model(ModelArguments(model_size="nano"), tokenizer, context_length=32).eval()
    with torch.no_grad():  # make EOS the certain next token
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.eos_token_id] = 1.0
    streamed = []
    got = decode(model, [5, 6], 10, eos_token_id=tokenizer.eos_token_id, on_token=streamed.append)
    assert got == streamed == [tokenizer.eos_token_id]


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
