"""`hfmini playground`: the page's handlers on tiny models, the command's errors, and the real
page in Chromium (skipped without it, unless HFMINI_REQUIRE_BROWSER=1, as CI sets)."""

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import gradio as gr
import pytest
from conftest import REPO, reset_accelerate, tiny_run_args, write_lines
from test_chat import _model_folder

from hfmini.cli import main as cli_main
from hfmini.models.sampling import generate_text, load_model_and_tokenizer
from hfmini.serving.chat import ChatSession
from hfmini.serving.playground import (
    NO_EVAL_RESULTS,
    Playground,
    build_page,
    chat_stream,
    generate_stream,
    sampling_settings,
    stream,
    switch_model,
)

PROMPT = "thou art"
# max_new_tokens, temperature, top_k, top_p, seed: as the page sends them
SAMPLED = (12, 0.8, 50, 0.95, "7")
GREEDY = (6, 0.0, 0, 1.0, "")


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """An hfmini run of 4 steps on small local text: eval_results.json, metrics.jsonl and
    loss_curve.png beside the model (about 5 s)."""
    from hfmini.config import parse_config
    from hfmini.training.trainer import run_training

    root = tmp_path_factory.mktemp("plain")
    data = [
        *("--train_file", str(write_lines(root / "train.txt", 150))),
        *("--validation_file", str(write_lines(root / "val.txt", 60, seed=4))),
        *("--vocab_size", "300", "--block_size", "32", "--logging_steps", "2"),
    ]
    run_training(parse_config(tiny_run_args(root / "run", 4, *data)))
    reset_accelerate()
    return root / "run"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A chat-template model saved with save_pretrained alone: no eval_results.json, no metrics."""
    return _model_folder(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def playground(plain_dir, chat_dir):
    return Playground([plain_dir, chat_dir])


def _error(handler, *args) -> str:
    """The message a handler shows in the page instead of output."""
    with pytest.raises(gr.Error) as err:
        list(handler(*args))
    return err.value.message


def test_generate_streams_growing_text_that_ends_as_generate_text(playground, plain_dir):
    chunks = list(generate_stream(playground, str(plain_dir), PROMPT, *SAMPLED))
    assert chunks[0] == PROMPT and len(chunks) > 3  # the prompt at once, then piece by piece
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(chunks))
    model, tokenizer = playground.model(str(plain_dir))
    expected = generate_text(model, tokenizer, PROMPT, 12, 0.8, 50, 0.95, seed=7)
    assert chunks[-1] == PROMPT + expected and expected


def test_a_seed_fixes_a_request_whatever_other_requests_draw(playground, plain_dir, chat_dir):
    """Two users at once: the same seed gives the same text alone and while another request,
    with another seed or none, samples in between (each request has its own generator)."""
    import threading

    import torch

    folder, long = str(plain_dir), (40, 1.0, 0, 1.0)
    alone = list(generate_stream(playground, folder, PROMPT, *long, "7"))[-1]
    results, start = {}, threading.Barrier(3)

    def request(name, seed):
        start.wait()
        results[name] = list(generate_stream(playground, folder, PROMPT, *long, seed))[-1]

    users = [threading.Thread(target=request, args=args) for args in [("a", "7"), ("b", "8")]]
    users.append(threading.Thread(target=request, args=("c", "")))
    for user in users:
        user.start()
    for user in users:
        user.join()
    assert results["a"] == alone and results["b"] != alone
    # Interleaved by hand, token by token: a seeded request's pieces between another's.
    first, other = (generate_stream(playground, folder, PROMPT, *long, seed) for seed in ("7", "8"))
    pieces = [a for a, _ in itertools.zip_longest(first, other) if a is not None]
    assert pieces[-1] == alone
    # The chat view too, and torch's process-wide generator is left alone.
    state = torch.get_rng_state()
    replies = [
        list(chat_stream(playground, str(chat_dir), "hello", [], *long, "3"))[-1][0][-1]
        for _ in range(2)
    ]
    assert replies[0] == replies[1] and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ((0, 0.8, 50, 0.95, ""), "max_new_tokens must be positive, got 0"),
        ((8, 0.8, 50, 0.0, ""), "top_p must be in (0, 1] (1: no nucleus filtering), got 0.0"),
        ((8, 0.8, -1, 0.95, ""), "top_k must be >= 0 (0: no top-k filtering), got -1"),
        ((8, 0.8, 2.5, 0.95, ""), "top_k must be a whole number, got 2.5"),
        ((8, None, 50, 0.95, ""), "temperature must be a number, got None"),
        ((8, 1e-4, 50, 0.95, ""), "temperature 0.0001 is too small to sample with"),
        ((8, 0.8, 50, 0.95, "abc"), "seed must be a number, got 'abc'"),
        ((8, 0.8, 50, 0.95, "-3"), "seed must be between 0 and 2**63 - 1, got -3"),
    ],
)
def test_a_bad_setting_is_a_message_naming_it(playground, plain_dir, chat_dir, controls, message):
    assert message in _error(generate_stream, playground, str(plain_dir), PROMPT, *controls)
    assert message in _error(chat_stream, playground, str(chat_dir), "hello", [], *controls)


def test_empty_boxes_mean_no_top_k_and_a_random_seed():
    assert sampling_settings(8, 0.8, None, 0.95, "") == {
        "max_new_tokens": 8,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 0.95,
        "seed": None,
    }
    assert sampling_settings(8.0, 1, 40.0, 1, " 12 ")["seed"] == 12


def test_the_card_shows_eval_results_json(playground, plain_dir, chat_dir):
    results = json.loads((plain_dir / "eval_results.json").read_text())
    card = playground.card(str(plain_dir))
    assert f"| parameters | {results['parameters']:,} |" in card
    assert f"| bits per byte | {results['bits_per_byte']:.4f} |" in card
    assert f"| validation loss | {results['eval_loss']:.4f} nats/token" in card
    assert f"(perplexity {results['perplexity']:.2f})" in card
    assert f"| trained | {results['step']:,} steps, {results['tokens_seen']:,} tokens" in card
    assert "| kind | plain text |" in card and NO_EVAL_RESULTS not in card
    # Not trained by hfmini: the note, and the parameters counted in the model.
    model = playground.model(str(chat_dir))[0]
    card = playground.card(str(chat_dir))
    assert NO_EVAL_RESULTS in card and "bits per byte" not in card
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} (counted" in card


def test_the_card_shows_what_preference_tuning_and_grpo_raised(playground, plain_dir, tmp_path):
    """A DPO or GRPO folder's card: the held-out reward accuracy or mean reward, start → end, so
    that switching between the stages of `make life` shows what each one did."""
    for key, name in (("rewards/accuracies", "reward accuracy"), ("reward", "mean reward")):
        tuned = tmp_path / name.replace(" ", "-")
        shutil.copytree(plain_dir, tuned)
        results = json.loads((tuned / "eval_results.json").read_text())
        results |= {key: 0.875, f"start_{key}": 0.25}
        (tuned / "eval_results.json").write_text(json.dumps(results))
        assert f"| {name} | 0.2500 → 0.8750 |" in Playground([tuned]).card(str(tuned))
    assert "reward" not in playground.card(str(plain_dir))


def test_the_loss_curve_is_the_runs_png_else_drawn_from_metrics(plain_dir, chat_dir, tmp_path):
    png = plain_dir / "loss_curve.png"
    assert Playground([plain_dir]).loss_curve(str(plain_dir)) == (str(png), "")
    copy = tmp_path / "no-png"
    shutil.copytree(plain_dir, copy, ignore=shutil.ignore_patterns("loss_curve.png"))
    playground = Playground([copy])  # keeps the drawing in its scratch folder while it lives
    drawn, note = playground.loss_curve(str(copy))
    assert note == "drawn from metrics.jsonl"
    assert open(drawn, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    curve, note = Playground([chat_dir]).loss_curve(str(chat_dir))
    assert (curve, note) == (None, "no loss curve: no loss_curve.png or metrics.jsonl here")


def test_chat_streams_each_reply_as_chat_session_would(playground, chat_dir):
    model, tokenizer = playground.model(str(chat_dir))
    session = ChatSession(model, tokenizer, max_new_tokens=6, temperature=0, top_k=0, top_p=1.0)
    first, second = session.reply("hello there"), session.reply("how are you")

    turns = list(chat_stream(playground, str(chat_dir), "hello there", [], *GREEDY))
    user = {"role": "user", "content": "hello there"}
    assert turns[0] == ([user], "")  # at once: the message moves from its box to the chat
    assert turns[-1] == ([user, {"role": "assistant", "content": first}], "")
    history = turns[-1][0]
    turns = list(chat_stream(playground, str(chat_dir), "how are you", history, *GREEDY))
    assert turns[-1][0] == session.history and session.history[-1]["content"] == second
    assert history == [user, {"role": "assistant", "content": first}]  # not changed in place
    # An empty message changes nothing and starts no reply.
    assert list(chat_stream(playground, str(chat_dir), "  ", history, *GREEDY)) == [(history, "  ")]


def test_switching_model_swaps_the_view_and_the_figures(playground, plain_dir, chat_dir):
    card, curve, note, plain_view, chat_view, *cleared = switch_model(playground, str(chat_dir))
    assert card == playground.card(str(chat_dir)) and "| kind | chat" in card
    assert curve["visible"] is False and note.startswith("no loss curve")
    assert (plain_view["visible"], chat_view["visible"]) == (False, True)
    assert cleared == ["", [], []]
    card, curve, note, plain_view, chat_view, *_ = switch_model(playground, str(plain_dir))
    assert "| kind | plain text |" in card and curve["value"] == str(plain_dir / "loss_curve.png")
    assert (plain_view["visible"], chat_view["visible"]) == (True, False)


def test_the_page_has_its_elements_and_hides_the_choice_for_one_model(plain_dir):
    config = build_page(Playground([plain_dir])).get_config_file()
    shown = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    for elem_id in ["card", "loss-curve", "prompt", "generate", "output", "chat", "chat-input"]:
        assert elem_id in shown
    assert shown["model"]["visible"] is False  # one folder: nothing to choose
    assert shown["chat-view"]["visible"] is False and shown["plain-view"]["visible"] is True


def test_closing_the_stream_stops_sampling_and_errors_reach_the_reader():
    produced = []

    def produce(on_text):
        for i in range(200):
            on_text("x")
            produced.append(i)
            time.sleep(0.005)

    texts = stream(produce)
    assert [next(texts), next(texts)] == ["x", "xx"]
    texts.close()
    time.sleep(0.2)
    assert len(produced) < 50  # stopped at its next piece, not after all 200

    def fail(on_text):
        on_text("a")
        raise ValueError("boom")

    texts = stream(fail)
    assert next(texts) == "a"
    with pytest.raises(ValueError, match="boom"):
        next(texts)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_missing_folder_is_one_line_before_serving(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert cli_main(["playground", str(missing)]) == 2
    assert _one_error_line(capsys) == (
        f"error: {missing} is not a folder: point at a training output_dir"
    )


def test_without_gradio_the_command_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails as if absent
    monkeypatch.delitem(sys.modules, "hfmini.serving.playground")
    assert cli_main(["playground", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == (
        "error: the playground needs gradio: pip install 'hfmini[playground]'"
    )


def test_a_busy_port_is_one_line(plain_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["playground", str(plain_dir), "--port", str(port)]) == 2
    line = _one_error_line(capsys)
    assert f"cannot serve on 127.0.0.1 at port {port}: it is in use" in line
    assert "--port 0 for any free one" in line


# The browser test ----------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    """The system's Chromium for Playwright; skips without it or playwright, unless
    HFMINI_REQUIRE_BROWSER=1 makes that a failure."""
    missing = []
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing.append("chromium (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        reason = f"the browser test needs {' and '.join(missing)}"
        if os.environ.get("HFMINI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; HFMINI_REQUIRE_BROWSER=1 requires it")
        pytest.skip(reason)
    return chromium


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_url(server: subprocess.Popen, log, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("playground: http"):
                return line.split()[1]
        if server.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"no URL from the playground within {timeout}s; it said:\n{log.read_text()}")


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
def test_the_page_in_a_browser(plain_dir, chat_dir, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    model, tokenizer = load_model_and_tokenizer(plain_dir)
    expected = PROMPT + generate_text(model, tokenizer, PROMPT, 12, 0.8, 50, 0.95, seed=0)
    results = json.loads((plain_dir / "eval_results.json").read_text())
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "hfmini.cli", "playground", str(plain_dir), str(chat_dir)]
    command += ["--port", str(_free_port()), "--max_new_tokens", "12"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_url(server, log)
        assert url.startswith("http://127.0.0.1:")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#seed textarea").fill("0")
            page.locator("#generate").click()
            output = page.locator("#output textarea")
            page.wait_for_function(
                "([box, want]) => document.querySelector(box).value === want",
                arg=["#output textarea", expected],
                timeout=60_000,
            )
            generated = output.input_value()
            assert generated == expected and len(generated) > len(PROMPT)
            card = page.locator("#card").inner_text()
            assert f"{results['parameters']:,}" in card
            assert f"{results['bits_per_byte']:.4f}" in card
            assert page.locator("#loss-curve img").is_visible()
            screenshot = tmp_path / "playground.png"
            page.screenshot(path=screenshot, full_page=True)
            print(f"\nscreenshot: {screenshot}\ngenerated: {generated!r}")

            # The chat model: the chat view replaces the prompt, and a reply comes.
            page.locator("#model input").click()
            page.get_by_role("option", name=str(chat_dir)).click()
            page.locator("#chat-input textarea").fill("hello there")
            page.locator("#chat-send").click()
            page.wait_for_function(  # a reply, and the chat no longer busy
                """() => document.querySelector('#chat [data-testid="bot"]')?.innerText.trim()
                && document.querySelector('#chat [data-testid="status-tracker"]')
                    .classList.contains('hide')""",
                timeout=30_000,
            )
            assert not page.locator("#prompt").is_visible()
            assert page.locator('#chat [data-testid="user"]').inner_text() == "hello there"
            assert NO_EVAL_RESULTS in page.locator("#card").inner_text()
            page.screenshot(path=tmp_path / "playground-chat.png", full_page=True)

            # A bad setting: a message in the page, not a stack trace.
            page.locator("#top-k input").fill("-1")
            page.locator("#chat-input textarea").fill("and you?")
            page.locator("#chat-send").click()
            page.get_by_text("top_k must be >= 0 (0: no top-k filtering), got -1").wait_for(
                timeout=30_000
            )
            assert "Traceback" not in page.locator("body").inner_text()
            page.wait_for_timeout(500)  # the message fades in
            page.screenshot(path=tmp_path / "playground-error.png", full_page=True)
            browser.close()
    finally:
        server.kill()
        server.wait(timeout=30)
    assert "Traceback" not in log.read_text()
