"""ONNX export: a finished GPT-2 model as onnxruntime and transformers.js run it, in the Hub layout.

    OUTPUT_DIR/config.json, generation_config.json, tokenizer.json, tokenizer_config.json (as trained)
    OUTPUT_DIR/onnx/model.onnx   fp32, one graph for the prompt and for every later token:
      inputs   input_ids, position_ids          (batch_size, sequence_length) int64
               attention_mask                   (batch_size, total_sequence_length) int64
               past_key_values.{i}.key / .value (batch_size, n_head, past_sequence_length, head_dim)
      outputs  logits                           (batch_size, sequence_length, vocab_size)
               present.{i}.key / .value         (batch_size, n_head, total_sequence_length, head_dim)

The names and axes are optimum's, which transformers.js reads: it sizes the first step's empty past
from the graph's input shapes ("batch_size" from the prompt, n_head and head_dim as fixed numbers,
any other name 0), feeds position_ids because the graph declares them, and renames each present.*
output to past_key_values.* for the next step. `hfmini export OUTPUT_DIR --format onnx` writes it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

from hfmini.errors import HfminiError
from hfmini.models.pretrained import load_for_inference, read_json
from hfmini.outputs.hub import check_finished_folder
from hfmini.run_folder import ADAPTER_CONFIG, CONFIG_FILE

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"  # transformers.js's file for dtype fp32 (model_quantized.onnx is q8)
# batch_size, sequence_length, past_sequence_length of the example the exporter traces: all
# different and above 1, so that torch.export keeps each a symbol instead of a constant.
EXAMPLE_SHAPE = (2, 3, 5)
LOGITS_TOLERANCE = 1e-3  # onnxruntime against PyTorch after export; fp32 agrees to about 1e-6


def check_exportable(output_dir: Path) -> dict:
    """Fail unless `output_dir` holds finished full GPT-2 weights; returns its config.json."""
    check_finished_folder(output_dir)
    if (output_dir / ADAPTER_CONFIG).is_file():
        raise HfminiError(
            f"{output_dir} holds a LoRA adapter, not full weights: ONNX needs the merged model; "
            "train with merge_adapters: true (the default), or merge it with peft's "
            "merge_and_unload and save_pretrained, then export that folder"
        )
    config = read_json(output_dir / CONFIG_FILE)
    if config.get("model_type") != "gpt2":
        raise HfminiError(
            f"{output_dir} is a {config.get('model_type')!r} model: the ONNX export handles the "
            "GPT-2 architecture (model_type gpt2) that hfmini trains"
        )
    return config


def import_exporter():
    """torch.onnx's dynamo exporter needs onnx and onnxscript; the check after it, onnxruntime."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise HfminiError(
            f"the ONNX export needs {err.name or 'onnx'}: pip install 'hfmini[onnx]'"
        ) from None


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """(input names, output names) in the order the wrapper takes and returns them."""
    past = [f"past_key_values.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def decoder_with_past(model):
    """GPT2LMHeadModel behind flat tensors: the past as 2 × n_layer tensors in, logits and the
    presents out, since an ONNX graph has tensors for inputs, not a transformers Cache object."""
    import torch
    from transformers import DynamicCache

    class DecoderWithPast(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.model.config)
            for layer in range(len(past) // 2):  # appending to an empty cache stores the past
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
            presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
            return (out.logits, *presents)

    return DecoderWithPast(model).eval()


def example_inputs(config, batch: int, length: int, past_length: int) -> tuple:
    """Inputs for one step after `past_length` tokens: random ids and past, a full mask."""
    import torch

    head_dim = config.n_embd // config.n_head
    ids = torch.randint(0, config.vocab_size, (batch, length))
    mask = torch.ones(batch, past_length + length, dtype=torch.long)
    positions = torch.arange(past_length, past_length + length).expand(batch, length).contiguous()
    past = [
        torch.randn(batch, config.n_head, past_length, head_dim) for _ in range(2 * config.n_layer)
    ]
    return (ids, mask, positions, *past)


def export_graph(wrapper, config, path: Path) -> None:
    """Trace `wrapper` with the dynamo exporter (torch.export, then onnxscript) into `path`.

    Why dynamo: torch 2.13 still has the TorchScript exporter (dynamo=False), but tracing runs
    the cache and mask code's Python branches (`keys.numel() == 0`, the padding checks) once and
    keeps them, and on transformers 5 its graph's logits differed from PyTorch's by about 0.2,
    even at the traced shapes; dynamo's matched to about 1e-7 at past lengths 0 to 7. It costs
    tens of seconds on a CPU where TorchScript took about 2.
    """
    import torch

    inputs, outputs = io_names(config.n_layer)
    tokens = {0: "batch_size", 1: "sequence_length"}
    past = {0: "batch_size", 2: "past_sequence_length"}
    shapes = (tokens, {0: "batch_size", 1: "total_sequence_length"}, tokens)
    shapes += (tuple(past for _ in range(2 * config.n_layer)),)  # the *past of forward
    # Quiet: its notes (axis names merged, torchvision ops skipped) ask nothing of the user.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                example_inputs(config, *EXAMPLE_SHAPE),
                dynamo=True,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=shapes,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    # One file: GPT-2 models hfmini trains are far below protobuf's 2 GB limit on a file.
    program.save(str(path), external_data=False)


def check_against_torch(wrapper, config, path: Path) -> float:
    """The largest logit difference between onnxruntime on `path` and PyTorch, for a prompt of 4
    tokens (empty past) and then one more token; fails above LOGITS_TOLERANCE."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for past_length, length in ((0, 4), (4, 1)):
        feed = example_inputs(config, 1, length, past_length)
        got = session.run(None, dict(zip(names, (t.numpy() for t in feed), strict=True)))
        with torch.no_grad():
            want = wrapper(*feed)
        worst = max(
            worst, *(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
        )
    if worst > LOGITS_TOLERANCE:
        raise HfminiError(
            f"the exported {ONNX_FILE} differs from the PyTorch model by {worst:.2g} (more than "
            f"{LOGITS_TOLERANCE}): this torch/onnxscript pair exports GPT-2 wrongly; try another "
            "torch or onnxscript version"
        )
    return worst


def export_onnx(output_dir: str | Path) -> Path:
    """Write OUTPUT_DIR/onnx/model.onnx for a finished GPT-2 run; returns its path.

    Written to a temporary file in onnx/ and renamed, so an interrupted export leaves the
    previous model.onnx (or none), never half a file.
    """
    out = Path(output_dir)
    check_exportable(out)
    import_exporter()
    import torch

    model, _ = load_for_inference(out)  # fp32, as transformers.js runs dtype fp32
    wrapper = decoder_with_past(model)
    target = out / ONNX_DIR / ONNX_FILE
    target.parent.mkdir(exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=target.parent)
    os.close(handle)
    try:
        with torch.random.fork_rng():  # the caller's random state stays as it was
            torch.manual_seed(0)  # the example tensors: the same graph from run to run
            export_graph(wrapper, model.config, Path(temporary))
            check_against_torch(wrapper, model.config, Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a web server's user
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
