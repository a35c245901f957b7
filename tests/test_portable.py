"""A folder hfmini writes opens in transformers 4.x as well as 5.x, and in llama.cpp's converter.

The slow test runs transformers 4.57 itself: installed once (pip --target, no dependencies: torch,
numpy and safetensors come from this environment) into a cache folder kept between runs, and put
first on PYTHONPATH of a child process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run_args
from test_sft import conversation_rows, sft_args, write_jsonl

from hfmini.config import parse_config
from hfmini.models.tokenizer import portable_tokenizer_config, save_tokenizer, train_tokenizer
from hfmini.training.trainer import run_training

OLD_TRANSFORMERS = ("transformers==4.57.6", "huggingface_hub==0.36.2", "tokenizers==0.22.2")
SIDE_ENV = Path(
    os.environ.get("HFMINI_TEST_CACHE", Path.home() / ".cache" / "hfmini-test"),
    "transformers-4.57.6",
)


def test_tokenizer_config_names_only_what_both_versions_read(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(iter(["thou art the king, my lord\n"] * 50), 300, 64)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    save_tokenizer(tokenizer, tmp_path)

    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not {"backend", "is_local", "local_files_only", "extra_special_tokens"} & set(config)
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert config["chat_template"] == tokenizer.chat_template
    assert not (tmp_path / "chat_template.jinja").exists()  # one place, read by both versions

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "my lord<|im_start|> thou<|endoftext|>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == "<|im_start|>hi<|im_end|>"


def test_portable_config_leaves_other_tokenizer_classes_and_mappings_alone():
    config = {"tokenizer_class": "LlamaTokenizer", "extra_special_tokens": {"image": "<img>"}}
    assert portable_tokenizer_config(config) == config


def test_config_names_the_context_as_llama_cpp_reads_it(tiny_base):
    config = json.loads((tiny_base / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"]


def old_transformers_env() -> Path:
    """transformers 4.57.6 in a folder of its own, installed on first use (about 15 MB)."""
    if not (SIDE_ENV / "transformers" / "__init__.py").is_file():
        SIDE_ENV.parent.mkdir(parents=True, exist_ok=True)
        partial = SIDE_ENV.with_name(SIDE_ENV.name + ".partial")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        done = subprocess.run(
            [*command, "--target", str(partial), *OLD_TRANSFORMERS],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"could not install transformers 4.57.6: {done.stderr.strip()[-300:]}")
        partial.rename(SIDE_ENV)  # whole or not at all: an interrupted install is not reused
    return SIDE_ENV


GREEDY = r"""
import json, sys
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
out = {"version": transformers.__version__, "class": type(tokenizer).__name__, "tokens": [],
       "rendered": []}
for prompt in prompts:
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)[0, ids.shape[1]:]
    out["tokens"].append(new.tolist())
    out["rendered"].append(prompt)
print(json.dumps(out))
"""


def greedy_tokens(folder: Path, prompts: list, pythonpath: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath or ""}
    done = subprocess.run(
        [sys.executable, "-c", GREEDY, str(folder), json.dumps(prompts)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # installs transformers 4.57 once (cached), trains two tiny models
def test_transformers_4_57_loads_the_folder_and_generates_the_same_tokens(tiny_base, tmp_path):
    side = old_transformers_env()
    base = tmp_path / "base"
    run_training(parse_config(tiny_run_args(base, 40)))
    chat = tmp_path / "chat"
    rows = conversation_rows(60)
    run_training(parse_config(sft_args(base, chat, write_jsonl(tmp_path / "c.jsonl", rows))))

    cases = [
        (base, ["ROMEO.\n", "To be, or not to be", "My lord, "]),
        (chat, [[{"role": "user", "content": "good night sweet prince"}], "thou art"]),
    ]
    for folder, prompts in cases:
        new = greedy_tokens(folder, prompts, pythonpath=None)
        old = greedy_tokens(folder, prompts, pythonpath=str(side))
        assert (new["version"][0], old["version"]) == ("5", "4.57.6")
        assert old["class"] == "PreTrainedTokenizerFast"
        assert all(len(tokens) == 20 for tokens in new["tokens"])
        assert old["tokens"] == new["tokens"]
        assert old["rendered"] == new["rendered"]  # the chat template, rendered alike
    assert new["rendered"][0].startswith("<|im_start|>user\ngood night sweet prince")
