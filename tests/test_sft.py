"""Instruction and chat data: TRL's formats, chat templates, answer-only loss and packing.

Rows are written by the tests; the model to fine-tune is conftest's `tiny_base` (a tiny hfmini
run). What must hold: each format trains from local files; the template round-trips through
save_pretrained/from_pretrained and serves `pipeline` without hfmini; the loss covers exactly the
answers; packed examples never see each other.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args, train_error

from hfmini.config import parse_config
from hfmini.data.packing import IGNORE_INDEX, pack_examples, pad_sequences
from hfmini.data.sft import data_format
from hfmini.errors import HfminiError
from hfmini.models.chat_template import DEFAULT_CHAT_TEMPLATE, apply_template, end_of_turn_token
from hfmini.training.objectives import model_inputs, next_token_loss
from hfmini.training.trainer import run_training

WORDS = "thou art the king my lord what say you good night sweet prince fair and".split()


def phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conversation_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "You are ROMEO."}] if i % 2 else []
        for _ in range(1 + i % 2):
            messages += [
                {"role": "user", "content": phrase(rng, 5)},
                {"role": "assistant", "content": phrase(rng, 4)},
            ]
        rows.append({"messages": messages})
    return rows


def prompt_completion_rows(n: int, seed: int = 0, as_messages: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, completion = phrase(rng, 6) + "\n", phrase(rng, 4)
        if as_messages:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "completion": [{"role": "assistant", "content": completion}],
                }
            )
        else:
            rows.append({"prompt": prompt, "completion": completion})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sft_args(base: Path, out: Path, train_file: Path, steps: int = 4, *overrides: str):
    return tiny_run_args(
        out, steps, "--train_file", str(train_file), *overrides, finetune_from=base
    )


def test_formats_are_detected_from_the_columns():
    assert data_format(["messages"], "text") == "conversational"
    assert data_format(["prompt", "completion", "id"], "text") == "prompt_completion"
    assert data_format(["text"], "text") == "language_modeling"
    assert data_format(["body"], "text") == "language_modeling"  # text_column's own error follows
    with pytest.raises(Exception, match="'prompt' column but no 'completion'"):
        data_format(["prompt"], "text")


# --- each format trains from local files, and the result serves without hfmini ----------------

PIPELINE_CHECK = """
import json, sys
from transformers import AutoTokenizer, pipeline
folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder)
chat = pipeline("text-generation", model=folder)
messages = [{"role": "user", "content": "good night sweet prince"}]
out = chat(messages, max_new_tokens=12, do_sample=False)[0]["generated_text"]
print(json.dumps({"hfmini": "hfmini" in sys.modules, "messages": out,
                  "template": tokenizer.chat_template,
                  "rendered": tokenizer.apply_chat_template(messages, tokenize=False,
                                                            add_generation_prompt=True)}))
"""


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
@pytest.mark.parametrize("kind", ["messages", "prompt-completion-messages"])
def test_conversations_train_and_serve_pipeline_with_messages_without_hfmini(
    kind, tiny_base, tmp_path
):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    rows = (
        conversation_rows(120)
        if kind == "messages"
        else prompt_completion_rows(120, as_messages=True)
    )
    out = tmp_path / "chat"
    metrics = run_training(
        parse_config(sft_args(tiny_base, out, write_jsonl(tmp_path / "c.jsonl", rows)))
    )
    assert metrics["bits_per_byte"] < metrics["start_bits_per_byte"]
    card = (out / "README.md").read_text()
    assert "Bits per byte of the answers" in card and "chat(messages, max_new_tokens=100)" in card

    # The template round-trips through save_pretrained / from_pretrained, in tokenizer_config.json.
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    # Two new special tokens, one embedding row each; generation stops at the end of a turn.
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert AutoConfig.from_pretrained(out).vocab_size == len(tokenizer) == 514
    assert GenerationConfig.from_pretrained(out).eos_token_id == [tokenizer.eos_token_id, end]

    result = subprocess.run(
        [sys.executable, "-c", PIPELINE_CHECK, str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["hfmini"] is False
    assert seen["template"] == DEFAULT_CHAT_TEMPLATE
    assert (
        seen["rendered"]
        == "<|im_start|>user\ngood night sweet prince<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [m["role"] for m in seen["messages"]] == ["user", "assistant"]
    reply = seen["messages"][-1]["content"]
    assert isinstance(reply, str) and "<|im" not in reply


def test_prompt_completion_text_trains_on_the_completion_and_eos(tiny_base, tmp_path, caplog):
    out = tmp_path / "pc"
    train = write_jsonl(tmp_path / "pc.jsonl", prompt_completion_rows(120))
    run_training(parse_config(sft_args(tiny_base, out, train, 2)))
    assert "data: prompt-completion rows; chat template: none needed" in caplog.text
    assert "(answers only)" in caplog.text
    assert (out / "model.safetensors").is_file()


# --- the loss covers exactly the answers -------------------------------------------------------


def prepared(tmp_path, rows, *overrides):
    from hfmini.data.prepare import prepare_data

    tmp_path.mkdir(parents=True, exist_ok=True)

    base_args = tiny_run_args(
        tmp_path / "unused",
        1,
        "--train_file",
        str(write_jsonl(tmp_path / "d.jsonl", rows)),
        "--vocab_size",
        "300",
        "--block_size",
        "128",
        *overrides,
    )
    return prepare_data(parse_config(base_args))


def test_labels_are_the_answers_through_their_end_of_turn_token(tmp_path):
    data, tokenizer = prepared(tmp_path, conversation_rows(40), "--packing", "false")
    row = data.train_sequences[1]  # system, user, assistant, user, assistant
    ids, labels = row["input_ids"].tolist(), row["labels"].tolist()
    answer_text = tokenizer.decode(
        [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    )
    messages = conversation_rows(40)[1]["messages"]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert answer_text == "<|im_end|>".join(replies) + "<|im_end|>"
    # The rest is the prompt: system and user turns and the generation prompts.
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nYou are ROMEO.<|im_end|>\n")
    assert end_of_turn_token(tokenizer) == "<|im_end|>"


def test_full_sequence_loss_labels_every_token_but_the_first(tmp_path):
    data, _ = prepared(
        tmp_path, conversation_rows(40), "--packing", "false", "--assistant_only_loss", "false"
    )
    row = data.train_sequences[0]
    assert row["labels"][0] == IGNORE_INDEX
    assert torch.equal(row["labels"][1:], row["input_ids"][1:])


def zero_layer_gpt2(vocab_size: int):
    """A GPT-2 without blocks: each position's logits depend on its own token only, so a loss
    term exists exactly where a prediction is scored."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=0, n_embd=16, n_head=2, vocab_size=vocab_size, n_positions=128, embd_pdrop=0.0
        )
    )


@pytest.mark.parametrize("answers_only", [True, False])
def test_changed_prompt_tokens_leave_the_gradient_unchanged_with_answer_only_loss(
    tmp_path, answers_only
):
    """Prompt tokens (all but the last, which predicts the first answer token) are changed at
    random; with the answer-only loss the gradient is identical, with the full loss it is not."""
    data, tokenizer = prepared(
        tmp_path, prompt_completion_rows(40), "--completion_only_loss", str(answers_only).lower()
    )
    batch = pad_sequences([data.train_sequences[k] for k in range(4)], data.pad_id)
    changed = {k: v.clone() for k, v in batch.items()}
    # Where the answers are (the same rows prepared with the default answer-only labels).
    answers, _ = prepared(tmp_path / "answers", prompt_completion_rows(40))
    labels = pad_sequences([answers.train_sequences[k] for k in range(4)], data.pad_id)["labels"]
    answer = labels != IGNORE_INDEX
    # Prompt positions: not answers, and not the token just before an answer (it predicts one).
    before_answer = torch.zeros_like(answer)
    before_answer[:, :-1] = answer[:, 1:]
    prompt = ~answer & ~before_answer & (batch["input_ids"] != data.pad_id)
    assert prompt.sum() > 20
    generator = torch.Generator().manual_seed(1)
    random_ids = torch.randint(1, len(tokenizer), batch["input_ids"].shape, generator=generator)
    changed["input_ids"] = torch.where(prompt, random_ids, batch["input_ids"])
    if not answers_only:
        changed["labels"] = torch.where(prompt, random_ids, batch["labels"])

    def gradient(inputs):
        model = zero_layer_gpt2(len(tokenizer))
        model(**model_inputs(inputs), use_cache=False).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    same = torch.equal(gradient(batch), gradient(changed))
    assert same is answers_only


def test_the_loss_is_the_mean_answer_nll_of_a_real_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    data, tokenizer = prepared(tmp_path, conversation_rows(40))
    batch = pad_sequences([data.train_sequences[k] for k in range(3)], data.pad_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    ).eval()  # no dropout: both forwards must see the same network
    summed = next_token_loss(model, batch)
    loss = summed.total / summed.items  # the mean the training step divides out
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(logits[:, :-1][scored], targets[scored])
    assert loss.item() == pytest.approx(nll.item(), rel=1e-5)


# --- packing keeps examples apart --------------------------------------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_examples_do_not_attend_to_each_other(tmp_path, attention):
    """Each example's logits in a packed sequence equal those of the example run alone."""
    from transformers import GPT2Config, GPT2LMHeadModel

    data, tokenizer = prepared(tmp_path, conversation_rows(60))
    sequence = next(
        k for k in range(len(data.train_sequences)) if len(data.train_sequences.sequences[k]) >= 2
    )
    row = data.train_sequences[sequence]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    config._attn_implementation = attention
    model = GPT2LMHeadModel(config).eval()
    assert model.config._attn_implementation == attention
    with torch.no_grad():
        packed = model(
            input_ids=row["input_ids"][None],
            position_ids=row["position_ids"][None],
            use_cache=False,
        ).logits[0]
        start = 0
        for example in data.train_sequences.sequences[sequence]:
            length = int(data.train_sequences.lengths[example])
            alone = model(
                input_ids=row["input_ids"][None, start : start + length], use_cache=False
            ).logits[0]
            torch.testing.assert_close(packed[start : start + length], alone, rtol=1e-4, atol=1e-5)
            start += length


def test_best_fit_decreasing_fills_sequences_and_keeps_every_example():
    rng = random.Random(0)
    lengths = torch.tensor([rng.randint(5, 60) for _ in range(500)]).numpy()
    bins = pack_examples(lengths, 64, packing=True)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) <= 1.05 * lengths.sum() / 64 + 1
    assert pack_examples(lengths, 64, packing=False) == [[i] for i in range(500)]


def test_padding_is_never_a_label_and_keeps_counting_positions():
    rows = [
        {
            "input_ids": torch.tensor([5, 6, 7]),
            "labels": torch.tensor([-100, 6, 7]),
            "position_ids": torch.tensor([0, 1, 2]),
        },
        {
            "input_ids": torch.tensor([8]),
            "labels": torch.tensor([-100]),
            "position_ids": torch.tensor([0]),
        },
    ]
    batch = pad_sequences(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]


# --- bad rows: one line naming the file and the row -------------------------------------------


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
            "messages message 2 has role 'bot', not one of system, user, assistant, tool",
        ),
        ({"messages": []}, "the conversation is empty"),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "the conversation has no assistant message, so nothing to learn",
        ),
        ({"messages": "hello"}, "messages is not a list of messages"),
    ],
)
def test_a_bad_conversation_is_one_line_naming_file_and_row(capsys, tmp_path, bad_row, expected):
    rows = conversation_rows(20)
    rows.insert(6, bad_row)
    path = tmp_path / "chat.jsonl"
    # A row of another shape is written as JSON text so that datasets can type the column.
    lines = [json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = train_error(capsys, "--train_file", str(path), "--output_dir", str(tmp_path / "o"))
    if "is not a list" in expected:
        assert "could not read" in message or f"row 7: {expected}" in message
    else:
        assert message == f"error: train_file {path} row 7: {expected}: fix or remove the row"
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_prompt_and_completion_of_different_kinds_are_refused(capsys, tmp_path):
    rows = prompt_completion_rows(10)
    rows[3] = {"prompt": "a question\n", "completion": None}
    path = write_jsonl(tmp_path / "pc.jsonl", rows)
    message = train_error(capsys, "--train_file", str(path), "--output_dir", str(tmp_path / "o"))
    assert message.startswith(f"error: train_file {path} row 4: prompt and completion must be")
    assert "completion is missing" in message


def test_a_prompt_without_completion_column_is_refused(capsys, tmp_path):
    """Prompt-only rows are GRPO's data: without reward functions, the error names both ways."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}] * 10)
    message = train_error(capsys, "--train_file", str(path), "--output_dir", str(tmp_path / "o"))
    assert "the rows have a prompt and no answer" in message
    assert "--reward_funcs" in message and "completion" in message


# --- chat templates ----------------------------------------------------------------------------

ROLE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_tokenizer_trained_from_scratch_gets_the_template_tokens(tmp_path):
    _, tokenizer = prepared(tmp_path, conversation_rows(40))
    for token in ("<|im_start|>", "<|im_end|>"):
        assert token in tokenizer.all_special_tokens
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.decode(ids) == token
    text = "<|im_start|>user\nfair prince<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nfair prince\n"


@pytest.mark.parametrize("given_as", ["file", "string"])
def test_the_chat_template_option_takes_a_file_or_a_string(tmp_path, given_as):
    value = ROLE_TEMPLATE
    if given_as == "file":
        value = str(tmp_path / "chat.jinja")
        Path(value).write_text(ROLE_TEMPLATE, encoding="utf-8")
    data, tokenizer = prepared(tmp_path / "run", conversation_rows(40), "--chat_template", value)
    assert tokenizer.chat_template == ROLE_TEMPLATE
    assert end_of_turn_token(tokenizer) == "<|end|>"
    row = data.train_sequences[0]
    answer = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label >= 0]
    assert tokenizer.decode(answer).endswith("<|end|>")
    assert "<|assistant|>" not in tokenizer.decode(answer)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("no/such/template.jinja", "is neither a file nor a Jinja template"),
        ("{% for m in messages %}", "is not a valid Jinja template"),
    ],
)
def test_a_bad_chat_template_is_one_line(capsys, tmp_path, value, expected):
    path = write_jsonl(tmp_path / "c.jsonl", conversation_rows(10))
    message = train_error(
        capsys,
        "--train_file",
        str(path),
        "--chat_template",
        value,
        "--output_dir",
        str(tmp_path / "o"),
    )
    assert expected in message


def test_the_models_own_template_is_kept(tiny_base, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    base = tmp_path / "base-with-template"
    shutil.copytree(tiny_base, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = ROLE_TEMPLATE
    tokenizer.save_pretrained(base, save_jinja_files=False)
    from hfmini.data.prepare import prepare_data

    args = sft_args(base, tmp_path / "o", write_jsonl(tmp_path / "c.jsonl", conversation_rows(30)))
    _, loaded = prepare_data(parse_config(args))
    assert loaded.chat_template == ROLE_TEMPLATE
    assert {"<|user|>", "<|end|>", "<|assistant|>"} <= set(loaded.all_special_tokens)


def test_apply_template_adds_only_missing_tokens():
    from hfmini.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(iter([["to be or not to be"] * 5]), 280, 64)
    before = len(tokenizer)
    assert apply_template(tokenizer, None).startswith("hfmini's default")
    assert len(tokenizer) == before + 2
    assert apply_template(tokenizer, None) == "the model's own"
    assert len(tokenizer) == before + 2


# --- LoRA with new template tokens, and hfmini eval --------------------------------------------


def test_lora_trains_the_new_token_rows_only_and_eval_reproduces_the_report(
    tiny_base, tmp_path, capsys
):
    from conftest import assert_eval_reproduces_report
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    train = write_jsonl(tmp_path / "c.jsonl", conversation_rows(80))
    args = sft_args(tiny_base, out, train, 4, "--use_peft", "true", "--learning_rate", "0.01")
    run_training(parse_config(args))
    base = load_file(tiny_base / "model.safetensors")["transformer.wte.weight"]
    tuned = load_file(out / "model.safetensors")["transformer.wte.weight"]
    assert tuned.shape == (514, base.shape[1])
    assert torch.equal(tuned[:512], base)  # the frozen rows
    mean = base.mean(dim=0)
    assert not torch.allclose(tuned[512:], mean.expand(2, -1), atol=1e-4)  # trained from the mean
    assert_eval_reproduces_report(out, capsys)

    refused = train_error(
        capsys,
        *sft_args(tiny_base, tmp_path / "adapter", train, 2, "--use_peft", "true"),
        "--merge_adapters",
        "false",
    )
    assert "an adapter-only export would not load on the unchanged base model" in refused


def test_hub_datasets_and_parquet_files_take_the_same_formats(tmp_path, capsys):
    """dataset_name goes through load_dataset(name) as for a Hub id; Parquet through its builder."""
    from datasets import Dataset

    from hfmini.data.prepare import prepare_data

    folder = tmp_path / "chat_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", conversation_rows(40))
    write_jsonl(folder / "validation.jsonl", conversation_rows(6, seed=1))
    hub = ["--dataset_name", str(folder), "--vocab_size", "300", "--block_size", "128"]
    data, _ = prepare_data(parse_config(tiny_run_args(tmp_path / "o", 1, *hub)))
    assert data.format == "conversational" and len(data.eval_sequences.lengths) == 6

    parquet = tmp_path / "pc.parquet"
    Dataset.from_list(prompt_completion_rows(40)).to_parquet(parquet)
    local = ["--train_file", str(parquet), "--vocab_size", "300", "--block_size", "128"]
    data, _ = prepare_data(parse_config(tiny_run_args(tmp_path / "o", 1, *local)))
    assert data.format == "prompt_completion" and len(data.train_sequences.lengths) == 38

    rows = conversation_rows(40)
    rows[12]["messages"][0]["role"] = "narrator"
    write_jsonl(folder / "train.jsonl", rows)
    message = train_error(capsys, *hub, "--output_dir", str(tmp_path / "o2"))
    assert (
        f"dataset {folder} (train split) row 13: messages message 1 has role 'narrator'" in message
    )


def test_resume_on_conversations_is_exact(tiny_base, tmp_path):
    """The sequences, their order and the labels come back exactly after a resume."""
    import shutil

    from safetensors.torch import load_file

    train = write_jsonl(tmp_path / "c.jsonl", conversation_rows(80))
    run = ("--per_device_train_batch_size", "4", "--logging_steps", "1", "--dropout", "0.1")
    full, saved, resumed = tmp_path / "full", tmp_path / "saved", tmp_path / "resumed"
    run_training(parse_config(sft_args(tiny_base, full, train, 6, *run)))
    run_training(parse_config(sft_args(tiny_base, saved, train, 6, *run, "--save_steps", "3")))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(saved / "checkpoints" / "step-3", resumed / "checkpoints" / "step-3")
    resume = ("--save_steps", "3", "--resume_from_checkpoint", "latest")
    run_training(parse_config(sft_args(tiny_base, resumed, train, 6, *run, *resume)))

    def losses(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    assert sorted(losses(resumed)) == [4, 5, 6]
    assert {s: losses(resumed)[s] for s in (4, 5, 6)} == pytest.approx(
        {s: losses(full)[s] for s in (4, 5, 6)}, rel=1e-5
    )
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


# --- issue 27: hostile rows and templates are one line --------------------------------------


def test_conversations_whose_assistant_turns_are_all_empty_are_refused(capsys, tmp_path):
    rows = conversation_rows(10)
    rows[2] = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    }
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    message = train_error(capsys, "--train_file", str(path), "--output_dir", str(tmp_path / "o"))
    assert message == (
        f"error: train_file {path} row 3: every assistant message is empty, so nothing to learn: "
        "fix or remove the row"
    )


def test_a_file_mixing_prompt_completion_and_messages_names_the_mix(capsys, tmp_path):
    rows = conversation_rows(10)
    rows.insert(4, {"prompt": "a question\n", "completion": "an answer"})
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    message = train_error(capsys, "--train_file", str(path), "--output_dir", str(tmp_path / "o"))
    assert f"train_file {path} row 5: this row is prompt-completion but the data also has " in (
        message
    )
    assert "'messages' rows: use one format" in message and "empty" not in message


def test_a_chat_template_that_raises_or_does_not_parse_is_one_line(capsys, tmp_path):
    from hfmini.models.tokenizer import train_tokenizer

    refuses_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('system messages are not supported') }}{% endif %}"
        "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    path = write_jsonl(tmp_path / "c.jsonl", conversation_rows(10))
    out = str(tmp_path / "o")
    argv = ("--train_file", str(path), "--chat_template", refuses_system, "--output_dir", out)
    message = train_error(capsys, *argv)
    assert "the chat template fails on a conversation of roles (system, user, assistant" in message
    assert "system messages are not supported: fix chat_template" in message
    # A model's own template that is not valid Jinja (the option's own is checked in config).
    tokenizer = train_tokenizer(iter(["some text to learn"]), 300, 64)
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }"
    with pytest.raises(HfminiError, match="the chat template from the model's own is not valid"):
        apply_template(tokenizer, None)


def test_a_model_folder_without_a_tokenizer_says_so(tmp_path):
    from hfmini.models.tokenizer import get_tokenizer

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(HfminiError, match=f"{tmp_path} has no tokenizer .*copy the tokenizer"):
        get_tokenizer(str(tmp_path))
