"""`hfmini chat`: the conversation object on a tiny model, and the real command under a terminal."""

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from hfmini.models.chat_template import apply_template
from hfmini.models.tokenizer import train_tokenizer
from hfmini.serving import chat
from hfmini.serving.chat import ChatSession

TEXT = "hello there, how are you today? fine thanks, and you? more of the same\n"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _model_folder(folder, template: bool = True):
    """A 1-layer GPT-2 of 64 positions and its byte-level BPE, saved as save_pretrained does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer(iter([[TEXT] * 20]), vocab_size=300, model_max_length=64)
    if template:
        apply_template(tokenizer, None)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    return folder


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return _model_folder(tmp_path_factory.mktemp("chat"))


@pytest.fixture
def loaded(chat_dir):
    from hfmini.models.sampling import load_model_and_tokenizer

    return load_model_and_tokenizer(chat_dir, device="cpu")


@pytest.fixture
def prompts(monkeypatch):
    """The prompt ids of each reply, as decode receives them."""
    seen = []

    def spy(model, ids, *args, **kwargs):
        seen.append(ids)
        return real(model, ids, *args, **kwargs)

    real = chat.decode
    monkeypatch.setattr(chat, "decode", spy)
    return seen


def _render(tokenizer, messages, generation_prompt=False) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
    )


def _script(model, tokens: list[int]) -> None:
    """Make the model's next token `tokens[i]` at its i-th forward (prefill included)."""
    steps = iter(tokens)

    def force(module, inputs, logits):
        forced = torch.full_like(logits, -1e4)
        forced[..., next(steps)] = 0
        return forced

    model.lm_head.register_forward_hook(force)


def test_history_is_kept_across_turns(loaded, prompts):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_new_tokens=6, temperature=0)
    first = session.reply("hello there")
    session.reply("how are you")
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2
    assert session.history[:2] == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": first},
    ]
    exchange = _render(tokenizer, session.history[:2])
    assert prompts[1][: len(exchange)] == exchange
    assert prompts[1] == _render(tokenizer, session.history[:3], generation_prompt=True)


def test_reset_forgets_all_but_the_system_message(loaded, prompts):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_new_tokens=4, temperature=0, system="be brief")
    session.reply("hello there")
    session.reset()
    assert session.history == [{"role": "system", "content": "be brief"}]
    session.reply("fine thanks")
    system_and_user = [{"role": "system", "content": "be brief"}, session.history[1]]
    assert prompts[1] == _render(tokenizer, system_and_user, generation_prompt=True)


def test_reply_ends_at_the_end_of_turn_token(loaded):
    model, tokenizer = loaded
    words = tokenizer("fine thanks", add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    _script(model, [*words, end, *words])
    streamed = []
    session = ChatSession(model, tokenizer, max_new_tokens=20, temperature=0)
    assert session.reply("hello", on_text=streamed.append) == "fine thanks"
    assert "".join(streamed) == "fine thanks"  # no <|im_end|>, nothing after it
    assert session.history[-1] == {"role": "assistant", "content": "fine thanks"}


def test_ctrl_c_mid_reply_keeps_the_part_shown(loaded):
    model, tokenizer = loaded
    words = tokenizer("fine thanks, and you", add_special_tokens=False)["input_ids"]
    _script(model, words)
    shown = []

    def interrupted(text):
        shown.append(text)
        if len(shown) == 2:
            raise KeyboardInterrupt

    session = ChatSession(model, tokenizer, max_new_tokens=20, temperature=0)
    with pytest.raises(KeyboardInterrupt):
        session.reply("hello", on_text=interrupted)
    assert session.history[-1] == {"role": "assistant", "content": "".join(shown)}
    assert [m["role"] for m in session.history] == ["user", "assistant"]


def test_a_long_conversation_drops_its_oldest_turns(loaded, prompts, capsys):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_new_tokens=8, temperature=0, system="be brief")
    for turn in range(8):
        session.reply(f"hello there, turn {turn}")
    assert all(len(ids) <= 64 - 8 for ids in prompts)
    users = [m["content"] for m in session.history if m["role"] == "user"]
    assert session.history[0] == {"role": "system", "content": "be brief"}
    assert "hello there, turn 0" not in users and users[-1] == "hello there, turn 7"
    roles = [m["role"] for m in session.history[1:]]
    assert roles == ["user", "assistant"] * (len(roles) // 2)
    assert capsys.readouterr().err.count("dropping its oldest turns") == 1
    assert prompts[-1] == _render(tokenizer, session.history[:-1], generation_prompt=True)


def test_a_message_longer_than_the_context_keeps_its_end(loaded, prompts, capsys):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_new_tokens=8, temperature=0)
    session.reply(TEXT * 10)
    whole = _render(tokenizer, session.history[:1], generation_prompt=True)
    assert prompts[0] == whole[-(64 - 8) :]
    assert "keeping the most recent" in capsys.readouterr().err


class _Terminal:
    """`hfmini chat ...` with a pseudo-terminal as its controlling terminal (so that Ctrl-C is a
    SIGINT, as typed); every read has a deadline so that a hang fails the test."""

    def __init__(self, *argv: str):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the command at once
            try:
                # As a shell gives its foreground command: Ctrl-C's SIGINT acts. (A test run in
                # the background of a script starts with SIGINT ignored, which exec would keep.)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.chdir(REPO)
                os.execve(sys.executable, [sys.executable, "-m", "hfmini.cli", *argv], ENV)
            finally:
                os._exit(127)
        self.out, self.pos, self.code = "", 0, None

    def _read(self, timeout: float) -> bool:
        if not select.select([self.fd], [], [], timeout)[0]:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        self.out += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return bool(data)

    def expect(self, text: str, timeout: float = 60) -> str:
        """The output up to and including the next `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.out[self.pos :]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                pytest.fail(f"no {text!r} within {timeout}s; output:\n{self.out}")
        end = self.out.index(text, self.pos) + len(text)
        seen, self.pos = self.out[self.pos : end], end
        return seen

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def poll(self, timeout: float) -> int | None:
        """The exit status once the command has ended within `timeout`, else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                return self.code
            self._read(0.1)  # keep the terminal drained
        return None

    def wait(self, timeout: float = 30) -> int:
        code = self.poll(timeout)
        if code is None:
            pytest.fail(f"still running after {timeout}s; output:\n{self.out}")
        return code

    def close(self) -> None:
        if self.code is None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        os.close(self.fd)


@contextlib.contextmanager
def _chat_in_terminal(chat_dir):
    terminal = _Terminal("chat", str(chat_dir), "--max_new_tokens", "8", "--temperature", "0")
    try:
        yield terminal
    finally:
        terminal.close()


def test_chat_in_a_terminal_answers_resets_and_quits_on_ctrl_d(chat_dir, loaded):
    model, tokenizer = loaded
    expected = ChatSession(model, tokenizer, max_new_tokens=8, temperature=0).reply("hello")
    assert expected
    with _chat_in_terminal(chat_dir) as terminal:
        assert "/reset clears the conversation, Ctrl-D quits" in terminal.expect("you> ")
        terminal.send("hello\r")
        answer = terminal.expect("you> ")
        assert expected in answer  # the same greedy reply as ChatSession's, streamed
        terminal.send("/reset\r")
        assert "(conversation cleared)" in terminal.expect("you> ")
        terminal.send("\x04")
        assert terminal.wait() == 0
        assert "Traceback" not in terminal.out


def test_ctrl_c_at_the_prompt_exits_130(chat_dir):
    with _chat_in_terminal(chat_dir) as terminal:
        terminal.expect("you> ")
        # As a person, after the prompt is up. CPython's readline acts on a SIGINT that
        # interrupts its wait for keys; one landing between drawing the prompt and that wait
        # stays pending until the next Ctrl-C (without the pause, about one run in two here). A
        # person whose first press is swallowed presses again, and so does this test.
        time.sleep(1)
        presses = 0
        while presses < 10 and terminal.code is None:
            terminal.send("\x03")
            presses += 1
            terminal.poll(3)
        assert terminal.code == 130, terminal.out  # 128 + SIGINT, as for any interrupted command
        assert "Traceback" not in terminal.out
        print(f"exited 130 after {presses} Ctrl-C")


def test_a_model_without_chat_template_is_a_one_line_error(tmp_path):
    folder = _model_folder(tmp_path / "plain", template=False)
    command = [sys.executable, "-m", "hfmini.cli", "chat", str(folder)]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {folder} has no chat template: fine-tune it on conversations "
        "(prompt/completion or messages data) first, or use `hfmini generate` for plain text"
    ]


NOT_UTF8 = "(that line is not valid UTF-8 (byte 0xe9 at position 3): pass UTF-8 text)"


def _chat_piped(folder, stdin: bytes, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hfmini.cli", "chat", str(folder), "--max_new_tokens", "6"]
    command += ["--temperature", "0"]
    return subprocess.run(
        command, cwd=REPO, env={**ENV, **env}, input=stdin, capture_output=True, timeout=120
    )


@pytest.mark.parametrize(
    "env, notice",
    [
        # A UTF-8 locale, where Python's stdin decodes strictly, and the C locale's escapes.
        ({"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}, NOT_UTF8),
        ({"PYTHONIOENCODING": "utf-8:surrogateescape"}, NOT_UTF8),
    ],
    ids=["strict", "surrogateescape"],
)
def test_a_line_that_is_not_utf8_is_a_notice_and_the_chat_goes_on(chat_dir, loaded, env, notice):
    """Exact output, as a pipe sees it: the banner, the prompt, one reply, the prompt again and
    the newline of Ctrl-D on stdout; on stderr the notice alone (no "Loading weights" bar, no
    attention-mask warning, no traceback)."""
    model, tokenizer = loaded
    reply = ChatSession(model, tokenizer, max_new_tokens=6, temperature=0).reply("hello")
    done = _chat_piped(chat_dir, b"caf\xe9\nhello\n", **env)
    assert done.returncode == 0, done.stderr
    banner = chat.BANNER.format(chat_dir)
    assert done.stdout.decode() == f"{banner}\nyou> you> {reply}\nyou> \n"
    assert done.stderr.decode() == notice + "\n"


@pytest.mark.slow
def test_chat_prints_its_own_lines_only(chat_dir, loaded):
    model, tokenizer = loaded
    reply = ChatSession(model, tokenizer, max_new_tokens=6, temperature=0).reply("hello")
    done = _chat_piped(chat_dir, b"hello\n")
    assert (done.returncode, done.stderr.decode()) == (0, "")
    assert done.stdout.decode() == f"{chat.BANNER.format(chat_dir)}\nyou> {reply}\nyou> \n"
