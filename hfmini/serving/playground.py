"""`hfmini playground MODEL_DIR [MODEL_DIR ...]`: a local web page (Gradio) to sample from models.

    ┌─ hfmini playground ───────────────────────────────────────────────────┐
    │ model [output/shakespeare               ▾]     (several folders only) │
    │ ┌─ card: eval_results.json ────────┐ ┌─ loss curve ─────────────────┐ │
    │ │ parameters        1,071,872      │ │ loss_curve.png, or drawn     │ │
    │ │ bits per byte     2.0443         │ │ from metrics.jsonl           │ │
    │ │ validation loss, steps, tokens   │ │                              │ │
    │ └──────────────────────────────────┘ └──────────────────────────────┘ │
    │ max new tokens ━●━  temperature ━●━  top-p ━━●  top-k [50]  seed [ ]  │
    │ a plain model:  prompt [ROMEO:                     ]  [Generate]      │
    │                 output  the prompt and its continuation, streamed     │
    │ a chat model:   chat    user and assistant turns, the reply streamed  │
    │                 message [                 ]  [Send]  [Clear]          │
    └───────────────────────────────────────────────────────────────────────┘

Each folder's model is loaded once (on first use) and kept. A handler is a generator: the model
samples in a background thread that feeds a queue, and the handler yields the text so far. The
settings go through hfmini.models.sampling's checks; a bad one is a gr.Error, a message in the page.
Serves on 127.0.0.1 unless --host says otherwise, and never makes a public share link; the theme
uses system fonts so that the page asks nothing of the internet.
"""

from __future__ import annotations

import json
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hfmini.config import SAMPLING_DEFAULTS
from hfmini.errors import HfminiError
from hfmini.models.sampling import (
    check_prompt,
    check_sampling,
    generate_text,
    load_model_and_tokenizer,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported
import gradio as gr  # noqa: E402

from hfmini.config import DEFAULT_MAX_NEW_TOKENS
from hfmini.outputs.plot import plot_runs
from hfmini.run_folder import EVAL_RESULTS_FILE, LOSS_CURVE_FILE, METRICS_FILE
from hfmini.serving.chat import ChatSession

# Gradio's default theme pulls its fonts from Google; these are the computer's own.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
# A component's corner buttons; "share" (posting to the Hugging Face Hub) is left out.
CHATBOT_BUTTONS = ["copy", "copy_all"]
IMAGE_BUTTONS = ["download", "fullscreen"]
NO_EVAL_RESULTS = "no eval_results.json: not trained by hfmini, or not finished"


class Playground:
    """The model folders on the page, each loaded on first use and kept, with its loss curve."""

    def __init__(self, folders: list[str | Path]):
        self.folders = [str(folder) for folder in folders]
        self._models: dict[str, tuple] = {}
        self._curves: dict[str, tuple[str | None, str]] = {}
        self._lock = threading.Lock()  # two first requests for a folder load it once
        self._scratch = tempfile.TemporaryDirectory(prefix="hfmini-playground-")

    def model(self, folder: str) -> tuple:
        """(model, tokenizer) of `folder`, on the default device; HfminiError if it is no model."""
        with self._lock:
            if folder not in self._models:
                self._models[folder] = load_model_and_tokenizer(folder)
            return self._models[folder]

    def is_chat(self, folder: str) -> bool:
        return bool(getattr(self.model(folder)[1], "chat_template", None))

    def loss_curve(self, folder: str) -> tuple[str | None, str]:
        """(PNG path or None, a note): the run's loss_curve.png, else one drawn from its
        metrics.jsonl (as `hfmini plot` would), else none."""

        with self._lock:  # two first requests for a folder draw its curve once
            if folder not in self._curves:
                png, metrics = Path(folder) / LOSS_CURVE_FILE, Path(folder) / METRICS_FILE
                if png.is_file():
                    curve = (str(png), "")
                elif metrics.is_file():
                    out = Path(self._scratch.name) / f"{len(self._curves)}.png"
                    try:
                        curve = (str(plot_runs([folder], out)), "drawn from metrics.jsonl")
                    except HfminiError as err:
                        curve = (None, f"no loss curve: {err}")
                else:
                    curve = (None, "no loss curve: no loss_curve.png or metrics.jsonl here")
                self._curves[folder] = curve
            return self._curves[folder]

    def card(self, folder: str) -> str:
        """The model's figures as a Markdown table, from the folder's eval_results.json."""
        rows, note = [], ""
        try:
            results = json.loads((Path(folder) / EVAL_RESULTS_FILE).read_text())
        except FileNotFoundError:
            results, note = {}, NO_EVAL_RESULTS
        except (OSError, ValueError) as err:
            results, note = {}, f"eval_results.json is unreadable ({err})"
        if not isinstance(results, dict):
            results, note = {}, "eval_results.json is not a mapping of figures"
        if "parameters" in results:
            rows.append(("parameters", f"{results['parameters']:,}"))
        else:  # unique parameters, a tied embedding counted once, as training reports them
            counted = sum(p.numel() for p in self.model(folder)[0].parameters())
            rows.append(("parameters", f"{counted:,} (counted in the model)"))
        if "bits_per_byte" in results:
            rows.append(("bits per byte", f"{results['bits_per_byte']:.4f}"))
        if "eval_loss" in results:
            perplexity = results.get("perplexity")
            also = f" (perplexity {perplexity:.2f})" if perplexity is not None else ""
            rows.append(("validation loss", f"{results['eval_loss']:.4f} nats/token{also}"))
        # What preference tuning and GRPO raised, held out, from the starting model to this one.
        for key, name in (("rewards/accuracies", "reward accuracy"), ("reward", "mean reward")):
            if isinstance(results.get(key), int | float):
                start = results.get(f"start_{key}")
                before = f"{start:.4f} → " if isinstance(start, int | float) else ""
                rows.append((name, f"{before}{results[key]:.4f}"))
        if "step" in results:
            tokens = results.get("tokens_seen")
            also = f", {tokens:,} tokens seen" if tokens is not None else ""
            rows.append(("trained", f"{results['step']:,} steps{also}"))
        rows.append(
            ("kind", "chat (has a chat template)" if self.is_chat(folder) else "plain text")
        )
        table = "\n".join(f"| {name} | {value} |" for name, value in rows)
        head = f"| model | **{Path(folder).name}** |\n|---|---|\n| folder | `{folder}` |"
        return f"{head}\n{table}\n" + (f"\n{note}\n" if note else "")


def page_error(err: HfminiError) -> gr.Error:
    """The error as a message in the page. No traceback in the terminal: the page's user made
    the mistake, and a traceback there would look like a crash of the server."""
    return gr.Error(str(err), print_exception=False)


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HfminiError(f"{name} must be a number, got {value!r}") from None


def _whole(value, name: str, empty: int | None = None) -> int | None:
    """A number box's value as an int: empty (None) gives `empty`, 2.5 or 'x' an error."""
    if value is None or value == "":
        return empty
    number = _number(value, name)
    if not math.isfinite(number) or number != int(number):
        raise HfminiError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def sampling_settings(max_new_tokens, temperature, top_k, top_p, seed) -> dict:
    """The page's controls as generate_text's keyword arguments; HfminiError naming a bad one.

    Sliders keep to their ranges, but number boxes send None when empty, and the page's API
    (or a hand-made request) can send anything.
    """
    settings = {
        "max_new_tokens": _whole(max_new_tokens, "max_new_tokens", empty=0),
        "temperature": _number(temperature, "temperature"),
        "top_k": _whole(top_k, "top_k", empty=0),  # empty: no top-k filtering
        "top_p": _number(top_p, "top_p"),
        "seed": _whole(seed, "seed"),  # empty: a different sample each time
    }
    check_sampling(*(settings[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p")))
    if settings["seed"] is not None and not 0 <= settings["seed"] < 2**63:
        raise HfminiError(f"seed must be between 0 and 2**63 - 1, got {settings['seed']}")
    return settings


class _Stopped(Exception):
    """Raised inside the sampling thread when nobody reads its text any more."""


def stream(produce: Callable[[Callable[[str], None]], object]) -> Iterator[str]:
    """Run `produce(on_text)` in a background thread; yield the text so far after each piece.

    Closing the generator (the page went away) stops the thread at its next token.
    """
    pieces: queue.Queue = queue.Queue()
    done = object()
    closed = threading.Event()

    def on_text(piece: str) -> None:
        if closed.is_set():
            raise _Stopped
        pieces.put(piece)

    def work() -> None:
        try:
            produce(on_text)
        except _Stopped:
            pass
        except BaseException as err:  # handed to the reader, who raises it in the handler
            pieces.put(err)
        finally:
            pieces.put(done)

    threading.Thread(target=work, name="hfmini-playground-sample", daemon=True).start()
    text = ""
    try:
        while (piece := pieces.get()) is not done:
            if isinstance(piece, BaseException):
                raise piece
            text += piece
            yield text
    finally:
        closed.set()


def generate_stream(playground: Playground, folder: str, prompt: str, *controls) -> Iterator[str]:
    """The Generate button: yields the prompt, then the prompt and the continuation so far.
    `controls`: max_new_tokens, temperature, top_k, top_p, seed, as the page sends them."""
    try:
        settings = sampling_settings(*controls)
        check_prompt(prompt)
        model, tokenizer = playground.model(folder)
        yield prompt
        for text in stream(
            lambda on_text: generate_text(model, tokenizer, prompt, **settings, on_text=on_text)
        ):
            yield prompt + text
    except HfminiError as err:
        raise page_error(err) from None


def chat_stream(
    playground: Playground, folder: str, message: str, history: list[dict], *controls
) -> Iterator[tuple[list[dict], str]]:
    """The chat's Send: yields (the conversation with the reply so far, the message box's text).

    `history` holds plain {"role", "content": str} messages (the page keeps it in a gr.State);
    each turn builds a ChatSession with the current settings, so a changed slider applies at once.
    """

    try:
        settings = sampling_settings(*controls)
        check_prompt(message)
        if not message.strip():
            yield history, message
            return
        model, tokenizer = playground.model(folder)
        session = ChatSession(model, tokenizer, **settings)  # a seed: the session's own generator
        session.history = [dict(m) for m in history]
        asked = [*history, {"role": "user", "content": message}]
        yield asked, ""  # the message moves into the conversation; gradio shows dots till text
        for text in stream(lambda on_text: session.reply(message, on_text=on_text)):
            yield [*asked, {"role": "assistant", "content": text}], ""
    except HfminiError as err:
        raise page_error(err) from None


def switch_model(playground: Playground, folder: str) -> tuple:
    """The dropdown's change: the model's card, loss curve and note, which view shows (plain,
    chat), and an empty output and conversation."""
    try:
        is_chat = playground.is_chat(folder)
    except HfminiError as err:
        raise page_error(err) from None
    curve, note = playground.loss_curve(folder)
    return (
        playground.card(folder),
        gr.update(value=curve, visible=bool(curve)),
        note,
        gr.update(visible=not is_chat),
        gr.update(visible=is_chat),
        "",
        [],
        [],
    )


def sampling_controls(max_new_tokens: int) -> list:
    """The sampling controls, in sampling_settings' order (made inside the page's layout)."""
    length = gr.Slider(
        1,
        max(512, max_new_tokens),
        max_new_tokens,
        step=1,
        label="max new tokens",
        elem_id="max-new-tokens",
    )
    temperature = gr.Slider(
        0,
        2,
        SAMPLING_DEFAULTS["temperature"],
        step=0.05,
        label="temperature (0: greedy)",
        elem_id="temperature",
    )
    top_p = gr.Slider(
        0.05, 1, SAMPLING_DEFAULTS["top_p"], step=0.05, label="top-p", elem_id="top-p"
    )
    top_k = gr.Number(
        SAMPLING_DEFAULTS["top_k"], precision=0, label="top-k (0: off)", elem_id="top-k"
    )
    # A text box: a Number box shows 0 when empty, which would read as seed 0.
    seed = gr.Textbox(label="seed", placeholder="random", elem_id="seed")
    return [length, temperature, top_k, top_p, seed]


def build_page(playground: Playground, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> gr.Blocks:
    """The page, its components findable by elem_id (model, card, loss-curve, prompt, generate,
    output, chat, chat-input, chat-send, chat-clear and one per sampling control)."""
    first = playground.folders[0]
    chat_first = playground.is_chat(first)
    curve, curve_note = playground.loss_curve(first)
    with gr.Blocks(title="hfmini playground", analytics_enabled=False) as page:
        gr.Markdown("# hfmini playground")
        folder = gr.Dropdown(
            playground.folders,
            value=first,
            label="model",
            elem_id="model",
            visible=len(playground.folders) > 1,
        )
        with gr.Row():
            card = gr.Markdown(playground.card(first), elem_id="card")
            with gr.Column():
                loss = gr.Image(
                    curve,
                    label="loss curve",
                    show_label=False,  # the figure has its title
                    elem_id="loss-curve",
                    visible=bool(curve),
                    buttons=IMAGE_BUTTONS,
                )
                loss_note = gr.Markdown(curve_note, elem_id="loss-note")
        with gr.Row():
            controls = sampling_controls(max_new_tokens)

        with gr.Column(visible=not chat_first, elem_id="plain-view") as plain_view:
            with gr.Row():
                prompt = gr.Textbox(
                    label="prompt", placeholder="text to continue", scale=5, elem_id="prompt"
                )
                generate = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
            output = gr.Textbox(label="output", lines=10, interactive=False, elem_id="output")
        with gr.Column(visible=chat_first, elem_id="chat-view") as chat_view:
            conversation = gr.State([])  # plain messages, the Chatbot shows them
            chat = gr.Chatbot(label="chat", elem_id="chat", buttons=CHATBOT_BUTTONS)
            with gr.Row():
                message = gr.Textbox(
                    label="message", placeholder="say something", scale=5, elem_id="chat-input"
                )
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                clear = gr.Button("Clear", scale=1, elem_id="chat-clear")

        def on_generate(folder, prompt, *controls):
            yield from generate_stream(playground, folder, prompt, *controls)

        def on_chat(folder, message, history, *controls):
            for shown, box in chat_stream(playground, folder, message, history, *controls):
                yield shown, shown, box

        def check(*controls) -> None:
            try:
                sampling_settings(*controls)
            except HfminiError as err:
                raise page_error(err) from None

        # The settings are checked in a step of their own, with no outputs: a bad one is the
        # message alone, where gradio would otherwise also cover the output (the conversation)
        # with an "Error" badge. The handlers check again, for calls through the page's API.
        for start in (generate.click, prompt.submit):
            start(check, controls, None, show_progress="hidden").success(
                on_generate, [folder, prompt, *controls], output
            )
        for start in (send.click, message.submit):
            start(check, controls, None, show_progress="hidden").success(
                on_chat, [folder, message, conversation, *controls], [chat, conversation, message]
            )
        clear.click(lambda: ([], []), None, [chat, conversation])
        chat.clear(lambda: [], None, conversation)  # the Chatbot's own trash button
        folder.change(
            lambda folder: switch_model(playground, folder),
            folder,
            [card, loss, loss_note, plain_view, chat_view, output, chat, conversation],
        )
    return page


def serve(
    folders: list[str],
    host: str = "127.0.0.1",
    port: int = 7860,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> None:
    """Check every folder (by loading it), serve the page, say where, and run until Ctrl-C.
    `port` 0: the first free port from 7860."""
    check_sampling(max_new_tokens, SAMPLING_DEFAULTS["temperature"])
    if not 0 <= port <= 65535:
        raise HfminiError(f"--port must be between 0 and 65535, got {port}")
    import transformers

    # Its "Loading weights" bar, as `hfmini chat` does: the page names the models loaded.
    transformers.utils.logging.disable_progress_bar()
    playground = Playground(folders)
    for folder in playground.folders:
        playground.model(folder)  # a bad folder is a one-line error now, not in the page later
    page = build_page(playground, max_new_tokens)
    try:
        page.launch(
            server_name=host,
            server_port=port or None,
            share=False,
            show_error=True,
            quiet=True,  # its banner would repeat ours
            prevent_thread_lock=True,
            allowed_paths=[str(Path(f) / LOSS_CURVE_FILE) for f in playground.folders],
            theme=THEME,  # Gradio 6 takes it here, not in Blocks()
        )
    except OSError:
        wanted = f"port {port}" if port else "a free port from 7860 to 7959"
        raise HfminiError(
            f"cannot serve on {host} at {wanted}: it is in use (or {host} is not an address of "
            "this computer); choose another with --port, or --port 0 for any free one"
        ) from None
    url_host = f"[{host}]" if ":" in host else host
    where = (
        "this computer only; --host 0.0.0.0 serves your network"
        if host in ("127.0.0.1", "localhost", "::1")
        else "open to your network: whoever reaches this computer can use it"
    )
    print(f"playground: http://{url_host}:{page.server_port} ({where})", flush=True)
    try:
        while True:
            time.sleep(3600)  # the server runs in its own threads; Ctrl-C ends this
    finally:
        page.close()
