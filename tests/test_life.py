"""`make life` (hfmini.life): pretraining, SFT, DPO and GRPO in a row, each from the last, and the
page of what each stage did; run here in its quick form, through the make target."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

from hfmini.life import STAGES, _prompt_text, stage_argv

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


def test_each_stage_starts_from_the_last_and_reads_its_own_data(tmp_path):
    previous = None
    for stage in STAGES:
        argv = stage_argv(stage, tmp_path, previous, quick=True)
        assert argv[argv.index("--output_dir") + 1] == str(tmp_path / stage.name)
        if previous is None:
            assert "--model_name_or_path" not in argv and "--train_file" not in argv
        else:
            assert argv[argv.index("--model_name_or_path") + 1] == str(previous)
            train = argv[argv.index("--train_file") + 1]
            assert train == str(tmp_path / "data" / stage.data / "train.jsonl")
        previous = tmp_path / stage.name
    # The GRPO recipe's reward files are found from any folder (a notebook's).
    grpo = stage_argv(STAGES[-1], tmp_path, previous, quick=False)
    specs = grpo[grpo.index("--reward_funcs") + 1 : grpo.index("--reward_funcs") + 4]
    assert all(
        s.startswith(str(REPO / "recipes" / "shakespeare-grpo" / "rewards.py:")) for s in specs
    )


def test_a_model_without_a_chat_template_reads_the_plays_layout():
    class Plain:
        chat_template = None

    prompt = [
        {"role": "system", "content": "You are VIOLA in Twelfth Night."},
        {"role": "user", "content": "What country, friends, is this?"},
    ]
    assert _prompt_text(Plain(), prompt) == ("What country, friends, is this?\n\nVIOLA:\n", False)


@pytest.mark.slow
def test_make_life_quick_runs_every_stage_and_writes_the_page(tmp_path):
    """The command the README shows, in its quick form: four models that transformers loads,
    and a page with every stage's figures and answers."""
    root = tmp_path / "life"
    env = os.environ | OFFLINE
    done = subprocess.run(
        ["make", "-s", "life", f"ARGS=--quick --output_dir {root}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = (root / "README.md").read_text()
    for stage in STAGES:
        assert f"| {stage.name} | " in page
    figures = json.loads((root / "life.json").read_text())["figures"]
    for stage in STAGES:
        f = figures[stage.name]
        assert 0 < f["bits_per_byte"] < 20 and 0 <= f["ranking_accuracy"] <= 1
        assert math.isfinite(f["reward"]) and len(f["answers"]) == 2
    # DPO's reward accuracy is against its reference, the SFT model: none before DPO.
    assert figures["pretrain"]["reward_accuracy"] is None is figures["sft"]["reward_accuracy"]
    assert all(0 <= figures[s]["reward_accuracy"] <= 1 for s in ("dpo", "grpo"))
    card = (root / "grpo" / "README.md").read_text()
    assert "GRPO" in card and "scansion" in card
    code = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "[AutoModelForCausalLM.from_pretrained(p) and AutoTokenizer.from_pretrained(p) "
        "for p in sys.argv[1:]]; print('ok')"
    )
    folders = [str(root / s.name) for s in STAGES]
    loaded = subprocess.run(
        [sys.executable, "-c", code, *folders], env=env, capture_output=True, text=True
    )
    assert loaded.stdout.strip() == "ok", loaded.stderr[-2000:]

    # The GRPO recipe's table, on these models: rewards before and after, and the samples.
    compare = subprocess.run(
        [sys.executable, "recipes/shakespeare-grpo/compare.py", str(root), "--before", "sft"]
        + ["--after", "grpo", "--data", str(root / "data" / "grpo" / "validation.jsonl")]
        + ["--prompts", "2", "--completions", "2", "--samples", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert "| scansion | before: sft |" in compare.stdout and "| known_words | " in compare.stdout
    assert "## Held-out prompts" in compare.stdout

    # Again: every stage's model exists, so none is trained again; the page is measured anew.
    again = subprocess.run(
        ["make", "-s", "life", f"ARGS=--quick --output_dir {root}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("exists, kept") == len(STAGES)


def test_a_bad_override_is_one_line_and_nothing_is_trained(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hfmini.life", "--output_dir", str(tmp_path), "--learning_rat", "1"],
        cwd=REPO,
        env=os.environ | OFFLINE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "learning_rat" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "pretrain").exists()


NOTEBOOK = REPO / "notebooks" / "life_of_a_small_llm.ipynb"


def _printed(notebook) -> str:
    """Everything the notebook's code cells printed or displayed as text or Markdown."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "data" in output:
                parts.append(output.data.get("text/markdown", output.data.get("text/plain", "")))
    return "\n".join(parts)


def test_the_committed_notebook_shows_a_full_run():
    """Outputs in order and without errors, of a full run (not the quick switch's): the GRPO
    stage's page row and the recipe's own step count."""
    nbformat = pytest.importorskip("nbformat", reason="the notebook extra")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    printed = _printed(notebook)
    assert "full run" in printed
    for stage in STAGES:
        assert f"| {stage.name} | " in printed


@pytest.mark.slow
def test_the_notebook_runs_on_a_fresh_kernel_in_its_quick_form(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the notebook extra")
    from nbclient import NotebookClient

    monkeypatch.setenv("HFMINI_NOTEBOOK_QUICK", "1")  # the kernel inherits the environment
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    printed = _printed(notebook)
    assert "quick run" in printed
    for stage in STAGES:
        assert (tmp_path / "output" / "life" / stage.name / "model.safetensors").is_file()
        assert f"| {stage.name} | " in printed
    assert "assistant →" in printed
