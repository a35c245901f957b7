"""`hfmini export --format onnx` and `hfmini playground --static`: the exported graph decodes as the
PyTorch model does, in onnxruntime and in Chromium through transformers.js, with no network."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'hfmini[onnx]'")
from conftest import write_lines

from hfmini.cli import main as cli_main
from hfmini.outputs.onnx import export_onnx, io_names
from hfmini.serving.static_page import (
    CDN_LIBRARY,
    JS_DIR_VARIABLE,
    LIBRARY_FILE,
    TRANSFORMERS_JS_VERSION,
    WASM_FILES,
    write_static_page,
)

PROMPTS = ("thou art", "the king and", "my heart in the night")
NEW_TOKENS = 20


def _tiny_model(tokenizer, model_type: str = "gpt2"):
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    if model_type == "gpt2":  # initializer_range 0.1: logits far enough apart that greedy is
        # decided by the model, not by float rounding (0.02's gaps can come within 1e-4)
        size = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1)
    else:
        size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
        size |= dict(num_attention_heads=4, num_key_value_heads=4)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **size, **ids)
    return AutoModelForCausalLM.from_config(config).eval()


def _saved_model(folder: Path, model_type: str = "gpt2") -> Path:
    """A random tiny model with a tokenizer trained on a few lines, saved as hfmini saves runs."""
    import torch

    from hfmini.models.tokenizer import train_tokenizer
    from hfmini.outputs.export import save_model

    lines = write_lines(folder.parent / f"{folder.name}.txt", 80).read_text().splitlines()
    tokenizer = train_tokenizer(iter(lines), vocab_size=300, model_max_length=64)
    torch.manual_seed(0)
    return save_model(_tiny_model(tokenizer, model_type), tokenizer, folder)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny GPT-2 folder with onnx/model.onnx, exported through the command (tens of seconds
    on two busy cores: the dynamo exporter traces and optimizes the graph)."""
    folder = _saved_model(tmp_path_factory.mktemp("onnx") / "tiny")
    started = time.perf_counter()
    assert cli_main(["export", str(folder), "--format", "onnx"]) == 0
    print(f"\nexport: {time.perf_counter() - started:.1f} s")
    return folder


def onnx_greedy(session, prompt_ids: list[int], new_tokens: int, eos: int):
    """Greedy decoding in onnxruntime as transformers.js does it: the prompt against an empty
    past (length 0), then one token at a time against the presents; stops at eos as generate
    does. Returns (new ids, the logits each step chose from)."""
    import numpy as np

    shapes = {i.name: i.shape for i in session.get_inputs()}
    past = {
        name: np.zeros((1, shape[1], 0, shape[3]), np.float32)  # (batch, heads, 0, head_dim)
        for name, shape in shapes.items()
        if name.startswith("past_key_values.")
    }
    step_ids, done, chosen_from = list(prompt_ids), 0, []
    outputs = [o.name for o in session.get_outputs()]
    ids: list[int] = []
    while len(ids) < new_tokens:
        length = len(step_ids)
        feed = {
            "input_ids": np.array([step_ids], np.int64),
            "attention_mask": np.ones((1, done + length), np.int64),
            "position_ids": np.arange(done, done + length, dtype=np.int64)[None],
            **past,
        }
        got = dict(zip(outputs, session.run(None, feed), strict=True))
        logits = got["logits"][0, -1]
        chosen_from.append(logits)
        next_id = int(logits.argmax())
        ids.append(next_id)
        if next_id == eos:
            break
        past = {
            n.replace("present.", "past_key_values."): t for n, t in got.items() if n != "logits"
        }
        done, step_ids = done + length, [next_id]
    return ids, chosen_from


def test_the_graph_has_the_names_and_axes_transformers_js_feeds(exported):
    import onnx

    graph = onnx.load(exported / "onnx" / "model.onnx").graph
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    vocab = json.loads((exported / "config.json").read_text())["vocab_size"]
    inputs, outputs = io_names(2)
    assert [v.name for v in graph.input] == inputs
    assert [v.name for v in graph.output] == outputs
    assert shapes["input_ids"] == ["batch_size", "sequence_length"]
    # transformers.js sizes the first, empty past from these: "batch_size" is the prompt's batch,
    # the numbers stay, any other name is 0.
    assert shapes["past_key_values.1.value"] == ["batch_size", 4, "past_sequence_length", 8]
    assert shapes["logits"] == ["batch_size", "sequence_length", vocab]
    assert shapes["present.0.key"][:2] == ["batch_size", 4] and shapes["present.0.key"][3] == 8
    assert shapes["present.0.key"][2] not in ("past_sequence_length", "sequence_length", 0)


def test_onnxruntime_decodes_the_greedy_tokens_of_generate(exported):
    """Three prompts, 20 tokens each: the same ids as generate(do_sample=False), from logits
    within 1e-4 of the PyTorch model's (which sees the whole sequence, no cache)."""
    import numpy as np
    import onnxruntime
    import torch

    from hfmini.models.sampling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(exported)
    session = onnxruntime.InferenceSession(str(exported / "onnx" / "model.onnx"))
    agree = total = 0
    worst = 0.0
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=NEW_TOKENS
            )
        want = out[0, len(prompt_ids) :].tolist()
        got, chosen_from = onnx_greedy(session, prompt_ids, NEW_TOKENS, tokenizer.eos_token_id)
        agree += sum(a == b for a, b in zip(got, want, strict=False))  # eos may end one early
        total += max(len(got), len(want))
        with torch.no_grad():  # the logits behind each new token, from one pass over it all
            full = model(torch.tensor([prompt_ids + got])).logits[0].numpy()
        steps = full[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(got)]
        worst = max(worst, float(np.abs(np.stack(chosen_from) - steps).max()))
        assert got == want, prompt
    print(f"\nonnxruntime vs generate: {agree}/{total} tokens, max logit difference {worst:.2g}")
    assert total == len(PROMPTS) * NEW_TOKENS  # no prompt stopped at eos: all 60 compared
    assert worst < 1e-4


def test_an_interrupted_export_keeps_the_previous_file_and_no_temporary(exported, monkeypatch):
    from hfmini.outputs import onnx as onnx_module

    target = exported / "onnx" / "model.onnx"
    before = target.read_bytes()

    def interrupted(wrapper, config, path):
        path.write_bytes(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_module, "export_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(exported)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]


def _error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli_main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nowhere"
    assert "does not exist" in _error(capsys, "export", str(missing), "--format", "onnx")
    llama = _saved_model(tmp_path / "llama", "llama")
    line = _error(capsys, "export", str(llama), "--format", "onnx")
    assert "'llama' model" in line and "GPT-2" in line
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(adapter / "adapter_model.safetensors"))
    line = _error(capsys, "export", str(adapter), "--format", "onnx")
    assert "LoRA adapter" in line and "merge" in line
    gpt2 = _saved_model(tmp_path / "gpt2")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` fails
    line = _error(capsys, "export", str(gpt2), "--format", "onnx")
    assert line == "error: the ONNX export needs onnxscript: pip install 'hfmini[onnx]'"
    assert not (gpt2 / "onnx" / "model.onnx").exists()


# The static page ------------------------------------------------------------------------------


def _fake_browser_folder(folder: Path) -> Path:
    """The files the page copies, with stand-in contents (the page is not run here)."""
    (folder / "onnx").mkdir(parents=True)
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        (folder / name).write_text("{}")
    (folder / "onnx" / "model.onnx").write_bytes(b"onnx")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _fake_node_modules(root: Path, runtime: str = "1.31.0") -> Path:
    modules = root / "node_modules"
    package = modules / "@huggingface" / "transformers"
    (package / "dist").mkdir(parents=True)
    meta = {"version": TRANSFORMERS_JS_VERSION, "dependencies": {"onnxruntime-web": "1.31.0"}}
    (package / "package.json").write_text(json.dumps(meta))
    (package / "dist" / LIBRARY_FILE).write_text("export const env = {};")
    (modules / "onnxruntime-web" / "dist").mkdir(parents=True)
    (modules / "onnxruntime-web" / "package.json").write_text(json.dumps({"version": runtime}))
    for name in WASM_FILES:
        (modules / "onnxruntime-web" / "dist" / name).write_text(name)
    return modules


def _settings(index: Path) -> dict:
    html = index.read_text()
    start = html.index("const SETTINGS = ") + len("const SETTINGS = ")
    return json.loads(html[start : html.index(";\n", start)])


def test_the_site_holds_the_browser_files_and_the_library_beside_them(tmp_path, capsys):
    a = _fake_browser_folder(tmp_path / "runs" / "a" / "final")
    b = _fake_browser_folder(tmp_path / "runs" / "b" / "final")
    modules = _fake_node_modules(tmp_path / "js")
    site = tmp_path / "site"
    argv = ["playground", str(a), str(b), "--static", str(site), "--max_new_tokens", "20"]
    assert cli_main([*argv, "--js_dir", str(modules.parent)]) == 0
    out = capsys.readouterr().out
    assert "works offline" in out and f"python -m http.server -d {site}" in out
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    browser_files = [
        "config.json",
        "generation_config.json",
        "onnx/model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert files == sorted(
        ["index.html"]
        + [f"models/{name}/{file}" for name in ("final", "final-2") for file in browser_files]
        + [f"vendor/{name}" for name in (LIBRARY_FILE, *WASM_FILES)]
    )
    settings = _settings(site / "index.html")
    assert settings["models"] == ["final", "final-2"] and settings["max_new_tokens"] == 20
    assert settings["library"] == f"./vendor/{LIBRARY_FILE}"
    assert settings["wasm"] == {
        "mjs": f"./vendor/{WASM_FILES[0]}",
        "wasm": f"./vendor/{WASM_FILES[1]}",
    }


def test_without_an_npm_install_the_page_loads_the_pinned_cdn(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(JS_DIR_VARIABLE, raising=False)
    folder = _fake_browser_folder(tmp_path / "model")
    assert cli_main(["playground", str(folder), "--static", str(tmp_path / "site")]) == 0
    assert "needs the network" in capsys.readouterr().out
    settings = _settings(tmp_path / "site" / "index.html")
    assert settings["library"] == CDN_LIBRARY and settings["wasm"] is None
    assert f"@{TRANSFORMERS_JS_VERSION}/" in CDN_LIBRARY
    assert not (tmp_path / "site" / "vendor").exists()


def test_static_page_errors_are_one_line(tmp_path, capsys, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    line = _error(capsys, "playground", str(plain), "--static", str(tmp_path / "site"))
    assert (
        line
        == f"error: {plain} has no onnx/model.onnx: run hfmini export {plain} --format onnx first"
    )
    folder = _fake_browser_folder(tmp_path / "model")
    monkeypatch.setenv(JS_DIR_VARIABLE, str(tmp_path))
    line = _error(capsys, "playground", str(folder), "--static", str(tmp_path / "site"))
    assert "holds no npm install of @huggingface/transformers" in line
    modules = _fake_node_modules(tmp_path / "js", runtime="1.22.0")
    line = _error(
        capsys,
        "playground",
        str(folder),
        "--static",
        str(tmp_path / "site"),
        "--js_dir",
        str(modules),
    )
    assert "without the onnxruntime-web 1.31.0 it needs" in line
    assert not (tmp_path / "site").exists()


# The browser test ----------------------------------------------------------------------------


def npm_install(version: str = TRANSFORMERS_JS_VERSION) -> Path:
    """node_modules with @huggingface/transformers at `version`, installed once into a cache
    (about 480 MB, mostly onnxruntime-node, which the page never loads) and reused. Skips
    without npm, unless HFMINI_REQUIRE_BROWSER=1 makes that a failure."""
    npm = shutil.which("npm")
    if npm is None:
        reason = "the static page's browser test needs npm (Debian: apt-get install npm)"
        if os.environ.get("HFMINI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; HFMINI_REQUIRE_BROWSER=1 requires it")
        pytest.skip(reason)
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = root / "hfmini" / "npm" / f"transformers-{version}"
    if not (folder / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # --ignore-scripts: onnxruntime-node's install step downloads binaries; the page needs
        # none of them.
        command = [npm, "install", "--prefix", str(folder), "--ignore-scripts", "--no-audit"]
        command += ["--no-fund", f"@huggingface/transformers@{version}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    return folder / "node_modules"


# The page's text and the new tokens' ids, which it keeps in data-token-ids.
READ_OUTPUT = """() => { const box = document.getElementById('output');
    return [box.textContent, JSON.parse(box.dataset.tokenIds ?? 'null')]; }"""


@pytest.mark.slow  # tens of seconds, and a one-time npm install: `make test-slow`
def test_the_static_page_decodes_as_generate_in_chromium_offline(exported, tmp_path):
    import torch
    from test_playground import CHROMIUM_ARGS, _chromium

    from hfmini.models.sampling import load_model_and_tokenizer

    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    model, tokenizer = load_model_and_tokenizer(exported)
    expected = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS)
        # The text as the pipeline decodes it, and the ids: random bytes can decode alike.
        text = tokenizer.decode(out[0], skip_special_tokens=True)
        expected[prompt] = (text, out[0, ids.shape[1] :].tolist())
    index = write_static_page([exported], tmp_path / "site", 8, npm_install())

    class Files(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # one line per request: noise in the test's output
            pass

    handler = functools.partial(Files, directory=index.parent)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    outside: list[str] = []  # requests that left the machine: must stay empty

    def local_only(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    started = time.perf_counter()
    generated, statuses = {}, []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.route("**/*", local_only)
            page.goto(url)
            page.wait_for_function("!document.getElementById('generate').disabled", timeout=60_000)
            page.locator("#max-new-tokens").fill(str(NEW_TOKENS))
            assert not page.locator("#sample").is_checked()  # greedy
            for prompt in PROMPTS:
                page.locator("#prompt").fill(prompt)
                page.locator("#generate").click()
                page.wait_for_function(  # the button comes back when the run has ended
                    """() => !document.getElementById('generate').disabled
                    && /^(done|error)/.test(document.getElementById('status').textContent)""",
                    timeout=120_000,
                )
                statuses.append(page.locator("#status").inner_text())
                generated[prompt] = tuple(page.evaluate(READ_OUTPUT))
            page.screenshot(path=tmp_path / "static-page.png", full_page=True)
            browser.close()
    finally:
        server.shutdown()
    seconds = time.perf_counter() - started
    tokens = [(generated[p][1] or [], want) for p, (_, want) in expected.items() if p in generated]
    same = sum(a == b for got, want in tokens for a, b in zip(got, want, strict=False))
    texts = sum(generated.get(p, ("",))[0] == text for p, (text, _) in expected.items())
    print(
        f"\nbrowser: {seconds:.1f} s for {len(PROMPTS)} prompts ({statuses}); {same}/"
        f"{len(PROMPTS) * NEW_TOKENS} tokens and {texts}/{len(PROMPTS)} texts as generate's"
        f"\n{generated}"
    )
    assert all(status.startswith("done") for status in statuses), statuses
    assert generated == expected
    assert outside == []
