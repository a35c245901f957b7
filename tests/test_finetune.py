"""Fine-tuning: starting from existing weights, fully or with LoRA, offline.

Locally built models stand in for Hub downloads: `tiny_base` (conftest) is a tiny hfmini run, and
`as_cached_hub_model` puts a folder into the Hugging Face cache under a Hub id, so that the real
Hub code path (resolve the id, read the cache) runs with HF_HUB_OFFLINE=1.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_FINETUNE, tiny_run_args, train_error
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hfmini.cli import main as cli_main
from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.run_folder import list_checkpoints
from hfmini.training.trainer import main as train_main
from hfmini.training.trainer import run_training


def finetune_args(base, out, steps=4, *overrides):
    return tiny_run_args(out, steps, *overrides, finetune_from=base)


def read_json(path):
    return json.loads(Path(path).read_text())


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def as_cached_hub_model(folder: Path, repo_id: str) -> None:
    """Put `folder`'s model files into the Hugging Face cache as Hub model `repo_id`."""
    repo = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        snapshot.mkdir(parents=True)
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy(folder / name, snapshot / name)
        for path in folder.glob("tokenizer*.json"):
            shutil.copy(path, snapshot / path.name)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)


# --- full fine-tuning -------------------------------------------------------------------------


def test_full_fine_tuning_scores_the_start_and_ends_on_x_to_y(tiny_base, tmp_path, caplog):
    out = tmp_path / "ft"
    assert train_main(finetune_args(tiny_base, out)) == 0
    start = [r for r in rows(out) if r["step"] == 0]
    assert len(start) == 1 and "eval/bits_per_byte" in start[0]
    # The starting weights are the base's, unchanged: step 0 scores what the base's run reported.
    base_bits = read_json(tiny_base / "eval_results.json")["bits_per_byte"]
    assert start[0]["eval/bits_per_byte"] == pytest.approx(base_bits, rel=1e-5)
    results = read_json(out / "eval_results.json")
    assert results["start_bits_per_byte"] == pytest.approx(start[0]["eval/bits_per_byte"])
    line = f"bits per byte {results['start_bits_per_byte']:.4f} → {results['bits_per_byte']:.4f}"
    assert line in caplog.text
    assert results["trainable_parameters"] == results["parameters"]
    recorded = (out / "training_config.yaml").read_text()
    assert "learning_rate: 5.0e-05" in recorded  # the full fine-tuning default, not 1e-3
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None  # a local folder: nothing the Hub could link to
    # Named by its folder's name: the card is published, the user's disk layout is not.
    assert "`tiny` fine-tuned with hfmini (full fine-tuning)" in card.text
    assert str(tiny_base.parent) not in card.text and str(out) not in card.text
    assert "Bits per byte of the starting model" in card.text
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(out))
    assert generate("ROMEO:", max_new_tokens=4)[0]["generated_text"].startswith("ROMEO:")


def test_a_hub_id_loads_from_the_cache_and_the_card_names_its_base(tiny_base, tmp_path):
    as_cached_hub_model(tiny_base, "hfmini-test/tiny-base")
    out = tmp_path / "ft"
    run_training(parse_config(finetune_args("hfmini-test/tiny-base", out, 2)))
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "hfmini-test/tiny-base"
    assert card.data.base_model_relation == "finetune"
    assert card.data.library_name == "transformers"


def test_a_local_base_that_was_pushed_is_named_by_its_hub_id(tiny_base, tmp_path):
    """A base folder that is an hfmini run trained with push_to_hub records its Hub id in
    training_config.yaml: the card links that id, and names no local path."""
    import yaml

    base = tmp_path / "pushed-base"
    shutil.copytree(tiny_base, base)
    settings = yaml.safe_load((base / "training_config.yaml").read_text())
    settings.update(push_to_hub=True, hub_model_id="alice/tiny-base")
    (base / "training_config.yaml").write_text(yaml.safe_dump(settings))
    out = tmp_path / "ft"
    run_training(parse_config(finetune_args(base, out, 2)))
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "alice/tiny-base"
    assert "`alice/tiny-base` fine-tuned with hfmini" in card.text
    assert str(tmp_path) not in card.text


def test_shown_names_and_recorded_hub_ids(tmp_path):
    from hfmini.models.pretrained import recorded_hub_id
    from hfmini.outputs.card import shown_name

    assert shown_name(str(tmp_path / "runs" / "base")) == "base"
    assert shown_name("~/runs/base") == "base"
    assert shown_name("output/base") == "output/base" and shown_name("gpt2") == "gpt2"
    snapshot = tmp_path / "hub" / "models--alice--tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert recorded_hub_id(snapshot) == "alice/tiny"
    assert recorded_hub_id(tmp_path) is None  # no training_config.yaml
    (tmp_path / "training_config.yaml").write_text("hub_model_id: alice/x\npush_to_hub: false\n")
    assert recorded_hub_id(tmp_path) is None  # named but never pushed: no page to link to


def test_a_tokenizer_without_pad_gets_eos_as_pad_and_says_so(tiny_base, tmp_path, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "no-pad")
    out = tmp_path / "ft"
    args = finetune_args(tiny_base, out, 2, "--tokenizer_name", str(tmp_path / "no-pad"))
    run_training(parse_config(args))
    assert "has no pad token: using its eos token '<|endoftext|>' as pad" in caplog.text
    assert AutoTokenizer.from_pretrained(out).pad_token == "<|endoftext|>"


def test_a_larger_tokenizer_grows_the_embedding_or_is_refused_with_adapter_export(
    tiny_base, tmp_path, caplog, capsys
):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.add_tokens(["<verse>", "<prose>"])
    tokenizer.save_pretrained(tmp_path / "bigger")
    out = tmp_path / "ft"
    args = finetune_args(tiny_base, out, 2, "--tokenizer_name", str(tmp_path / "bigger"))
    run_training(parse_config(args))
    assert (
        "the tokenizer has 514 tokens, the model's embedding had 512 rows: added 2" in caplog.text
    )
    assert AutoConfig.from_pretrained(out).vocab_size == 514
    # LoRA trains the new rows (tests/test_sft.py); an adapter alone would not fit the base.
    lora = ("--output_dir", str(tmp_path / "lora"), "--use_peft", "true")
    refused = train_error(capsys, *args, *lora, "--merge_adapters", "false")
    assert "the tokenizer has 2 more tokens than the model's embedding (514 vs 512)" in refused
    assert "keep merge_adapters true" in refused


# --- LoRA -------------------------------------------------------------------------------------


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
def test_lora_trains_the_adapters_only_and_merges_into_a_plain_model(tiny_base, tmp_path, caplog):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    merged, adapters = tmp_path / "merged", tmp_path / "adapters"
    lora = ("--use_peft", "true")
    run_training(parse_config(finetune_args(tiny_base, merged, 4, *lora)))
    assert "LoRA r=16 alpha=32 on c_attn, c_proj, c_fc:" in caplog.text
    results = read_json(merged / "eval_results.json")
    assert 0 < results["trainable_parameters"] < results["parameters"] / 2
    assert not list(merged.glob("adapter*"))
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert type(model).__name__ == "GPT2LMHeadModel"
    before, after = (
        load_file(tiny_base / "model.safetensors"),
        load_file(merged / "model.safetensors"),
    )
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"):
        assert torch.equal(before[name], after[name]), name  # not adapted: frozen exactly
    assert not torch.equal(
        before["transformer.h.0.attn.c_attn.weight"], after["transformer.h.0.attn.c_attn.weight"]
    )

    # The same run exported as adapters computes what the merged weights compute.
    run_training(
        parse_config(finetune_args(tiny_base, adapters, 4, *lora, "--merge_adapters", "false"))
    )
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in adapters.iterdir()
    }
    assert not (adapters / "model.safetensors").exists()
    assert read_json(adapters / "adapter_config.json")["base_model_name_or_path"] == str(tiny_base)
    with_peft = AutoPeftModelForCausalLM.from_pretrained(adapters).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 100]])
    with torch.no_grad():
        expected = model.eval()(ids).logits
        assert torch.allclose(with_peft(input_ids=ids).logits, expected, atol=1e-5)
    assert ModelCard.load(adapters / "README.md").data.library_name == "peft"


def test_a_lora_adapter_on_a_hub_model_is_a_standard_adapter_folder(tiny_base, tmp_path, capsys):
    as_cached_hub_model(tiny_base, "hfmini-test/tiny-base")
    out = tmp_path / "adapters"
    args = ("--use_peft", "true", "--merge_adapters", "false")
    run_training(parse_config(finetune_args("hfmini-test/tiny-base", out, 2, *args)))
    assert (
        read_json(out / "adapter_config.json")["base_model_name_or_path"] == "hfmini-test/tiny-base"
    )
    card = ModelCard.load(out / "README.md")
    assert (card.data.base_model, card.data.base_model_relation) == (
        "hfmini-test/tiny-base",
        "adapter",
    )
    # New adapters on these would need a base with these merged in, which no folder holds.
    line = train_error(capsys, *finetune_args(out, tmp_path / "again", 2, *args))
    assert f"{out} is a LoRA adapter folder: new adapters would sit on its base" in line


def test_an_unknown_lora_target_lists_the_layers_there_are(tiny_base, tmp_path, capsys):
    line = train_error(
        capsys,
        *finetune_args(tiny_base, tmp_path / "o", 2, "--use_peft", "true"),
        *("--lora_target_modules", "q_proj", "c_attn"),
    )
    assert line == (
        "error: lora_target_modules q_proj match no layer of this gpt2 model: choose among "
        "c_attn, c_fc, c_proj"
    )


def _tiny_model_of(architecture: str, tokenizer_source: Path, folder: Path) -> Path:
    """A randomly initialised 2-layer model of `architecture`, saved with the base's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_other_architectures_fine_tune_fully_and_with_lora(
    architecture, tiny_base, tmp_path, caplog
):
    from transformers import AutoModelForCausalLM

    source = _tiny_model_of(architecture, tiny_base, tmp_path / architecture)
    start = load_file(source / "model.safetensors")
    for kind, extra in (("full", ()), ("lora", ("--use_peft", "true"))):
        out = tmp_path / kind
        run_training(parse_config(finetune_args(source, out, 3, *extra)))
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.model_type == architecture and not list(out.glob("adapter*"))
        trained = load_file(out / "model.safetensors")
        name = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(trained[name], start[name]), kind
        results = read_json(out / "eval_results.json")
        assert results["bits_per_byte"] < results["start_bits_per_byte"] + 0.5
    assert "on all-linear:" in caplog.text  # the LoRA default for non-GPT-2 models


# --- checkpoints are models --------------------------------------------------------------------


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
@pytest.mark.parametrize("kind", ["scratch", "lora"])
def test_a_checkpoint_opens_like_a_model_and_can_be_fine_tuned(kind, tiny_base, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    if kind == "scratch":
        args = tiny_run_args(out, 4, "--save_steps", "2")
    else:
        args = finetune_args(tiny_base, out, 4, "--use_peft", "true", "--save_steps", "2")
    run_training(parse_config(args))
    (checkpoint,) = list_checkpoints(out)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)  # peft does the LoRA case
    if kind == "scratch":
        saved = load_file(checkpoint / "model.safetensors")
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, saved.get(name, saved.get("transformer.wte.weight"))), name
    assert cli_main(["generate", str(checkpoint), "--max_new_tokens", "5", "--seed", "0"]) == 0
    capsys.readouterr()
    assert cli_main(["eval", str(checkpoint)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Starting a new run from the checkpoint scores, at step 0, what hfmini eval scored.
    again = tmp_path / "again"
    run_training(parse_config(finetune_args(checkpoint, again, 1)))
    start = read_json(again / "eval_results.json")["start_bits_per_byte"]
    assert start == pytest.approx(scored["bits_per_byte"], rel=1e-4)


# --- one-line errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [
        ("--model_size", "mini"),
        ("--vocab_size", "300"),
        ("--n_layer", "2"),
        ("--n_positions", "128"),
    ],
)
def test_from_scratch_settings_are_refused_with_a_model(setting, capsys):
    line = train_error(capsys, "--config", str(TINY_FINETUNE), *setting)
    name = setting[0][2:]
    assert (
        f"error: {name} shape a model built from scratch, but model_name_or_path output/tiny"
        in line
    )
    assert f"drop {name}, or drop model_name_or_path" in line


def test_use_peft_needs_a_model_to_adapt(capsys):
    assert "use_peft adapts an existing model: add --model_name_or_path" in train_error(
        capsys, "--use_peft", "true"
    )


def test_model_source_mistakes_are_one_line_errors(tiny_base, tmp_path, capsys):
    def error(source, *extra):
        return train_error(capsys, *finetune_args(source, tmp_path / "out", 2, *extra))

    assert "is neither a folder here nor a Hub id (user/name or name): check the path" in error(
        "./no/such/folder"
    )
    assert (
        "nobody/not-cached is neither a folder here nor a Hub model in the Hugging Face cache, and "
        "HF_HUB_OFFLINE is set: check the path, or download it once online (hf download "
        "nobody/not-cached)"
    ) in error("nobody/not-cached")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_base / "config.json", pickled)
    torch.save(load_file(tiny_base / "model.safetensors"), pickled / "pytorch_model.bin")
    line = error(pickled)
    assert f"{pickled} holds only pickle weights (pytorch_model.bin)" in line
    assert "hfmini loads safetensors only: if you trust the file, convert it once" in line

    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(
        json.dumps({"model_type": "my-lm", "auto_map": {"AutoModelForCausalLM": "my_lm.Model"}})
    )
    shutil.copy(tiny_base / "model.safetensors", remote)
    line = error(remote)
    assert "would need the code shipped with the model (auto_map in config.json)" in line
    assert "hfmini never runs code shipped with a model" in line

    assert "block_size 128 is above" in error(tiny_base, "--block_size", "128")
    assert f"{tiny_base}'s context of 64 tokens: lower block_size to at most 64" in error(
        tiny_base, "--block_size", "128"
    )


def test_a_run_or_a_checkpoint_given_for_the_wrong_flag_points_at_the_right_one(
    tiny_base, tmp_path, capsys
):
    run = tmp_path / "run"
    run_training(parse_config(tiny_run_args(run, 4, "--save_steps", "2")))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run / "checkpoints", unfinished / "checkpoints")
    (unfinished / ".hfmini.lock").write_text("")
    line = train_error(capsys, *finetune_args(unfinished, tmp_path / "o", 2))
    step = unfinished / "checkpoints" / "step-2"
    assert f"{unfinished} is the output_dir of a run that has not finished" in line
    assert f"--model_name_or_path {step}, or finish the run with --output_dir {unfinished}" in line

    old_style = tmp_path / "old-checkpoint"  # what hfmini wrote before checkpoints were models
    old_style.mkdir()
    shutil.copy(run / "checkpoints" / "step-2" / "trainer_state.json", old_style)
    line = train_error(capsys, *finetune_args(old_style, tmp_path / "o", 2))
    assert "is a training checkpoint without model files" in line
    assert f"continue that run with --resume_from_checkpoint {old_style}" in line

    line = train_error(
        capsys, *tiny_run_args(tmp_path / "o", 2, "--resume_from_checkpoint", str(tiny_base))
    )
    assert f"{tiny_base} is a model, not a training checkpoint: to train it further" in line
    assert f"use --model_name_or_path {tiny_base} instead of --resume_from_checkpoint" in line


@pytest.mark.slow  # tens of seconds: `make test-slow` (keeps `make test` a few minutes)
def test_the_readme_fine_tuning_command_fails_in_one_line_when_offline(tmp_path):
    """`--model_name_or_path gpt2` as the README shows it, with no cached gpt2 and no network."""
    from conftest import launch_command

    text = tmp_path / "my.txt"
    text.write_text("some text\n" * 50)
    result = subprocess.run(
        launch_command(
            "--model_name_or_path",
            "gpt2",
            "--train_file",
            str(text),
            "--output_dir",
            str(tmp_path / "o"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0, result.stderr[-2000:]  # the launcher turns 2 into 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: model_name_or_path gpt2 is neither a folder here nor a Hub model"
    )
    assert "Traceback" not in result.stderr


def test_lora_under_sharding_is_refused_before_loading(tiny_base, tmp_path, monkeypatch):
    import hfmini.training.setup

    monkeypatch.setattr(
        hfmini.training.setup, "is_sharded", lambda accelerator: True
    )  # FSDP, DeepSpeed
    args = finetune_args(tiny_base, tmp_path / "o", 2, "--use_peft", "true")
    with pytest.raises(HfminiError, match="use_peft is not supported with FSDP or DeepSpeed yet"):
        run_training(parse_config(args))


def test_sampling_from_a_lora_model_uses_the_cache_name_of_the_model_it_wraps():
    """peft passes the KV cache through under the wrapped model's name (no deprecated name);
    new adapters start at zero, so they decode exactly what the model alone decodes."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from hfmini.models.sampling import _cache_argument, decode

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    expected = decode(model, [1, 2, 3], 8)
    lora = get_peft_model(model, LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True)).eval()
    assert _cache_argument(lora) == "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert decode(lora, [1, 2, 3], 8) == expected


def test_an_adapter_whose_base_is_gone_names_its_adapter_config(tmp_path, capsys):
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"x": torch.zeros(1)}, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/nowhere/base"}')
    error = train_error(
        capsys,
        "--config",
        str(TINY_FINETUNE),
        "--model_name_or_path",
        str(adapter),
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert "adapter_config.json's base_model_name_or_path" in error and "/nowhere/base" in error


def test_a_lora_rank_above_the_models_width_is_refused(tiny_base, tmp_path, capsys):
    """lora_r 100000 on the 64-wide tiny model would add about 200M adapter parameters to a
    model of 0.14M: refused before any adapter is built, with the bound."""
    line = train_error(
        capsys,
        *finetune_args(tiny_base, tmp_path / "out", 2, "--use_peft", "true", "--lora_r", "100000"),
    )
    assert line == (
        "error: lora_r 100000 is larger than the model's width 64: a rank above the width adds "
        "adapter parameters but no capacity; set lora_r to at most 64 (e.g. 16)"
    )
    assert not (tmp_path / "out").exists()
