"""The `chat_template` option read and compiled as the config is checked: a missing file or bad
Jinja is one line before any work (hfmini.models.chat_template applies it)."""

from __future__ import annotations

from pathlib import Path

from hfmini.errors import HfminiError


def read_chat_template(value: str) -> str:
    """The `chat_template` option: a path to a Jinja file, or the template itself."""
    if "{%" in value or "{{" in value:
        template = value
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise HfminiError(
                f"chat_template {value!r} is neither a file nor a Jinja template: give the path "
                "of a .jinja file or the template text (with {% ... %} / {{ ... }})"
            )
        try:
            template = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise HfminiError(
                f"chat_template {path} cannot be read ({reason}): check the file"
            ) from None
    _check_compiles(template, value)
    return template


def _check_compiles(template: str, origin: str) -> None:
    from jinja2 import TemplateSyntaxError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(template)
    except TemplateSyntaxError as err:
        shown = origin if len(origin) <= 60 else origin[:57] + "..."
        raise HfminiError(
            f"chat_template {shown!r} is not a valid Jinja template (line {err.lineno}: "
            f"{err.message}): fix the template"
        ) from None
