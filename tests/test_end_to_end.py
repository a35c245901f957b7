"""The real commands, in fresh processes, the way a user runs them."""

import json
import os
import subprocess
import sys

import pytest
from conftest import BIN, REPO, TINY_RECIPE, TRAIN_SCRIPT, launch_command, write_lines

GPT2_SMALL = REPO / "recipes" / "gpt2-small" / "config.yaml"
# GPT-2 small's parameters with the input and output embeddings tied (counted once): the "124M".
GPT2_124M_PARAMETERS = 124_439_808

LOAD_WITHOUT_HFMINI = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
out = pipeline("text-generation", model=path)("ROMEO:", max_new_tokens=12)
assert out[0]["generated_text"].startswith("ROMEO:"), out
assert "hfmini" not in sys.modules
print("LOADED", type(model).__name__, len(tokenizer))
"""


def run(cmd, cwd=REPO, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "model"
    result = run(
        launch_command("--config", str(TINY_RECIPE), "--output_dir", str(out), "--max_steps", "10")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_accelerate_launch_trains_and_plain_transformers_loads(trained, tmp_path):
    out, result = trained
    assert "parameters" in result.stderr and "tokens per optimizer step" in result.stderr
    loaded = run([sys.executable, "-c", LOAD_WITHOUT_HFMINI, str(out)], cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "LOADED GPT2LMHeadModel 512" in loaded.stdout


@pytest.mark.slow
def test_hfmini_generate_streams(trained):
    out, _ = trained
    result = run(
        [
            str(BIN / "hfmini"),
            "generate",
            str(out),
            "--prompt",
            "ROMEO:",
            "--max_new_tokens",
            "30",
            "--seed",
            "0",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > len("ROMEO:") + 5


@pytest.mark.slow
def test_hfmini_eval_prints_json_last(trained, tmp_path):
    out, _ = trained
    result = run([str(BIN / "hfmini"), "eval", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    recorded = json.loads((out / "eval_results.json").read_text())
    assert metrics["bits_per_byte"] == pytest.approx(recorded["bits_per_byte"], rel=1e-6)
    val = tmp_path / "v.txt"
    val.write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 20)
    other = run([str(BIN / "hfmini"), "eval", str(out), "--validation_file", str(val)])
    assert other.returncode == 0, other.stderr[-2000:]
    assert set(json.loads(other.stdout.strip().splitlines()[-1])) >= {
        "eval_loss",
        "perplexity",
        "bits_per_byte",
    }


@pytest.mark.slow
def test_hfmini_train_is_the_same_entry_point(tmp_path):
    result = run(
        [
            str(BIN / "hfmini"),
            "train",
            "--config",
            str(TINY_RECIPE),
            "--output_dir",
            str(tmp_path / "o"),
            "--max_steps",
            "2",
            "--eval_steps",
            "0",
            "--sample_max_new_tokens",
            "4",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_errors_are_one_line_without_traceback(tmp_path):
    result = run(
        [sys.executable, str(TRAIN_SCRIPT), "--config", str(TINY_RECIPE), "--learning_rte", "0.1"]
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: unknown config key 'learning_rte'")
    )


def gpt2_sized_tokenizer(folder):
    """A stand-in for GPT-2's tokenizer, which an offline test cannot download, of its size: a
    byte-level BPE of 256 byte symbols, 50,000 merges and <|endoftext|> as token 50,256 (bos, eos
    and unk; no pad token, as GPT-2's). Its merges are byte pairs in a fixed order, not GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # a printable stand-in for each byte
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    merges = [(a, b) for a in symbols for b in symbols][:50_000]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=eos
    )
    assert len(tokenizer) == 50_257 and tokenizer.eos_token_id == 50_256
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_gpt2_small_recipe_trains_gpt2_124m(tmp_path):
    """The GPT-2 124M recipe as shipped, under `accelerate launch` (one CPU process here), with only
    what needs the network, a GPU or hours replaced: local text for FineWeb-Edu, a tokenizer of
    GPT-2's size for GPT-2's, fp32 and eager for bf16 and compile, two steps of one block. The
    model it exports has GPT-2 124M's shape and exact parameter count and loads without hfmini."""
    out = tmp_path / "gpt2-small"
    result = run(
        launch_command(
            "--config",
            str(GPT2_SMALL),
            "--dataset_name",
            "",  # unset: the local files below instead of the Hub dataset
            "--train_file",
            str(write_lines(tmp_path / "train.txt", 400)),
            "--validation_file",
            str(write_lines(tmp_path / "val.txt", 50, seed=4)),
            "--preprocessing_num_workers",
            "1",
            "--tokenizer_name",
            str(gpt2_sized_tokenizer(tmp_path / "tokenizer")),
            "--per_device_train_batch_size",
            "1",
            "--gradient_accumulation_steps",
            "1",
            "--max_steps",
            "2",
            "--mixed_precision",
            "no",
            "--torch_compile",
            "false",
            "--logging_steps",
            "1",
            "--eval_steps",
            "0",
            "--save_steps",
            "0",
            "--report_to",
            "none",
            "--sample_max_new_tokens",
            "4",
            "--output_dir",
            str(out),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = "12 layers, 12 heads, 768 wide, context 1024, vocabulary 50257: 124.44M parameters"
    assert logged in result.stderr
    config = json.loads((out / "config.json").read_text())
    shape = [config[k] for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")]
    assert shape == [12, 12, 768, 1024, 50_257]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["parameters"] == GPT2_124M_PARAMETERS and results["step"] == 2
    assert results["tokens_seen"] == 2 * 1024
    loaded = run([sys.executable, "-c", LOAD_WITHOUT_HFMINI, str(out)], cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "LOADED GPT2LMHeadModel 50257" in loaded.stdout
