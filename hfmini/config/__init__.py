"""A run's configuration: three argument groups parsed from `--config FILE.yaml` plus `--key value`
overrides (or `make_config(**keys)` from Python), checked before any work.

    defaults ─► data_args, model_args, train_args ─► run_config (Config) ─► parsing ─► reference

Every module below imports nothing of hfmini above hfmini.errors; the names most callers need
are gathered here.
"""

from hfmini.config.data_args import DataArguments
from hfmini.config.defaults import (
    DEFAULT_MAX_NEW_TOKENS,
    HARNESS_DEFAULT_TASK,
    MODEL_PRESETS,
    SAMPLING_DEFAULTS,
)
from hfmini.config.model_args import ModelArguments
from hfmini.config.parsing import known_keys, make_config, make_parser, parse_config, read_yaml
from hfmini.config.run_config import Config
from hfmini.config.train_args import TrainArguments

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "HARNESS_DEFAULT_TASK",
    "MODEL_PRESETS",
    "SAMPLING_DEFAULTS",
    "Config",
    "DataArguments",
    "ModelArguments",
    "TrainArguments",
    "known_keys",
    "make_config",
    "make_parser",
    "parse_config",
    "read_yaml",
]
