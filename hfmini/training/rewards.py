"""Reward functions for GRPO, named and called as TRL's GRPOTrainer calls them.

    reward_funcs: ["recipes/shakespeare-grpo/rewards.py:scansion", "mypkg.rewards:length"]
    ─► load_reward_funcs: each a Python callable (a file path, or an importable module)
    ─► score(prompts, completions, completion_ids, **columns) → (N, F) rewards, NaN for None

The signature is TRL's: `fn(prompts, completions, completion_ids, **kwargs) -> list[float | None]`
with one value per completion; `prompts` and every other column of the rows repeat once per
completion; completions are strings, or for conversational prompts
`[{"role": "assistant", "content": text}]`. None means "not scored by this function" (the
weighted sum skips it, as TRL's nansum does); a row no function scores gets advantage 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hfmini.errors import HfminiError


@dataclass
class RewardFunction:
    name: str  # as the metrics name it: rewards/<name>/mean
    spec: str  # as given in reward_funcs
    fn: Callable


def _load_file(path: Path, spec: str):
    module_name = f"hfmini_rewards_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:  # the user's file: its error is theirs to see, in one line
        del sys.modules[module_name]
        raise HfminiError(
            f"reward function file {path} failed to load ({type(err).__name__}: {err}): fix it "
            f"(named in reward_funcs as {spec!r})"
        ) from None
    return module


def load_reward_function(spec: str) -> RewardFunction:
    """`path/to/file.py:function` or `package.module:function` as a RewardFunction."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise HfminiError(
            f"reward function {spec!r} is not FILE.py:FUNCTION or package.module:FUNCTION: "
            "name the function after a colon"
        )
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise HfminiError(
                f"reward function file {where} not found (in reward_funcs {spec!r}): check the "
                "path (relative to where the command runs)"
            )
        module = _load_file(path, spec)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise HfminiError(
                f"reward function module {where!r} cannot be imported ({err}): install it or "
                "give a file path, path/to/rewards.py:function"
            ) from None
    fn = getattr(module, name, None)
    if fn is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and not n.startswith("_") and v.__module__ == module.__name__
        )
        listed = f": it defines {', '.join(found)}" if found else ""
        raise HfminiError(f"reward function {name!r} not found in {where}{listed}")
    if not callable(fn):
        raise HfminiError(f"reward function {spec!r} is a {type(fn).__name__}, not a function")
    return RewardFunction(name=name, spec=spec, fn=fn)


def load_reward_funcs(specs: list[str]) -> list[RewardFunction]:
    functions = [load_reward_function(spec) for spec in specs]
    names = [f.name for f in functions]
    for function in functions:
        if names.count(function.name) > 1:
            raise HfminiError(
                f"two reward functions are named {function.name!r}: their metrics "
                f"(rewards/{function.name}/mean) would mix; rename one"
            )
    return functions


def shown_prompt(prompt) -> str:
    """A prompt in an error message: its last message's text, or the text, shortened."""
    text = prompt[-1].get("content", "") if isinstance(prompt, list) and prompt else str(prompt)
    text = " ".join(str(text).split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def call_reward(function: RewardFunction, prompts, completions, completion_ids, columns) -> list:
    """One function's rewards for N completions as floats (NaN where it returned None)."""
    try:
        values = function.fn(
            prompts=prompts, completions=completions, completion_ids=completion_ids, **columns
        )
    except Exception as err:  # the user's code: one line naming it and the prompt
        raise HfminiError(
            f"reward function {function.spec} raised {type(err).__name__}: {err} (scoring "
            f"completions of the prompt {shown_prompt(prompts[0])}): fix the function"
        ) from None
    if not isinstance(values, list | tuple) and not (
        isinstance(values, torch.Tensor) and values.dim() == 1
    ):
        raise HfminiError(
            f"reward function {function.spec} returned a {type(values).__name__}: it must "
            f"return a list of {len(completions)} numbers (or None), one per completion"
        )
    values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
    if len(values) != len(completions):
        raise HfminiError(
            f"reward function {function.spec} returned {len(values)} rewards for "
            f"{len(completions)} completions: return one number (or None) per completion"
        )
    rewards = []
    for value in values:
        if value is None:
            rewards.append(math.nan)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
            value = f"{value!r}"
        if not math.isfinite(number):
            raise HfminiError(
                f"reward function {function.spec} returned {value} for a completion of the "
                f"prompt {shown_prompt(prompts[0])}: return a finite number, or None to skip"
            )
        rewards.append(number)
    return rewards


def score(functions: list[RewardFunction], prompts, completions, completion_ids, columns):
    """(N, F) float32 rewards of N completions by F functions; NaN where one returned None."""
    table = [call_reward(f, prompts, completions, completion_ids, columns) for f in functions]
    return torch.tensor(table, dtype=torch.float32).T.reshape(len(completions), len(functions))
