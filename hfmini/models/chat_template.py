"""Chat templates: how a conversation becomes text, and which token ends the assistant's turn.

The template a run uses, in order: `chat_template` (a file or a Jinja string), else the model's
own (its tokenizer's), else DEFAULT_CHAT_TEMPLATE:

    <|im_start|>system\\n{content}<|im_end|>\\n      (one block per message, any role)
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n                          ← add_generation_prompt

The template is set on the tokenizer, so `save_pretrained` writes it into tokenizer_config.json
and `apply_chat_template` or `pipeline("text-generation")` with messages work without hfmini.
Special tokens the template writes (`<|...|>`, literal or built from the role) that the
vocabulary lacks are added as special tokens: they encode as one id each and `skip_special_tokens` removes them.

The end of a turn is read off the template itself (`end_of_turn_token`): the first special token
rendered after an assistant message. Generation stops there (`stop_token_ids`).
"""

from __future__ import annotations

import re

from hfmini.config.chat_template_option import read_chat_template
from hfmini.errors import HfminiError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

KNOWN_ROLES = ("system", "user", "assistant", "tool")

# A literal special token in a template: <|im_start|>, <|eot_id|>, ...
_SPECIAL_LITERAL = re.compile(r"<\|[A-Za-z0-9_.:-]+\|>")

# Content no real conversation holds, to find where a rendered assistant message ends.
_PROBE = "hfmini-probe-answer"


def apply_template(tokenizer, option: str | None) -> str:
    """Set the run's chat template on `tokenizer` (see the module docstring for the order) and
    add the special tokens it writes. Returns where the template came from, for the log."""
    if option is not None:
        tokenizer.chat_template = read_chat_template(option)
        origin = "the chat_template option"
    elif tokenizer.chat_template:
        origin = "the model's own"
    else:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        origin = "hfmini's default (<|im_start|> ... <|im_end|>)"
    check_template_parses(tokenizer.chat_template, origin)
    add_template_tokens(tokenizer)
    return origin


def check_template_parses(template: str, origin: str) -> None:
    """A template that is not valid Jinja is one line now, not a traceback at the first row."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(template)
    except TemplateError as err:
        line = getattr(err, "lineno", None)
        where = f" (line {line} of the template)" if line else ""
        raise HfminiError(
            f"the chat template from {origin} is not valid Jinja{where}: {err.message or err}: "
            "fix it, or leave chat_template unset for hfmini's default"
        ) from None


def template_tokens(tokenizer) -> list[str]:
    """The `<|...|>` tokens the tokenizer's template writes, in order of first appearance: its
    literals, and those it builds (`<|{{ role }}|>`), found in a rendered probe conversation."""
    found = _SPECIAL_LITERAL.findall(tokenizer.chat_template)
    probe = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": _PROBE},
        {"role": "user", "content": "u"},
    ]
    for messages in (probe, probe[1:]):  # some templates refuse a system message
        try:
            rendered = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template's own raise_exception(); the literals still count
            continue
        found += _SPECIAL_LITERAL.findall(rendered)
        break
    return list(dict.fromkeys(found))


def add_template_tokens(tokenizer) -> list[str]:
    """Add the template's special tokens that the vocabulary lacks; returns those added.

    A token already in the vocabulary as a plain piece is marked special (so it decodes away with
    skip_special_tokens) without changing its id.
    """
    if not isinstance(tokenizer.chat_template, str):
        return []
    vocab = tokenizer.get_vocab()
    wanted = template_tokens(tokenizer)
    special = set(tokenizer.all_special_tokens)
    missing = [token for token in wanted if token not in special]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return [token for token in missing if token not in vocab]


def end_of_turn_token(tokenizer) -> str | None:
    """The special token a rendered assistant message ends with (`<|im_end|>`, `<|eot_id|>`,
    ...), or None when the template writes none after it."""
    if not tokenizer.chat_template:
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    tail = rendered[rendered.rfind(_PROBE) + len(_PROBE) :]
    found = [(tail.find(token), token) for token in special_strings(tokenizer) if token in tail]
    return min(found)[1] if found else None


def special_strings(tokenizer) -> list[str]:
    """Every special or added token's text (eos, pad, template tokens)."""
    added = [token.content for token in tokenizer.added_tokens_decoder.values()]
    return list(dict.fromkeys([*tokenizer.all_special_tokens, *added]))


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generation: eos, and the end-of-turn token when a template has one."""
    ids = [tokenizer.eos_token_id]
    end = end_of_turn_token(tokenizer)
    if end is not None:
        ids.append(tokenizer.convert_tokens_to_ids(end))
    return list(dict.fromkeys(i for i in ids if i is not None))
