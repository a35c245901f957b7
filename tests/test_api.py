"""The Python API (`from hfmini import ...`): the README's example as a user runs it, and the
promise that it is the command line's config, checks and results, from Python."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_RECIPE

import hfmini
from hfmini.config import parse_config


def readme_python_example() -> str:
    """The Python block under the README's "From Python" heading."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "README.md: no ```python block under '## From Python'"
    return match.group(1)


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
def test_the_readme_example_runs_as_shown_and_its_figures_agree(tmp_path):
    """The example, copied into a file and run by a fresh Python in an empty folder: it trains,
    the saved folder rescores to the figure training reported, and both hfmini's sampler and
    transformers' pipeline (no hfmini) continue the prompt."""
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 12  # "a ten-line example"
    (tmp_path / "example.py").write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    reported = float(re.search(r"bits per byte: ([\d.]+)", out).group(1))
    rescored = float(re.search(r"rescored: ([\d.]+)", out).group(1))
    assert rescored == pytest.approx(reported, abs=1e-3)  # printed to 3 decimals
    saved = json.loads(next(tmp_path.glob("output/*/eval_results.json")).read_text())
    assert saved["bits_per_byte"] == pytest.approx(reported, abs=1e-3)
    assert 0 < reported < 8  # bits per byte of English text: below a byte's 8 bits
    after_prompt = out.split("ROMEO:")
    assert len(after_prompt) >= 3  # hfmini's sample, then the pipeline's, each after the prompt
    assert after_prompt[-1].strip(), "the pipeline generated nothing"


def test_make_config_is_the_yaml_and_command_line_config():
    """Same dataclasses, same values as `--config FILE --key value`, whatever the value types."""
    from_python = hfmini.make_config(TINY_RECIPE, max_steps=7, learning_rate=0.01, packing=False)
    from_cli = parse_config(
        ["--config", str(TINY_RECIPE), "--max_steps", "7", "--learning_rate", "0.01"]
        + ["--packing", "false"]
    )
    assert isinstance(from_python, hfmini.Config)
    assert dataclasses.asdict(from_python) == dataclasses.asdict(from_cli)
    listed = hfmini.make_config(sample_prompts=["A:", "B:"], train_file=[Path("x.txt")])
    assert listed.train.sample_prompts == ["A:", "B:"]
    assert listed.data.train_file == ["x.txt"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"max_step": 3},
            "unknown config key 'max_step' passed to make_config; did you mean 'max_steps'?",
        ),
        ({"max_steps": "many"}, "invalid int value: 'many'"),
        ({"block_size": 1}, "block_size must be at least 2"),
        ({"model_size": "huge"}, "model_size"),
    ],
)
def test_make_config_refuses_what_the_command_line_refuses(values, message):
    with pytest.raises(hfmini.HfminiError, match=re.escape(message)):
        hfmini.make_config(**values)


def test_build_model_is_a_fresh_gpt2_of_the_config_and_refuses_fine_tuning(tmp_path):
    from transformers import GPT2LMHeadModel

    from hfmini.models.tokenizer import train_tokenizer

    config = hfmini.make_config(TINY_RECIPE)
    tokenizer = train_tokenizer(iter(["to be or not to be"] * 50), 300, 64)
    model = hfmini.build_model(config, tokenizer)
    assert isinstance(model, GPT2LMHeadModel)
    n_layer, n_head, n_embd = config.model.shape()
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (
        n_layer,
        n_head,
        n_embd,
    )
    assert model.config.n_positions == config.context_length()
    assert model.config.vocab_size == len(tokenizer)
    fine_tune = hfmini.make_config(model_name_or_path=str(tmp_path))
    with pytest.raises(hfmini.HfminiError, match="load it with load_model instead"):
        hfmini.build_model(fine_tune, tokenizer)


def test_import_hfmini_stays_light_and_names_are_the_functions():
    """`import hfmini` loads no torch (the CLI's --help is instant); after the stage modules are
    imported, `hfmini.train` and `hfmini.generate` are still the API's functions."""
    light = subprocess.run(
        [sys.executable, "-c", "import sys, hfmini; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert light.stdout.strip() == "False"
    import hfmini.models.sampling  # noqa: F401
    import hfmini.training.trainer  # noqa: F401
    from hfmini import api

    for name in hfmini.__all__:
        if name != "__version__":
            assert getattr(hfmini, name) is getattr(api, name), name
    with pytest.raises(AttributeError):
        hfmini.run_training  # noqa: B018 (private stages are not part of the API)
