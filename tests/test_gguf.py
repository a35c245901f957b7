"""GGUF export (hfmini/outputs/gguf.py): the file gguf's own reader sees, the refusals, the upload
with `push --gguf`; and, slow, llama.cpp (llama-cpp-python) running the file token for token as
transformers does.

The quick tests build a tiny GPT-2 in the test; the slow one trains the tiny recipe a little so
that greedy continuations are not one token repeated.
"""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import BIN, REPO, reset_accelerate, tiny_run_args
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import save_file

from hfmini import cli
from hfmini.errors import HfminiError
from hfmini.models.chat_template import apply_template
from hfmini.models.tokenizer import train_tokenizer
from hfmini.outputs import hub
from hfmini.outputs.export import save_model
from hfmini.outputs.gguf import export_gguf, tensor_type

gguf = pytest.importorskip("gguf", reason="gguf is not installed: pip install 'hfmini[gguf]'")

LINES = [
    "ROMEO: But, soft! what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
    "HAMLET: To be, or not to be, that is the question.",
    "Café über señor, thou art the night and my heart.",
] * 20
N_LAYER = 2
# One tensor per block part and bias, the two embeddings and the final norm; the head is tied.
EXPECTED_TENSORS = (
    {"token_embd.weight", "position_embd.weight", "output_norm.weight"}
    | {"output_norm.bias"}
    | {
        f"blk.{i}.{part}.{kind}"
        for i in range(N_LAYER)
        for part in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
        for kind in ("weight", "bias")
    }
)


def tiny_model_folder(folder, chat: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = train_tokenizer(iter(LINES), vocab_size=300, model_max_length=32)
    if chat:
        apply_template(tokenizer, None)  # hfmini's ChatML default, its tokens added as special
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=32,
        n_embd=64,
        n_layer=N_LAYER,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    save_model(GPT2LMHeadModel(config).eval(), tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("gguf") / "plain", chat=False)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("gguf") / "chat", chat=True)


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def test_f32_holds_the_weights_in_llama_cpp_layout(plain):
    from transformers import GPT2LMHeadModel

    path = export_gguf(plain, "f32")
    assert path == plain / "gguf" / "plain-f32.gguf"
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == EXPECTED_TENSORS  # no `output`: llama.cpp reuses token_embd
    model = GPT2LMHeadModel.from_pretrained(plain)
    hf = {k: v.numpy() for k, v in model.state_dict().items()}
    pairs = {
        "token_embd.weight": hf["transformer.wte.weight"],
        "position_embd.weight": hf["transformer.wpe.weight"],
        "blk.1.attn_qkv.weight": hf["transformer.h.1.attn.c_attn.weight"].T,  # Conv1D: (in, out)
        "blk.1.attn_qkv.bias": hf["transformer.h.1.attn.c_attn.bias"],
        "blk.0.ffn_down.weight": hf["transformer.h.0.mlp.c_proj.weight"].T,
        "output_norm.weight": hf["transformer.ln_f.weight"],
    }
    for name, expected in pairs.items():
        # GGUF lists shapes innermost first; the data reads back as numpy's (out, in).
        assert list(tensors[name].shape) == list(reversed(expected.shape)), name
        np.testing.assert_array_equal(tensors[name].data.reshape(expected.shape), expected)
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)


def test_transformers_reads_the_file_back_to_the_same_logits(plain):
    """An independent reader: transformers' own GGUF loader undoes llama.cpp's GPT-2 layout."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = export_gguf(plain, "f32")
    # Its GGUF config mapping leaves n_positions at GPT-2's 1024: the folder's config says 32.
    config = AutoConfig.from_pretrained(plain)
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config)
    model = AutoModelForCausalLM.from_pretrained(plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    text = "ROMEO: Café über señor, wherefore art thou?"
    read_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert read_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids).logits, model.eval()(ids).logits)


def test_metadata_and_tokenizer_of_a_chat_model(chat):
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(export_gguf(chat, "f16"))
    meta = fields(reader)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    merges = json.loads((chat / "tokenizer.json").read_text())["model"]["merges"]
    assert meta["general.architecture"] == "gpt2"
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert meta["gpt2.context_length"] == 32
    assert meta["gpt2.embedding_length"] == 64
    assert meta["gpt2.feed_forward_length"] == 256
    assert meta["gpt2.block_count"] == N_LAYER
    assert meta["gpt2.attention.head_count"] == 2
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.merges"]) == len(merges)
    assert meta["tokenizer.ggml.merges"][0] == " ".join(merges[0])
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokens[end] == "<|im_end|>" and types[end] == gguf.TokenType.CONTROL
    assert types[tokenizer.eos_token_id] == gguf.TokenType.CONTROL
    space_the = tokenizer.convert_ids_to_tokens(tokenizer(" the")["input_ids"])[0]
    assert space_the.startswith("Ġ") and types[tokens.index(space_the)] == gguf.TokenType.NORMAL
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert meta["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert meta["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert meta["tokenizer.ggml.eot_token_id"] == end
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    matrices = [t for t in reader.tensors if t.name == "blk.0.ffn_up.weight"]
    assert matrices[0].tensor_type == gguf.GGMLQuantizationType.F16


def test_q8_0_quantizes_the_matrices_and_keeps_norms_biases_positions_f32(plain):
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(export_gguf(plain, "q8_0"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    q8, f32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32
    assert {n for n, t in types.items() if t == q8} == {"token_embd.weight"} | {
        f"blk.{i}.{part}.weight"
        for i in range(N_LAYER)
        for part in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")
    }
    assert all(t == f32 for n, t in types.items() if t != q8)  # norms, biases, position_embd
    assert fields(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    # Dequantized, each weight is within a block's rounding step (max |x| / 127) of the original.
    wte = load_file(plain / "model.safetensors")["transformer.wte.weight"].numpy()
    stored = next(t for t in reader.tensors if t.name == "token_embd.weight")
    back = gguf.quants.dequantize(stored.data, q8).reshape(wte.shape)
    step = np.abs(wte.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    assert (np.abs(back - wte).reshape(-1, 32) <= step * 0.6).all()
    sizes = {t: (plain / "gguf" / f"plain-{t}.gguf").stat().st_size for t in ("f32", "q8_0")}
    assert sizes["q8_0"] < sizes["f32"] / 2


def test_rows_that_are_not_whole_q8_0_blocks_fall_back_to_f16():
    types = gguf.GGMLQuantizationType
    assert tensor_type(gguf, "blk.0.ffn_up.weight", np.zeros((96, 48)), "q8_0") == types.F16
    assert tensor_type(gguf, "blk.0.ffn_up.weight", np.zeros((96, 64)), "q8_0") == types.Q8_0
    assert tensor_type(gguf, "blk.0.ffn_up.bias", np.zeros(96), "q8_0") == types.F32
    assert tensor_type(gguf, "position_embd.weight", np.zeros((32, 64)), "q8_0") == types.F32


def test_modelfile_and_card(plain, chat):
    (chat / "README.md").write_text("# chat\n\n## Usage\n\ntext\n\n## Samples\n\nnone\n")
    export_gguf(chat, "f16")
    export_gguf(chat, "q8_0")  # the newest export replaces the card's section and FROM line
    modelfile = (chat / "gguf" / "Modelfile").read_text()
    assert "FROM ./chat-q8_0.gguf\n" in modelfile and "PARAMETER num_ctx 32\n" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert '{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""' in modelfile
    card = (chat / "README.md").read_text()
    assert card.count("## GGUF") == 1 and "chat-f16" not in card
    assert "llama-cli -m gguf/chat-q8_0.gguf" in card
    assert "ollama create chat -f gguf/Modelfile" in card
    assert card.index("## Usage") < card.index("## GGUF") < card.index("## Samples")
    export_gguf(plain, "f16")
    plain_modelfile = (plain / "gguf" / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in plain_modelfile and "stop" not in plain_modelfile


def test_a_failed_export_leaves_no_file(plain, monkeypatch):
    import errno

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for old in (plain / "gguf").glob("*"):
        old.unlink()
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    with pytest.raises(HfminiError, match="no space left on device for plain-f16.gguf"):
        export_gguf(plain, "f16")
    assert list((plain / "gguf").iterdir()) == []  # not even the temporary file


def one_error_line(argv, capsys) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_errors_are_one_line(plain, tmp_path, capsys, monkeypatch):
    export = ["export", "--format", "gguf"]
    assert "does not exist" in one_error_line([*export, str(tmp_path / "nowhere")], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no finished model" in one_error_line([*export, str(empty)], capsys)

    llama = tmp_path / "llama"
    llama.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (llama / name).write_bytes((plain / name).read_bytes())
    config = json.loads((plain / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    err = one_error_line([*export, str(llama)], capsys)
    assert "llama model" in err and "convert_hf_to_gguf.py" in err

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    save_file({"a": torch.zeros(2)}, adapter / "adapter_model.safetensors")
    err = one_error_line([*export, str(adapter)], capsys)
    assert "LoRA adapter" in err and "merge_adapters true" in err

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: import raises
    err = one_error_line([*export, str(plain)], capsys)
    assert "pip install 'hfmini[gguf]'" in err


class FakeHfApi:
    uploaded: list = []

    def whoami(self):
        return {"name": "tester"}

    def create_repo(self, *args, **kwargs):
        pass

    def upload_folder(self, repo_id, folder_path, allow_patterns, ignore_patterns, **kwargs):
        files = [
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        ]
        FakeHfApi.uploaded = sorted(
            filter_repo_objects(
                files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
            )
        )
        return type("Commit", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()


def test_push_gguf_uploads_the_gguf_folder(chat, capsys, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub, "get_token", lambda: "hf_fake")
    export_gguf(chat, "q8_0")
    (chat / "checkpoints" / "step-2").mkdir(parents=True, exist_ok=True)
    (chat / "checkpoints" / "step-2" / "model.safetensors").write_bytes(b"")
    push = ["push", str(chat), "--hub_model_id", "tester/chat"]
    assert cli.main(push) == 0
    assert not any(f.startswith(("gguf/", "checkpoints/")) for f in FakeHfApi.uploaded)
    assert cli.main([*push, "--gguf"]) == 0
    assert {"gguf/chat-q8_0.gguf", "gguf/Modelfile", "model.safetensors"} <= set(FakeHfApi.uploaded)
    assert not any(f.startswith("checkpoints/") for f in FakeHfApi.uploaded)
    for old in (chat / "gguf").glob("*"):
        old.unlink()
    assert "run `hfmini export" in one_error_line([*push, "--gguf"], capsys)


def test_hfmini_export_command(plain):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(BIN / "hfmini"), "export", str(plain), "--format", "gguf", "--outtype", "q8_0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(plain / "gguf" / "plain-q8_0.gguf")
    assert (plain / "gguf" / "plain-q8_0.gguf").is_file()


# --- slow: llama.cpp runs the file as transformers runs the folder ---------------------------

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed", "To be, or not to be"]
NEW_TOKENS = 20


def import_llama_cpp():
    """llama_cpp, or a skip that says why; HFMINI_REQUIRE_LLAMA_CPP=1 (CI) makes it a failure."""
    try:
        import llama_cpp
    except ImportError as err:
        if os.environ.get("HFMINI_REQUIRE_LLAMA_CPP") == "1":
            raise
        pytest.skip(f"llama-cpp-python is not installed ({err}): pip install llama-cpp-python")
    return llama_cpp


def llama_greedy(llm, ids: list[int], stop: list[int]) -> list[int]:
    """NEW_TOKENS argmax tokens, the stop ids masked as generate's min_new_tokens masks them."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(NEW_TOKENS):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        logits[stop] = -np.inf
        out.append(int(logits.argmax()))
        llm.eval([out[-1]])
    return out


def bits_per_byte(windows: list[list[int]], logits_of, tokenizer) -> float:
    """Total next-token NLL over the windows / (ln 2 × UTF-8 bytes of the scored tokens)."""
    nll, n_bytes = 0.0, 0
    for window in windows:
        logits = torch.as_tensor(np.asarray(logits_of(window)), dtype=torch.float64)
        logp = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(window[1:])
        nll -= logp.gather(1, targets[:, None]).sum().item()
        n_bytes += len(tokenizer.decode(window[1:]).encode("utf-8"))
    return nll / (math.log(2) * n_bytes)


@pytest.mark.slow
def test_llama_cpp_runs_the_file_as_transformers_runs_the_folder(tmp_path):
    llama_cpp = import_llama_cpp()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfmini.config import parse_config
    from hfmini.data.shakespeare import load_plays
    from hfmini.training.trainer import run_training

    started = time.perf_counter()
    out = tmp_path / "tiny"
    run_training(parse_config(tiny_run_args(out, 300)))
    reset_accelerate()
    trained = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    n_ctx = model.config.n_positions
    stop = [tokenizer.eos_token_id]

    def load(outtype: str):
        path = export_gguf(out, outtype)
        # An f32 KV cache (llama.cpp's default is f16): the comparison is of the weights alone.
        return llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            logits_all=True,
            n_threads=1,
            type_k=llama_cpp.GGML_TYPE_F32,
            type_v=llama_cpp.GGML_TYPE_F32,
            verbose=False,
        )

    llm = load("f32")
    pairs = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False) == ids  # same BPE, same split
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([ids]),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(ids) :].tolist()
        pairs.append((hf, llama_greedy(llm, ids, stop)))
        print(f"{prompt!r}: {tokenizer.decode(hf)!r} / {tokenizer.decode(pairs[-1][1])!r}")
    llm.close()
    equal = sum(a == b for hf, ours in pairs for a, b in zip(hf, ours, strict=True))
    print(f"greedy tokens equal at f32: {equal}/{NEW_TOKENS * len(PROMPTS)}")
    assert all(len(set(hf)) > 2 for hf, _ in pairs), "the model did not train enough to vary"
    assert equal == NEW_TOKENS * len(PROMPTS)

    # Bits per byte of held-out text (a validation play), in windows of the model's context.
    text = load_plays()["validation"]["the-tempest"][:6000]
    ids = tokenizer(text)["input_ids"]
    windows = [ids[i : i + n_ctx] for i in range(0, len(ids) - n_ctx + 1, n_ctx)]

    def transformers_logits(window):
        with torch.no_grad():
            return model(torch.tensor([window])).logits[0]

    def llama_logits(llm):
        def logits_of(window):
            llm.reset()
            llm.eval(window)
            return llm.scores[: len(window)]

        return logits_of

    bpb = {"transformers f32": bits_per_byte(windows, transformers_logits, tokenizer)}
    for outtype in ("f32", "q8_0"):
        llm = load(outtype)
        bpb[f"llama.cpp {outtype}"] = bits_per_byte(windows, llama_logits(llm), tokenizer)
        llm.close()
    sizes = {t: (out / "gguf" / f"tiny-{t}.gguf").stat().st_size for t in ("f32", "q8_0")}
    print(f"bits per byte over {len(windows)} windows of {n_ctx} tokens: {bpb}; sizes {sizes}")
    print(
        f"q8_0 - f32 under llama.cpp: {bpb['llama.cpp q8_0'] - bpb['llama.cpp f32']:+.5f}; "
        f"q8_0 - transformers f32: {bpb['llama.cpp q8_0'] - bpb['transformers f32']:+.5f}"
    )
    assert bpb["llama.cpp f32"] == pytest.approx(bpb["transformers f32"], abs=1e-4)
    assert abs(bpb["llama.cpp q8_0"] - bpb["llama.cpp f32"]) < 0.01  # 8 bits lose little
    print(
        f"seconds: training {trained - started:.1f}, the rest {time.perf_counter() - trained:.1f}"
    )


@pytest.mark.slow
def test_llama_cpp_reads_a_chat_turn_as_transformers(chat):
    """The special tokens parse as one id each, <|im_end|> ends generation, the template is there."""
    llama_cpp = import_llama_cpp()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat)
    llm = llama_cpp.Llama(str(export_gguf(chat, "f16")), n_ctx=32, n_threads=1, verbose=False)
    messages = [{"role": "system", "content": "ROMEO"}, {"role": "user", "content": "Café?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert ids == tokenizer(text)["input_ids"]
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert llama_cpp.llama_vocab_is_eog(vocab, end) and llama_cpp.llama_vocab_is_control(vocab, end)
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    llm.close()
