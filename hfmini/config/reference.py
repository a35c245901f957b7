"""docs/configuration.md, generated from the argument groups' help texts (`make docs`)."""

from __future__ import annotations

import dataclasses

from hfmini.config.parsing import ARG_GROUPS


def reference_markdown() -> str:
    """docs/configuration.md: every key with its default and help, from the dataclasses alone."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the dataclasses in `hfmini/config/` by `make docs`; a test checks that",
        "it is current. Precedence: command line > YAML (`--config`) > these defaults.",
    ]
    for group in ARG_GROUPS:
        lines += ["", f"## {group.__name__}", "", " ".join((group.__doc__ or "").split()), ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(group):
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            meaning = f.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{default!r}` | {meaning} |")
    return "\n".join(lines) + "\n"
