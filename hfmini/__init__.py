"""hfmini: train miniature GPT-2 models from scratch on the Hugging Face stack.

One package per layer, imports only running down (tests/test_layers.py keeps it so):

    errors, cache, run_folder → config → models → data → outputs → training → serving
      → api, cli, shakespeare, bench (the commands)

The Python API (`from hfmini import make_config, train, ...`, see `hfmini.api`) is imported on
first use, so that `import hfmini` and `hfmini --help` stay instant.
"""

__version__ = "0.1.0"

_API = (
    "MODEL_PRESETS",
    "SAMPLING_DEFAULTS",
    "Config",
    "DataArguments",
    "HfminiError",
    "ModelArguments",
    "TrainArguments",
    "build_model",
    "count_parameters",
    "evaluate",
    "generate",
    "load_model",
    "make_config",
    "prepare_data",
    "read_metrics",
    "train",
)
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        # On first use: the API imports torch, which `import hfmini` and `hfmini --help` avoid.
        from hfmini import api

        return getattr(api, name)
    raise AttributeError(f"module 'hfmini' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
