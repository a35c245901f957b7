"""The `hfmini` command: train, generate, chat, eval, plot, push.

`push` uploads a finished run trained offline, the same files and checks as --push_to_hub.

Heavy imports (torch, transformers) happen inside each command, so `hfmini --help` is instant.
Every command prints user mistakes as one `error: ...` line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from hfmini.config import SAMPLING_DEFAULTS
from hfmini.errors import HfminiError


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfmini", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "train",
        add_help=False,
        help="train a model: hfmini train --config recipes/tiny/config.yaml [--key value ...]",
    )

    gen = commands.add_parser("generate", help="stream text from a trained model")
    gen.add_argument("model_dir", help="a training output_dir (or any GPT-2 style folder)")
    gen.add_argument("--prompt", default="", help="text to continue ('' starts a new document)")
    add_sampling_arguments(gen)

    chat = commands.add_parser(
        "chat", help="talk with a chat model (one fine-tuned on conversations) in the terminal"
    )
    chat.add_argument("model_dir", help="a model folder with a chat template")
    add_sampling_arguments(chat)

    ev = commands.add_parser("eval", help="validation loss, perplexity and bits per byte")
    ev.add_argument("model_dir")
    ev.add_argument(
        "--validation_file",
        nargs="+",
        default=None,
        help="text to score; default: the validation split the model was trained with",
    )
    ev.add_argument("--text_column", default=None)
    ev.add_argument("--block_size", type=int, default=None, help="default: the model's context")
    ev.add_argument("--batch_size", type=int, default=16)

    plot = commands.add_parser("plot", help="overlay the loss curves of several runs")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("-o", "--output", default="loss_curves.png")

    push = commands.add_parser(
        "push", help="upload a finished run to the Hugging Face Hub, as --push_to_hub would have"
    )
    push.add_argument("output_dir", help="a finished training output_dir, or a peft adapter folder")
    push.add_argument("--hub_model_id", required=True, help="user/name on the Hub")
    push.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (an existing repo keeps its visibility)",
    )
    return parser


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling flags `generate` and `chat` share."""
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument(
        "--temperature", type=float, default=SAMPLING_DEFAULTS["temperature"], help="0: greedy"
    )
    parser.add_argument("--top_k", type=int, default=SAMPLING_DEFAULTS["top_k"])
    parser.add_argument("--top_p", type=float, default=SAMPLING_DEFAULTS["top_p"])
    parser.add_argument("--seed", type=int, default=None)


def cmd_generate(args) -> None:
    from hfmini.generate import (
        check_prompt,
        check_sampling,
        generate_text,
        load_model_and_tokenizer,
        stream_to_stdout,
    )

    # before loading anything
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    check_prompt(args.prompt)
    model, tokenizer = load_model_and_tokenizer(args.model_dir)
    stream_to_stdout(args.prompt)
    generate_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        on_text=stream_to_stdout,
    )
    stream_to_stdout("\n")


def cmd_chat(args) -> None:
    from hfmini.chat import run_chat

    run_chat(args)


def eval_data_args(model_dir: str, validation_file, text_column):
    """The data source recorded in the model's training_config.yaml, with command-line overrides."""
    import dataclasses

    from hfmini.config import DataArguments

    recorded = {}
    config_file = Path(model_dir) / "training_config.yaml"
    if config_file.is_file():
        recorded = _read_training_config(config_file)
    names = {f.name for f in dataclasses.fields(DataArguments)}
    values = {k: v for k, v in recorded.items() if k in names}
    _check_recorded_types(values, config_file)
    if validation_file:
        values["validation_file"] = validation_file
        values["train_file"] = values.get("train_file") or validation_file
        values.pop("dataset_name", None)
        values.pop("dataset_mixture", None)
        values["streaming"] = False  # the file named is scored whole
    if text_column:
        values["text_column"] = text_column
    return DataArguments(**values)


_FIX_RECORD = "fix it, or delete it and pass --validation_file"


def _read_training_config(config_file: Path) -> dict:
    from hfmini.config import read_yaml

    recorded = read_yaml(config_file, str(config_file), _FIX_RECORD) or {}
    if not isinstance(recorded, dict):
        raise HfminiError(
            f"{config_file} must be a mapping of key: value, got a {type(recorded).__name__}: "
            f"{_FIX_RECORD}"
        )
    return recorded


def _check_recorded_types(values: dict, config_file: Path) -> None:
    """Each recorded value has its DataArguments field's type (int, float, str, list[str], None)."""
    import types
    import typing

    from hfmini.config import DataArguments

    def fits(value, kind) -> bool:
        if kind is type(None):
            return value is None
        if typing.get_origin(kind) is list:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if isinstance(value, bool):
            return kind is bool
        return isinstance(value, int | float) if kind is float else isinstance(value, kind)

    hints = typing.get_type_hints(DataArguments)
    for key, value in values.items():
        kinds = typing.get_args(hints[key]) if isinstance(hints[key], types.UnionType) else ()
        kinds = kinds or (hints[key],)
        if not any(fits(value, kind) for kind in kinds):
            names = [k.__name__ if isinstance(k, type) else str(k) for k in kinds]
            expected = " or ".join(names).replace("NoneType", "None")
            raise HfminiError(
                f"{config_file}: {key} must be {expected}, got {value!r}: {_FIX_RECORD}"
            )


def cmd_eval(args) -> dict:
    import torch

    from hfmini.data import prepare_eval_tokens
    from hfmini.evaluation import evaluate_examples, evaluate_stream
    from hfmini.generate import load_model_and_tokenizer
    from hfmini.sft import eval_examples
    from hfmini.tokenizer import token_byte_lengths

    if args.batch_size <= 0:
        raise HfminiError(f"batch_size must be positive, got {args.batch_size}")
    model, tokenizer = load_model_and_tokenizer(args.model_dir)
    block_size = args.block_size or model.config.max_position_embeddings
    if not 2 <= block_size <= model.config.max_position_embeddings:
        raise HfminiError(
            f"block_size must be between 2 and the model's context "
            f"{model.config.max_position_embeddings}, got {block_size}"
        )
    data_args = eval_data_args(args.model_dir, args.validation_file, args.text_column)
    token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float64)
    # Prompt-completion or conversations: the answers are scored, as in training.
    examples = eval_examples(data_args, tokenizer, args.block_size or data_args.block_size)
    if examples is not None:
        pad_id = tokenizer.pad_token_id
        metrics = evaluate_examples(model, examples, pad_id, args.batch_size, token_bytes)
        print(json.dumps(metrics))
        return metrics
    tokens = prepare_eval_tokens(data_args, tokenizer)
    # Bits per byte divides by the bytes of the predicted tokens: all but the first of each block.
    # (A count per token id, not a byte count per token: no tensor the size of the stream.)
    counts = torch.bincount(tokens, minlength=len(token_bytes)).double()
    scored = counts @ token_bytes - token_bytes[tokens[::block_size].long()].sum()
    if scored <= 0:
        raise HfminiError(
            f"the validation text is too short to score: its {tokens.numel()} tokens leave no "
            "text to predict after the first token of a block; add text"
        )
    metrics = evaluate_stream(model, tokens, block_size, args.batch_size, token_bytes)
    print(json.dumps(metrics))
    return metrics


def cmd_plot(args) -> None:
    from hfmini.plot import plot_runs

    print(plot_runs(args.run_dirs, args.output))


def cmd_push(args) -> str:
    from hfmini.hub import check_finished_folder, check_hub_access, push_folder

    # Everything that can be checked locally first, the Hub (token, network) last; no upload
    # starts unless all pass. The file selection is training's: model files, never checkpoints/.
    check_finished_folder(args.output_dir)
    check_hub_access(args.hub_model_id, alternative=None)
    # The folder's name only: a full path would put the user's home into public history.
    message = f"hfmini: upload {Path(args.output_dir).resolve().name}"
    url = push_folder(args.output_dir, args.hub_model_id, args.private, message)
    print(url)
    return url


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from hfmini.train import main as train_main

        return train_main(argv[1:])
    args = make_parser().parse_args(argv)
    try:
        commands = {
            "generate": cmd_generate,
            "chat": cmd_chat,
            "eval": cmd_eval,
            "plot": cmd_plot,
            "push": cmd_push,
        }
        commands[args.command](args)
    except HfminiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`hfmini generate ... | head`): end quietly, as Unix tools do.
        # Python flushes stdout once more at exit; /dev/null takes that write instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # 141, what a shell reports for a tool ended by SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
