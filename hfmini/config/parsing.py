"""Parsing a run's configuration: `--config FILE.yaml` plus `--key value` overrides, or keys from
Python (`make_config`), all through one HfArgumentParser over the three argument groups.

Precedence is command line > YAML > dataclass defaults. YAML files are flat and use the same keys
as the command line; an unknown key in either is an error that suggests the nearest known key.
Names follow `transformers.TrainingArguments` wherever one exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from hfmini.config.data_args import DataArguments
from hfmini.config.model_args import ModelArguments
from hfmini.config.run_config import Config
from hfmini.config.train_args import TrainArguments
from hfmini.errors import HfminiError

ARG_GROUPS = (DataArguments, ModelArguments, TrainArguments)


def known_keys() -> list[str]:
    return [f.name for group in ARG_GROUPS for f in dataclasses.fields(group)]


def _unknown_key_error(key: str, where: str) -> HfminiError:
    nearest = difflib.get_close_matches(key, known_keys(), n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else "; run with --help to list the keys"
    return HfminiError(f"unknown config key {key!r} {where}{hint}")


def read_yaml(path: str | Path, name: str, fix: str):
    """The values of a YAML file; one that is not UTF-8 or not YAML is a one-line error naming the
    file as `name` and ending in `fix`."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise HfminiError(
            f"{name} is not UTF-8 text (byte {err.object[err.start]:#04x} at position "
            f"{err.start}): {fix}"
        ) from None
    except yaml.YAMLError as err:
        first_line = str(err).splitlines()[0]
        raise HfminiError(f"{name} is not valid YAML ({first_line}): {fix}") from None


def _yaml_to_argv(path: str) -> list[str]:
    """Turn a flat YAML file into `--key value` strings so argparse type-checks them too."""
    if not os.path.isfile(path):
        raise HfminiError(f"config file {path!r} not found: check the path given to --config")
    values = read_yaml(path, f"config file {path}", "save it as UTF-8 YAML") or {}
    if not isinstance(values, dict):
        raise HfminiError(f"config file {path} must be a flat mapping of key: value")
    return _values_to_argv(values, f"in {path}")


def _values_to_argv(values: dict, where: str) -> list[str]:
    keys = set(known_keys())
    list_keys = {
        f.name for group in ARG_GROUPS for f in dataclasses.fields(group) if "list" in str(f.type)
    }
    argv: list[str] = []
    for key, value in values.items():
        if key not in keys:
            raise _unknown_key_error(str(key), where)
        if value is None:
            continue
        if isinstance(value, list) and key not in list_keys:
            raise HfminiError(
                f"{key} takes one value, got the list {value} {where}: write {key}: VALUE"
            )
        items = value if isinstance(value, list) else [value]
        texts = [str(v).lower() if isinstance(v, bool) else str(v) for v in items]
        if len(texts) == 1:
            # One token, `--key=value`: a value that starts with "-" (-inf, a run_name) is not
            # taken for a flag by argparse.
            argv.append(f"--{key}={texts[0]}")
        else:
            argv += [f"--{key}", *texts]
    return argv


def make_parser():
    """The HfArgumentParser over all three groups; shared by the CLI, the recipe and tests."""
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        def error(self, message: str):  # argparse would print usage and exit; we want one line
            raise HfminiError(f"{message} (see --help)")

    parser = _Parser(ARG_GROUPS, prog="hfmini train")
    parser.add_argument("--config", default=None, help="A flat YAML file of key: value.")
    return parser


def _check_cli_keys(argv: list[str]) -> None:
    keys = set(known_keys()) | {"config", "help"}
    for token in argv:
        if token.startswith("--"):
            # HfArgumentParser also registers dash forms (--max-steps), and --help lists them.
            key = token[2:].split("=", 1)[0].replace("-", "_")
            if key not in keys:
                raise _unknown_key_error(key, "on the command line")


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse `[--config FILE] [--key value ...]` into a validated Config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _check_cli_keys(argv)
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise HfminiError("--config needs a YAML file path")
        config_path = argv[index + 1]
        del argv[index : index + 2]
    else:
        for token in argv:
            if token.startswith("--config="):
                config_path = token.split("=", 1)[1]
                argv.remove(token)
                break
    yaml_argv = _yaml_to_argv(config_path) if config_path else []
    parser = make_parser()
    # argparse keeps the last occurrence of a flag, so command-line values override the YAML.
    namespace, remaining = parser.parse_known_args(yaml_argv + argv)
    if remaining:
        raise HfminiError(f"unexpected arguments {' '.join(remaining)} (see --help)")
    values = vars(namespace)
    values.pop("config", None)
    groups = []
    for group in ARG_GROUPS:
        names = {f.name for f in dataclasses.fields(group) if f.init}
        groups.append(group(**{k: v for k, v in values.items() if k in names}))
    return Config(*groups)


def make_config(config_file: str | Path | None = None, **values: Any) -> Config:
    """A Config from Python: `make_config(model_size="micro", max_steps=200)`, optionally on top of
    a recipe (`make_config("recipes/tiny/config.yaml", max_steps=50)`). The keys and checks are
    exactly those of the YAML and the command line: the values go through the same parser."""
    argv = ["--config", str(config_file)] if config_file is not None else []
    return parse_config(argv + _values_to_argv(values, "passed to make_config"))
