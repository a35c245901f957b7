"""`hfmini chat MODEL_DIR`: a conversation in the terminal with a model that has a chat template.

Each turn renders the whole history with the tokenizer's template (`apply_chat_template`) and
streams the reply with generate's KV-cached `decode` until an end-of-turn or eos token
(`chat_template.stop_token_ids`). The prompt is re-encoded every turn (no cache across turns):
simple, and a prefill of at most one context is cheap at this model size.

A history longer than the context loses its oldest user+assistant pairs (a leading system message
stays); a single message too long for it keeps its most recent tokens, as `hfmini generate` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hfmini.config import DEFAULT_MAX_NEW_TOKENS, SAMPLING_DEFAULTS
from hfmini.errors import HfminiError
from hfmini.models.chat_template import stop_token_ids
from hfmini.models.sampling import (
    _Printer,
    check_prompt,
    check_sampling,
    decode,
    load_model_and_tokenizer,
    sampling_warpers,
    seeded_generator,
)
from hfmini.models.size import context_length

PROMPT = "you> "
BANNER = "chatting with {}: type a message and Enter; /reset clears the conversation, Ctrl-D quits"


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class ChatSession:
    """A conversation with one model: the message history, rendered and extended turn by turn."""

    def __init__(
        self,
        model,
        tokenizer,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = SAMPLING_DEFAULTS["temperature"],
        top_k: int | None = SAMPLING_DEFAULTS["top_k"],
        top_p: float | None = SAMPLING_DEFAULTS["top_p"],
        system: str | None = None,
        seed: int | None = None,
    ):
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.sample = max_new_tokens, temperature > 0
        self.warpers = sampling_warpers(temperature, top_k, top_p)
        self.stops = stop_token_ids(tokenizer)
        self.context = context_length(model.config)
        # The prompt leaves room for a whole reply, but never more than half the context to it,
        # so that a max_new_tokens beyond the context (generate's default length on a 64-token
        # model) still leaves history to talk about; such a reply stops at the context's end.
        self.prompt_budget = self.context - min(max_new_tokens, self.context // 2)
        self.system = system
        # Its own generator: seeded once, the whole conversation reproduces, whatever else draws.
        self.generator = seeded_generator(model, seed)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (a system message stays)."""
        self.history: list[dict[str, str]] = []
        if self.system is not None:
            self.history.append({"role": "system", "content": self.system})
        self._dropped_said = False

    def _render(self) -> list[int]:
        # return_dict=False: transformers 5 returns a BatchEncoding by default.
        return self.tokenizer.apply_chat_template(
            self.history, add_generation_prompt=True, tokenize=True, return_dict=False
        )

    def prompt_ids(self) -> list[int]:
        """The history rendered with the assistant's generation prompt, fitted to the prompt
        budget: drops the oldest user+assistant pairs from the history for good, then cuts."""
        first = 1 if self.history and self.history[0]["role"] == "system" else 0
        ids = self._render()
        while len(ids) > self.prompt_budget and len(self.history) - first > 2:
            del self.history[first : first + 2]  # one user message and the reply to it
            ids = self._render()
            if not self._dropped_said:
                self._dropped_said = True
                _note(
                    f"(the conversation no longer fits the model's context of {self.context} "
                    "tokens: dropping its oldest turns)"
                )
        if len(ids) > self.prompt_budget:
            _note(
                f"(this message is {len(ids)} tokens with the conversation's, more than the "
                f"{self.prompt_budget} that fit beside a reply: keeping the most recent)"
            )
            ids = ids[-self.prompt_budget :]
        return ids

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> str:
        """Add `user_text`, generate the assistant's answer (streamed to `on_text(str)` as it comes)
        and add it to the history; returns it without special tokens."""
        self.history.append({"role": "user", "content": user_text})
        tokens: list[int] = []
        printer = _Printer(self.tokenizer, on_text) if on_text else None

        def on_token(token: int) -> None:
            tokens.append(token)
            if printer:
                printer.put(token)

        try:
            ids = self.prompt_ids()
            steps = min(self.max_new_tokens, self.context - len(ids))
            decode(
                self.model,
                ids,
                steps,
                self.warpers,
                self.sample,
                self.stops,
                on_token,
                generator=self.generator,
            )
        finally:
            # Also on Ctrl-C mid-reply: the part already shown stays as the assistant's turn, so the
            # history matches the screen (and user and assistant keep alternating).
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            self.history.append({"role": "assistant", "content": text})
        if printer:
            printer.end()
        return text


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_chat(args: argparse.Namespace) -> None:
    """The REPL behind `hfmini chat`. Ctrl-D at the prompt ends it normally; Ctrl-C at the prompt
    propagates (after a newline) so that `hfmini` exits 130, as for any command interrupted;
    Ctrl-C during a reply only stops that reply."""

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on Windows
        pass

    import transformers

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    # Its "Loading weights" bar, as training does: the banner says which model is loaded.
    transformers.utils.logging.disable_progress_bar()
    model, tokenizer = load_model_and_tokenizer(args.model_dir)
    if not tokenizer.chat_template:
        raise HfminiError(
            f"{args.model_dir} has no chat template: fine-tune it on conversations "
            "(prompt/completion or messages data) first, or use `hfmini generate` for plain text"
        )
    session = ChatSession(
        model,
        tokenizer,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        seed=args.seed,
    )
    print(BANNER.format(args.model_dir), flush=True)
    # A line that is not UTF-8 keeps its bytes (as surrogates, which check_prompt names) instead
    # of raising inside input() and losing the lines already read behind it.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            raise
        except UnicodeDecodeError as err:  # a strict stdin: the line's bytes are not UTF-8
            _note(
                f"(that line is not valid UTF-8 (byte {err.object[err.start]:#04x}): type it again)"
            )
            continue
        try:
            check_prompt(line)  # a surrogateescape stdin (C locale) keeps bad bytes as surrogates
        except HfminiError as err:
            _note(f"({str(err).replace('--prompt', 'that line')})")
            continue
        if not line.strip():
            continue
        if line.strip() == "/reset":
            session.reset()
            print("(conversation cleared)", flush=True)
            continue
        try:
            session.reply(line, on_text=_write)
        except KeyboardInterrupt:
            _write(" [stopped]")
        _write("\n")
