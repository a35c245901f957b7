"""The `hfmini` command: train, generate, chat, eval, plot, playground, export, push.

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

from hfmini.config import DEFAULT_MAX_NEW_TOKENS, HARNESS_DEFAULT_TASK, SAMPLING_DEFAULTS
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
    ev.add_argument(
        "--tasks",
        nargs="?",
        const=HARNESS_DEFAULT_TASK,
        default=None,
        help="run lm-evaluation-harness tasks instead (comma-separated names); alone: "
        f"{HARNESS_DEFAULT_TASK}, the model's own validation text, offline",
    )
    ev.add_argument("--limit", type=int, default=None, help="lm-eval: at most this many examples")

    plot = commands.add_parser("plot", help="overlay the loss curves of several runs")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("-o", "--output", default="loss_curves.png")

    play = commands.add_parser(
        "playground", help="a local web page to sample from (and chat with) trained models"
    )
    play.add_argument("model_dirs", nargs="+", help="model folders; several: a choice between them")
    play.add_argument(
        "--host", default="127.0.0.1", help="127.0.0.1: this computer only; 0.0.0.0: your network"
    )
    play.add_argument("--port", type=int, default=7860, help="0: the first free one from 7860")
    play.add_argument(
        "--max_new_tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="the page's starting length",
    )
    play.add_argument(
        "--static",
        metavar="SITE_DIR",
        default=None,
        help="instead of serving: write a static page that runs the models in the browser "
        "(transformers.js; export each with --format onnx first)",
    )
    play.add_argument(
        "--js_dir",
        help="with --static: node_modules of an npm install of @huggingface/transformers, copied "
        "beside the page so that it works offline (default: $HFMINI_TRANSFORMERS_JS; else a CDN)",
    )

    export = commands.add_parser(
        "export",
        help="the model for other clients: GGUF (llama.cpp, Ollama, LM Studio), ONNX (the browser)",
    )
    export.add_argument("output_dir", help="a finished training output_dir")
    export.add_argument("--format", required=True, choices=["gguf", "onnx"])
    export.add_argument(
        "--outtype",
        default="f16",
        choices=["f32", "f16", "q8_0"],
        help="GGUF weight type (f16, as llama.cpp's converter; q8_0 is about half its size)",
    )

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
    push.add_argument(
        "--gguf", action="store_true", help="upload gguf/ too (hfmini export --format gguf)"
    )
    return parser


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling flags `generate` and `chat` share."""
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument(
        "--temperature", type=float, default=SAMPLING_DEFAULTS["temperature"], help="0: greedy"
    )
    parser.add_argument("--top_k", type=int, default=SAMPLING_DEFAULTS["top_k"])
    parser.add_argument("--top_p", type=float, default=SAMPLING_DEFAULTS["top_p"])
    parser.add_argument("--seed", type=int, default=None)


def quiet_libraries() -> None:
    """transformers' "Loading weights" bar and datasets' "Generating train split", "Tokenizing"
    bars: they tell the user of a one-line command nothing to act on (their warnings still show)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()


def cmd_generate(args) -> None:
    # Imported when the command runs: torch and transformers load only then (--help is instant).
    from hfmini.models.sampling import (
        check_prompt,
        check_sampling,
        generate_text,
        load_model_and_tokenizer,
        stream_to_stdout,
    )

    # before loading anything
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    check_prompt(args.prompt)
    quiet_libraries()
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
    # Imported when the command runs: torch and transformers load only then (--help is instant).
    from hfmini.serving.chat import run_chat

    run_chat(args)


def cmd_eval(args) -> dict:
    if args.tasks is not None:
        return cmd_eval_harness(args)
    # Imported when the command runs: torch and transformers load only then (--help is instant).
    from hfmini.training.evaluation import evaluate_model

    quiet_libraries()
    metrics = evaluate_model(
        args.model_dir, args.validation_file, args.text_column, args.block_size, args.batch_size
    )
    print(json.dumps(metrics))
    return metrics


def cmd_eval_harness(args) -> dict:
    # Imported when the command runs: lm-eval is optional (hfmini[eval]).
    from hfmini.training.harness import run_harness

    quiet_libraries()
    results = run_harness(args.model_dir, args.tasks.split(","), args.batch_size, args.limit)
    print(json.dumps(results))
    return results


def cmd_export(args) -> None:
    # Imported when the command runs: gguf and onnx are optional (hfmini[gguf], hfmini[onnx]).
    if args.format == "gguf":
        from hfmini.outputs.gguf import export_gguf

        print(export_gguf(args.output_dir, args.outtype))
    else:
        from hfmini.outputs.onnx import export_onnx

        quiet_libraries()
        print(export_onnx(args.output_dir))


def cmd_plot(args) -> None:
    # Imported when the command runs: torch and transformers load only then (--help is instant).
    from hfmini.outputs.plot import plot_runs

    print(plot_runs(args.run_dirs, args.output))


def cmd_playground(args) -> None:
    if args.static is not None:
        from hfmini.serving.static_page import write_static_page

        print(write_static_page(args.model_dirs, args.static, args.max_new_tokens, args.js_dir))
        return
    try:  # gradio is optional (hfmini[playground]): imported when the command runs
        from hfmini.serving.playground import serve
    except ImportError as err:
        if err.name != "gradio":
            raise
        raise HfminiError("the playground needs gradio: pip install 'hfmini[playground]'") from None
    serve(args.model_dirs, args.host, args.port, args.max_new_tokens)


def cmd_push(args) -> str:
    # Imported when the command runs: torch and transformers load only then (--help is instant).
    from hfmini.outputs.hub import (
        check_finished_folder,
        check_gguf_folder,
        check_hub_access,
        push_folder,
    )

    # Everything that can be checked locally first, the Hub (token, network) last; no upload
    # starts unless all pass. The file selection is training's: model files, never checkpoints/.
    check_finished_folder(args.output_dir)
    if args.gguf:
        check_gguf_folder(args.output_dir)
    check_hub_access(args.hub_model_id, alternative=None)
    # The folder's name only: a full path would put the user's home into public history.
    message = f"hfmini: upload {Path(args.output_dir).resolve().name}"
    url = push_folder(args.output_dir, args.hub_model_id, args.private, message, gguf=args.gguf)
    print(url)
    return url


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the console script: this process's command line is ours
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        if own_process:  # Ctrl-C during the imports below ends on one line, as train.py's does
            from hfmini.training.interrupt import interrupt_during_startup

            interrupt_during_startup()
        # Imported when the command runs: torch and transformers load only then.
        from hfmini.training.trainer import main as train_main

        return train_main(argv[1:])
    args = make_parser().parse_args(argv)
    try:
        commands = {
            "generate": cmd_generate,
            "chat": cmd_chat,
            "eval": cmd_eval,
            "plot": cmd_plot,
            "playground": cmd_playground,
            "export": cmd_export,
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
