"""Test set-up: offline, and a private Hugging Face cache per test session.

The cache lives in a temporary folder so that cache-hit tests start cold and nothing a developer
has cached leaks into CI results. Environment variables are set before datasets is imported.
"""

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hfmini-test-hf-")
os.environ.pop("HF_DATASETS_CACHE", None)

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny" / "config.yaml"
TINY_FINETUNE = REPO / "recipes" / "tiny" / "finetune.yaml"
TRAIN_SCRIPT = REPO / "recipes" / "train.py"
BIN = Path(sys.executable).parent


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, as a fresh process would: its precision is fixed
    by the first Accelerator of a process, and tests train with several in one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


def tiny_run_args(
    output_dir: Path, max_steps: int = 4, *overrides: str, finetune_from: Path | None = None
) -> list[str]:
    """The tiny recipe for a few steps into `output_dir`, with no evaluation before the final one
    and 4-token samples; `overrides` (`--key`, `value`, ...) come last and win.

    `finetune_from`: the tiny fine-tuning recipe from that model instead. A fine-tuned model
    brings its own vocabulary, so a `--vocab_size` override (as in `small_data`) is dropped.
    """
    start = ["--config", str(TINY_RECIPE)]
    if finetune_from is not None:
        start = ["--config", str(TINY_FINETUNE), "--model_name_or_path", str(finetune_from)]
        at = [i for i, arg in enumerate(overrides) if arg == "--vocab_size"]
        overrides = tuple(
            a for i, a in enumerate(overrides) if not any(i in (j, j + 1) for j in at)
        )
    return [
        *start,
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(max_steps),
        "--eval_steps",
        "0",
        "--sample_max_new_tokens",
        "4",
        *overrides,
    ]


def assert_eval_reproduces_report(folder: Path, capsys, *eval_args: str) -> None:
    """`hfmini eval` on an exported folder scores the bits per byte its training run reported."""
    import json

    from hfmini.cli import main as cli_main

    reported = json.loads((folder / "eval_results.json").read_text())
    capsys.readouterr()
    assert cli_main(["eval", str(folder), *eval_args]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reported["bits_per_byte"] == pytest.approx(rescored["bits_per_byte"], rel=1e-5)


@pytest.fixture
def tiny_args(tmp_path):
    """Command-line arguments for a seconds-long run on the built-in corpus into tmp_path/out."""
    return tiny_run_args(
        tmp_path / "out",
        6,
        "--logging_steps",
        "2",
        "--max_eval_samples",
        "8",
        "--sample_max_new_tokens",
        "8",
    )


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A model to fine-tune: the tiny recipe trained for a few steps, exported once per session."""
    from hfmini.config import parse_config
    from hfmini.training.trainer import run_training

    out = tmp_path_factory.mktemp("base") / "tiny"
    run_training(parse_config(tiny_run_args(out, 6)))
    reset_accelerate()
    return out


def write_lines(path: Path, n_lines: int, seed: int = 0) -> Path:
    """A deterministic text file of simple verse-like lines with some non-ASCII characters."""
    words = [
        "thou",
        "art",
        "the",
        "night",
        "über",
        "café",
        "love",
        "sword",
        "king",
        "señor",
        "and",
        "in",
        "my",
        "heart",
        "日本",
        "fair",
        "foul",
    ]
    lines = []
    for i in range(n_lines):
        k = (i * 7 + seed) % len(words)
        lines.append(" ".join(words[(k + j * 3) % len(words)] for j in range(6 + i % 5)))
        if i % 9 == 8:
            lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real small filesystem at `path` (a full disk, or a read-only one), unmounted afterwards.
    Skips the test where mounting is not permitted (it needs root, as CI has)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def run_command(command: list[str]) -> subprocess.CompletedProcess:
    """A command from the repository root, its output captured as text, unbuffered, with ten
    minutes at most."""
    return subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def torchrun_command(*args: str, processes: int = 2) -> list[str]:
    """The training script as `processes` gloo data-parallel processes on this machine."""
    return [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(TRAIN_SCRIPT),
        *args,
    ]


def launch_command(*args: str) -> list[str]:
    """The training script under `accelerate launch -q`, one process on the CPU, as `make train`
    ran it before it dropped the launcher (people still type it)."""
    return [
        str(BIN / "accelerate"),
        "launch",
        "-q",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(TRAIN_SCRIPT),
        *args,
    ]


def train_error(capsys, *argv: str) -> str:
    """`recipes/train.py`'s entry point must fail with one line, exit 2, no traceback; returns
    the line. The tiny recipe is used unless argv names a --config."""
    from hfmini.training import trainer as train_module

    config = [] if "--config" in argv else ["--config", str(TINY_RECIPE)]
    code = train_module.main([*config, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture
def small_data(tmp_path) -> list[str]:
    """Arguments for local text small enough that runs take seconds and epochs are short."""
    text = write_lines(tmp_path / "train.txt", 150)
    val = write_lines(tmp_path / "val.txt", 60, seed=4)
    return [
        "--train_file",
        str(text),
        "--validation_file",
        str(val),
        "--vocab_size",
        "300",
        "--block_size",
        "32",
    ]
