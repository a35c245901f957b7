"""The walkthrough notebook: it runs top to bottom on a fresh kernel (shortened by its own switch,
HFMINI_NOTEBOOK_QUICK=1), it uses only the public API, and the copy in git shows the outputs of a
real run, so that it reads well where notebooks are rendered."""

import ast
import re
import time

import pytest
from conftest import REPO

import hfmini

NOTEBOOK = REPO / "notebooks" / "gpt2_from_scratch.ipynb"
SECTIONS = [
    "Installation and imports",
    "Model configuration",
    "Data loading",
    "Model creation",
    "Training with AdamW",
    "Evaluation and the loss curve",
    "Text generation",
    "Saving and reloading",
]

nbformat = pytest.importorskip(
    "nbformat", reason="the notebook extra: pip install -e '.[notebook]'"
)


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def text_of(cell) -> str:
    """Everything a code cell printed, streams and plain-text results alike."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def cell_printing(notebook, pattern: str):
    """The first code cell whose output matches `pattern`, and the match."""
    for cell in code_cells(notebook):
        match = re.search(pattern, text_of(cell))
        if match:
            return cell, match
    raise AssertionError(f"no cell printed {pattern!r}")


def test_the_sections_are_the_seven_of_gpt2_from_scratch_in_order():
    headings = [
        line.lstrip("# ").split(". ", 1)[-1]
        for cell in read_notebook().cells
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("## ")
    ]
    assert [h for h in headings if h in SECTIONS] == SECTIONS


def test_the_notebook_uses_only_the_public_api():
    """Every import from hfmini is `from hfmini import <name in hfmini.__all__>`; no private name
    (`hfmini.x._y`) or stage module is reached into."""
    imported = []
    for cell in code_cells(read_notebook()):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfmini"):
                assert node.module == "hfmini", f"imports from {node.module}: use `from hfmini`"
                imported += [alias.name for alias in node.names]
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "hfmini" or not alias.name.startswith("hfmini"), alias.name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "hfmini":
                    assert node.attr in hfmini.__all__, f"hfmini.{node.attr} is not public"
    assert imported and set(imported) <= set(hfmini.__all__), set(imported) - set(hfmini.__all__)


def test_the_committed_copy_shows_a_real_run():
    """In order, no errors, a loss curve drawn inline, and the output of full training (more
    steps than the quick switch's), with sampled text and the reload check."""
    notebook = read_notebook()
    cells = code_cells(notebook)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    assert all(cell.outputs for cell in cells), "a code cell without output"
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for cell in cells for o in cell.outputs)
    _, steps = cell_printing(notebook, r"([\d,]+) optimizer steps")
    assert int(steps.group(1).replace(",", "")) > 100, "the saved outputs are of a quick run"
    _, figures = cell_printing(notebook, r"([\d.]+) bits per byte")
    assert 1.0 < float(figures.group(1)) < 3.0
    cell_printing(notebook, r"--- greedy\nROMEO:\s*\S")
    cell_printing(notebook, r"the copy's logits equal the original's: True")


@pytest.mark.slow
def test_the_notebook_runs_on_a_fresh_kernel(tmp_path, monkeypatch):
    """Executed as a reader would, in a folder of its own, shortened by the notebook's switch."""
    from nbclient import NotebookClient

    monkeypatch.setenv("HFMINI_NOTEBOOK_QUICK", "1")  # the kernel inherits the environment
    notebook = read_notebook()
    started = time.perf_counter()
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    print(f"the notebook ran in {time.perf_counter() - started:.0f} s (HFMINI_NOTEBOOK_QUICK=1)")
    _, steps = cell_printing(notebook, r"([\d,]+) optimizer steps")
    assert steps.group(1) == "20"
    assert any("image/png" in o.get("data", {}) for c in code_cells(notebook) for o in c.outputs)
    cell_printing(notebook, r"the copy's logits equal the original's: True")
    assert (tmp_path / "output" / "gpt2-from-scratch" / "model.safetensors").is_file()
