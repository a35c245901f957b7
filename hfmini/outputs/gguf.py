"""GGUF for llama.cpp, Ollama and LM Studio: one file with the weights, the hyperparameters and
the tokenizer, written from a finished output_dir by `hfmini export OUTPUT_DIR --format gguf`.

    output_dir/gguf/
      <name>-<outtype>.gguf   ← arch gpt2: llama.cpp's tensor names, tokenizer.ggml.* metadata
      Modelfile               ← `ollama create NAME -f gguf/Modelfile`

The layout is the one llama.cpp's convert_hf_to_gguf.py writes for GPT2LMHeadModel:

    transformer.wte → token_embd          transformer.h.N.ln_1      → blk.N.attn_norm
    transformer.wpe → position_embd       transformer.h.N.attn.c_attn → blk.N.attn_qkv
    transformer.ln_f → output_norm        transformer.h.N.attn.c_proj → blk.N.attn_output
    lm_head → output (untied only)        transformer.h.N.ln_2      → blk.N.ffn_norm
                                          transformer.h.N.mlp.c_fc  → blk.N.ffn_up
                                          transformer.h.N.mlp.c_proj → blk.N.ffn_down

GPT-2's Conv1D keeps its weights as (in, out); GGUF wants nn.Linear's (out, in), so the four
projections are transposed. With a tied head there is no `output`: llama.cpp uses token_embd.

Weight types follow the converter too: 1-D tensors (norms, biases) and position_embd stay f32;
the other weights take the outtype. q8_0 packs rows in blocks of 32 values (34 bytes: an f16
scale and 32 int8), so a weight whose rows are not a multiple of 32 falls back to f16.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hfmini.errors import HfminiError, disk_full, no_space
from hfmini.models.chat_template import DEFAULT_CHAT_TEMPLATE, end_of_turn_token
from hfmini.outputs.card import add_gguf_usage
from hfmini.outputs.hub import check_finished_folder
from hfmini.run_folder import (
    ADAPTER_CONFIG,
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    GGUF_DIR,
    MODELFILE,
    TOKENIZER_FILE,
)

OUTTYPES = ("f32", "f16", "q8_0")
CONVERTER = "llama.cpp's convert_hf_to_gguf.py (github.com/ggml-org/llama.cpp)"
Q8_0_BLOCK = 32

# HF GPT-2 names → llama.cpp's; per block first, then the whole-model ones.
BLOCK_TENSORS = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
MODEL_TENSORS = {
    "transformer.wte": "token_embd",
    "transformer.wpe": "position_embd",
    "transformer.ln_f": "output_norm",
    "lm_head": "output",
}
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# llama.cpp's gpt2 graph: tanh-approximated GELU (ggml_gelu), attention scaled by 1/sqrt(head).
LLAMA_CPP_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise HfminiError(
            "GGUF export needs the gguf package: pip install 'hfmini[gguf]'"
        ) from None
    return gguf


def check_exportable(folder: Path) -> dict:
    """The folder's config.json, once it is known to be a finished GPT-2 llama.cpp can run."""
    check_finished_folder(folder, then="export")
    if (folder / ADAPTER_CONFIG).is_file():
        raise HfminiError(
            f"{folder} is a LoRA adapter, not a full model: train with merge_adapters true to "
            f"export merged weights, or convert base and adapter with {CONVERTER} and "
            "convert_lora_to_gguf.py"
        )
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type != "gpt2":
        raise HfminiError(
            f"{folder} holds a {model_type} model and hfmini exports GPT-2 only: convert it with "
            f"{CONVERTER}"
        )
    # Settings transformers honours and llama.cpp's gpt2 graph does not: the file would load
    # and quietly compute something else.
    unsupported = []
    if config.get("activation_function", "gelu_new") not in LLAMA_CPP_GELU:
        unsupported.append(f"activation_function {config['activation_function']}")
    if not config.get("scale_attn_weights", True):
        unsupported.append("scale_attn_weights false")
    if config.get("scale_attn_by_inverse_layer_idx", False):
        unsupported.append("scale_attn_by_inverse_layer_idx true")
    if unsupported:
        raise HfminiError(
            f"{folder} uses {', '.join(unsupported)}, which llama.cpp's gpt2 does not implement: "
            "train with hfmini's defaults to export to GGUF"
        )
    if not (folder / TOKENIZER_FILE).is_file():
        raise HfminiError(
            f"{folder} has no {TOKENIZER_FILE}: GGUF needs the fast tokenizer's vocabulary and "
            "merges; copy the run's tokenizer files into it"
        )
    return config


def read_weights(folder: Path) -> dict:
    """Every tensor of model*.safetensors as float32 numpy (bf16 has no numpy type)."""
    import torch
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(folder.glob("model*.safetensors")):
        for name, tensor in load_file(path).items():
            weights[name] = tensor.to(torch.float32).numpy()
    return weights


def gguf_tensors(weights: dict, n_layer: int) -> list[tuple[str, object]]:
    """(llama.cpp name, float32 array) in GGUF order, Conv1D weights transposed to (out, in)."""
    renamed = {}
    for name, array in weights.items():
        base, _, kind = name.rpartition(".")  # kind: weight or bias
        if base.startswith("transformer.h."):
            _, _, rest = base.partition("transformer.h.")
            block, _, part = rest.partition(".")
            if part not in BLOCK_TENSORS:
                continue  # attn.bias / attn.masked_bias: old causal-mask buffers, not weights
            if part in CONV1D and kind == "weight":
                array = array.T
            renamed[f"blk.{block}.{BLOCK_TENSORS[part]}.{kind}"] = array
        elif base in MODEL_TENSORS:
            renamed[f"{MODEL_TENSORS[base]}.{kind}"] = array
    if renamed.get("output.weight") is not None and "token_embd.weight" in renamed:
        # A tied head saved twice (older transformers did): llama.cpp reuses token_embd.
        if (renamed["output.weight"] == renamed["token_embd.weight"]).all():
            del renamed["output.weight"]
    order = ["token_embd", "position_embd"]
    order += [f"blk.{i}.{part}" for i in range(n_layer) for part in BLOCK_TENSORS.values()]
    order += ["output_norm", "output"]
    names = [f"{base}.{kind}" for base in order for kind in ("weight", "bias")]
    return [(name, renamed[name].copy(order="C")) for name in names if name in renamed]


def tensor_type(gguf, name: str, array, outtype: str):
    """The GGML type of one tensor under `outtype`, as llama.cpp's converter chooses it."""
    types = gguf.GGMLQuantizationType
    if array.ndim <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd."):
        return types.F32
    if outtype == "f32":
        return types.F32
    if outtype == "q8_0" and array.shape[-1] % Q8_0_BLOCK == 0:
        return types.Q8_0
    return types.F16


def add_tokenizer(writer, gguf, tokenizer, tokenizer_json: dict, vocab_size: int) -> None:
    """tokenizer.ggml.*: GPT-2's byte-level BPE as llama.cpp reads it (tokens in their byte-level
    spelling, `Ġthe`; merges as "a b"; added special tokens as control tokens)."""
    model = tokenizer_json.get("model") or {}
    byte_level = "ByteLevel" in json.dumps(tokenizer_json.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not byte_level:
        raise HfminiError(
            "the tokenizer is not a byte-level BPE like GPT-2's, which is all hfmini exports to "
            f"GGUF: convert the model with {CONVERTER}"
        )
    if len(tokenizer) > vocab_size:
        raise HfminiError(
            f"the tokenizer has {len(tokenizer)} tokens and the model's embedding {vocab_size} "
            "rows: the folder's tokenizer is not the model's; copy the run's tokenizer files"
        )
    types = gguf.TokenType
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id → AddedToken
    tokens, token_types = [], []
    for i in range(vocab_size):  # embedding rows past the tokenizer: placeholders, never emitted
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            token_types.append(types.UNUSED)
        elif i in added:
            token_types.append(types.CONTROL if added[i].special else types.USER_DEFINED)
        else:
            token_types.append(types.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's split regex, as ByteLevel(use_regex=True)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    for add, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)  # as transformers encodes: GPT-2 prepends nothing
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)
        end = end_of_turn_token(tokenizer)
        if end is not None:  # llama.cpp stops a turn there as well as at eos
            writer.add_eot_token_id(tokenizer.convert_tokens_to_ids(end))


def add_hyperparameters(writer, gguf, name: str, config: dict, outtype: str) -> None:
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    n_embd = config["n_embd"]
    writer.add_name(name)
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(config.get("n_inner") or 4 * n_embd)  # GPT-2's None is 4×
    writer.add_block_count(config["n_layer"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
    writer.add_file_type(file_types[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def modelfile_text(gguf_name: str, tokenizer, folder: Path, n_ctx: int) -> str:
    """Ollama's Modelfile: the file, the context (Ollama's default is longer than a miniature
    model's position table), the run's sampling defaults, and the chat turn when there is one."""
    lines = [
        f"# ollama create NAME -f {GGUF_DIR}/{MODELFILE} && ollama run NAME",
        f"FROM ./{gguf_name}",
        f"PARAMETER num_ctx {n_ctx}",
    ]
    generation = folder / GENERATION_CONFIG_FILE
    sampling = json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else {}
    for key in ("temperature", "top_k", "top_p"):
        if sampling.get(key) is not None:
            lines.append(f"PARAMETER {key} {sampling[key]}")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if template is None:
        lines.append('TEMPLATE """{{ .Prompt }}"""')  # a plain model continues the text as is
    elif template == DEFAULT_CHAT_TEMPLATE:
        # hfmini's ChatML template in Ollama's Go template syntax, turn for turn.
        lines.append(
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
            "{{ .Content }}<|im_end|>\n"
            '{{ end }}<|im_start|>assistant\n"""'
        )
    else:
        lines.append(
            "# The chat template is not hfmini's default: write a TEMPLATE in Ollama's Go "
            "syntax that renders turns as tokenizer.chat_template does."
        )
    end = end_of_turn_token(tokenizer) if template else None
    if end is not None:
        lines.append(f'PARAMETER stop "{end}"')
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, write) -> None:
    """`write(tmp)` into a hidden file beside `path`, renamed over it once complete: a kill or a
    full disk leaves no half file under the real name."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        if disk_full(err, path.parent):
            raise no_space(path.name, path.parent) from None
        raise


def export_gguf(output_dir: str | Path, outtype: str = "f16") -> Path:
    """Write output_dir/gguf/<name>-<outtype>.gguf and its Modelfile; returns the .gguf path."""
    if outtype not in OUTTYPES:
        raise HfminiError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    folder = Path(output_dir)
    config = check_exportable(folder)
    gguf = import_gguf()
    from transformers import AutoTokenizer

    name = folder.resolve().name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer_json = json.loads((folder / TOKENIZER_FILE).read_text(encoding="utf-8"))
    tensors = gguf_tensors(read_weights(folder), config["n_layer"])
    path = folder / GGUF_DIR / f"{name}-{outtype}.gguf"
    path.parent.mkdir(exist_ok=True)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, "gpt2")
        add_hyperparameters(writer, gguf, name, config, outtype)
        add_tokenizer(writer, gguf, tokenizer, tokenizer_json, config["vocab_size"])
        for tensor_name, array in tensors:
            qtype = tensor_type(gguf, tensor_name, array, outtype)
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_atomic(path, write)
    text = modelfile_text(path.name, tokenizer, folder, config["n_positions"])
    write_atomic(path.parent / MODELFILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    add_gguf_usage(folder, path.name, chat=isinstance(tokenizer.chat_template, str))
    return path
