import pytest
import torch

from hfmini.config import ModelArguments
from hfmini.errors import HfminiError
from hfmini.models.batch_sampling import sample_batch
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


# --- sample_batch: many prompts at once (hfmini/models/batch_sampling.py) ---


def tiny_gpt2(attn_implementation: str = "sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=64, initializer_range=0.1
    )
    config._attn_implementation = attn_implementation
    return GPT2LMHeadModel(config).eval()


PAD = 0
PROMPTS = [[5, 9, 13, 2, 41, 7, 30], [11, 3], [22, 8, 19, 44]]  # different lengths


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_greedy_batch_equals_each_row_decoded_alone(attn_implementation):
    """Left padding, explicit positions and the batched cache must change nothing: each row gets
    exactly the tokens `decode` gives it alone, a row stopping early at the stop token included."""
    model = tiny_gpt2(attn_implementation)
    steps = 12
    # The stop token: what greedy decoding of row 1 produces at its 4th step, so row 1 stops early.
    stop = decode(model, PROMPTS[1], steps)[3]
    expected = [decode(model, p, steps, eos_token_id=stop) for p in PROMPTS]
    assert len(expected[1]) <= 4 < steps
    assert len({len(e) for e in expected}) > 1, "rows should stop at different steps"
    ids, mask = left_padded(PROMPTS)
    completion, completion_mask = sample_batch(
        model, ids, mask, steps, None, stop_ids=[stop], pad_id=PAD, sample=False
    )
    assert completion.shape[1] == max(map(len, expected))
    for row, want in enumerate(expected):
        length = int(completion_mask[row].sum())
        assert completion[row, :length].tolist() == want


def test_batch_mask_covers_through_the_first_stop_then_pads():
    model = tiny_gpt2().train()  # sample_batch samples in eval mode and restores this
    ids, mask = left_padded(PROMPTS)
    stop = decode(model.eval(), PROMPTS[1], 8)[2]
    model.train()
    completion, completion_mask = sample_batch(
        model, ids, mask, 8, None, stop_ids={stop, 49}, pad_id=PAD, sample=False
    )
    assert model.training
    assert completion.shape == completion_mask.shape and completion.shape[1] <= 8
    for row in range(len(PROMPTS)):
        tokens, kept = completion[row].tolist(), completion_mask[row].tolist()
        first_stop = next((i for i, t in enumerate(tokens) if t in {stop, 49}), None)
        length = len(tokens) if first_stop is None else first_stop + 1
        assert kept == [1] * length + [0] * (len(tokens) - length)
        assert tokens[length:] == [PAD] * (len(tokens) - length)
    assert completion_mask[1].tolist().count(1) <= 3 < completion.shape[1]


def test_batch_sampling_repeats_with_a_seed_and_varies_without():
    model = tiny_gpt2()
    ids, mask = left_padded(PROMPTS * 2)
    warpers = sampling_warpers(1.0, None, None)

    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sample_batch(model, ids, mask, 10, warpers, [], PAD, generator=generator)[0]

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.5, 10)])
def test_batch_first_token_follows_the_warped_softmax(temperature, top_k):
    """2000 identical prompts, one token each: the tokens' frequencies must match the model's
    warped next-token distribution (top-k zeroes all but 10 tokens; the tolerance is ~4 sigma)."""
    model = tiny_gpt2()
    prompt = torch.tensor([[5, 9, 13, 2]])
    warpers = sampling_warpers(temperature, top_k, None)
    with torch.no_grad():
        logits = model(prompt).logits[:, -1, :].float()
    expected = torch.softmax(warpers(prompt, logits), dim=-1)[0]  # (vocab,)
    rows = 2000
    generator = torch.Generator().manual_seed(0)
    completion, _ = sample_batch(
        model,
        prompt.expand(rows, -1),
        torch.ones(rows, 4, dtype=torch.long),
        1,
        warpers,
        [],
        PAD,
        generator=generator,
    )
    counts = torch.bincount(completion[:, 0], minlength=expected.numel()).float()
    assert (counts / rows - expected).abs().max() < 0.05
    assert counts[expected == 0].sum() == 0
