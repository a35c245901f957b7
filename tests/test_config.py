import pytest
from conftest import REPO, TINY_RECIPE

from hfmini.config import parse_config
from hfmini.errors import HfminiError

RECIPES = sorted((REPO / "recipes").glob("*/*.yaml"))
RECIPES = [p for p in RECIPES if p.parent.name != "accelerate_configs"]
GPT2_SMALL = REPO / "recipes" / "gpt2-small" / "config.yaml"


def test_recipes_exist():
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPES}
    assert {"shakespeare/config", "tiny/config", "tiny/finetune", "gpt2-small/config"} <= names
    assert {f"play-groups/{run}" for run in ("base", "scratch", "full", "lora")} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipe_parses(recipe):
    config = parse_config(["--config", str(recipe)])
    if config.model.from_scratch:  # a fine-tuned model's context is checked when it is read
        assert config.data.block_size <= config.context_length()
    assert config.train.output_dir.startswith("output/")
    # The top comment states the command that runs it.
    head = recipe.read_text().splitlines()[:6]
    assert any("recipes/train.py" in line or "make train" in line for line in head)


def test_gpt2_small_recipe_is_the_reproductions_run():
    """GPT-2 124M's shape, context and tokenizer; 2^19 tokens per optimizer step on the 8 GPUs of
    its launch command (and on 2 or 4 nodes with the overrides its header names); 10B tokens."""
    config = parse_config(["--config", str(GPT2_SMALL)])
    assert config.model.from_scratch and config.model.tokenizer_name == "gpt2"
    assert config.model.shape() == (12, 12, 768) and config.context_length() == 1024
    assert config.tokens_per_step(num_processes=8) == 2**19 == 524_288
    assert config.train.max_steps * 2**19 == pytest.approx(10e9, rel=1e-4)
    two_nodes = ["--gradient_accumulation_steps", "1"]
    four_nodes = [*two_nodes, "--per_device_train_batch_size", "16"]
    for overrides, processes in ((two_nodes, 16), (four_nodes, 32)):
        scaled = parse_config(["--config", str(GPT2_SMALL), *overrides])
        assert scaled.tokens_per_step(num_processes=processes) == 2**19
    # The commands in its header name files that exist.
    header = [line for line in GPT2_SMALL.read_text().splitlines() if line.startswith("#")]
    named = {word for line in header for word in line.split() if word.startswith("recipes/")}
    assert "recipes/accelerate_configs/ddp.yaml" in named
    assert all((REPO / path).is_file() for path in named), named


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 0.01\nblock_size: 32\nsample_prompts: [a, b]\n")
    config = parse_config(["--config", str(recipe), "--learning_rate", "0.02"])
    assert config.train.learning_rate == 0.02  # command line wins
    assert config.data.block_size == 32  # YAML wins over the default
    assert config.train.sample_prompts == ["a", "b"]
    assert config.train.per_device_train_batch_size == 16  # default
    assert config.context_length() == 32


def test_yaml_booleans_and_nulls(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("torch_compile: true\nn_layer: null\nmax_eval_samples: null\n")
    config = parse_config(["--config", str(recipe)])
    assert config.train.torch_compile == "true" and config.train.compile_on("cpu")
    assert parse_config([]).train.compile_on("cuda")  # auto: on with CUDA
    # auto on a CPU: only for runs long enough to earn back the warm-up
    assert not parse_config(["--max_steps", "999"]).train.compile_on("cpu", "bf16")
    assert parse_config(["--max_steps", "1000"]).train.compile_on("cpu", "bf16")
    assert not parse_config(["--max_steps", "1000"]).train.compile_on("cpu", "no")  # fp32: eager
    assert not parse_config(["--max_steps", "-1"]).train.compile_on("cpu", "bf16")
    budget = parse_config(["--max_train_minutes", "5"]).train
    assert budget.compile_on("cpu", "bf16") and not budget.compile_on("cpu", "no")
    assert not parse_config(["--torch_compile", "false"]).train.compile_on("cuda")
    auto = parse_config([]).train
    assert auto.precision_on("cuda", bf16_native=True) == "bf16"
    assert auto.precision_on("cpu", bf16_native=True) == "bf16"  # AVX512-BF16/AMX CPU
    assert auto.precision_on("cpu", bf16_native=False) == "no"
    fp16 = parse_config(["--mixed_precision", "fp16"]).train
    assert fp16.precision_on("cpu", bf16_native=True) == "no"
    assert fp16.precision_on("cuda", bf16_native=True) == "fp16"
    assert config.model.n_layer is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rat", "0.1"], "did you mean 'learning_rate'"),
        (["--block_size", "abc"], "invalid int value"),
        (["--n_embd", "100", "--n_head", "3"], "not divisible by n_head"),
        (["--block_size", "512", "--n_positions", "256"], "above the model's context"),
        (["--vocab_size", "100"], "too small"),
        (["--max_steps", "0"], "max_steps must be positive"),
        (["--learning_rate", "-1"], "learning_rate must be positive"),
        (["--per_device_train_batch_size", "0"], "must be positive"),
        (["--model_size", "huge"], "unknown model_size"),
        (["--report_to", "mlflow"], "unknown report_to"),
        (["--ema_decay", "1"], r"ema_decay must be in \[0, 1\)"),
    ],
)
def test_bad_values_are_one_line_errors(argv, message):
    with pytest.raises(HfminiError, match=message) as info:
        parse_config(argv)
    assert "\n" not in str(info.value)


def test_unknown_yaml_key_suggests_nearest(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("gradient_acumulation_steps: 4\n")
    with pytest.raises(HfminiError, match="did you mean 'gradient_accumulation_steps'"):
        parse_config(["--config", str(recipe)])


def test_missing_config_file():
    with pytest.raises(HfminiError, match="not found"):
        parse_config(["--config", "nope.yaml"])


def test_presets_and_overrides():
    config = parse_config(["--model_size", "gpt2-small", "--block_size", "1024"])
    assert config.model.shape() == (12, 12, 768)
    config = parse_config(["--model_size", "micro", "--n_layer", "6"])
    assert config.model.shape() == (6, 4, 128)


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the dataclasses: regenerate with `make docs`."""
    from hfmini.config.reference import reference_markdown

    assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == reference_markdown()


def test_dash_forms_listed_by_help_are_accepted():
    config = parse_config(
        ["--config", str(TINY_RECIPE), "--max-steps", "7", "--learning-rate=0.01"]
    )
    assert config.train.max_steps == 7 and config.train.learning_rate == 0.01


def test_a_config_built_in_python_is_checked():
    from hfmini.config import Config, DataArguments, ModelArguments, TrainArguments

    with pytest.raises(HfminiError, match="block_size 128 is above the model's context"):
        Config(DataArguments(block_size=128), ModelArguments(n_positions=64), TrainArguments())


def test_a_list_for_a_one_value_key_names_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: [1, 2]\nsample_prompts: [a, b]\n")
    with pytest.raises(HfminiError, match=r"learning_rate takes one value, got the list \[1, 2\]"):
        parse_config(["--config", str(recipe)])
    recipe.write_text("sample_prompts: [a, b]\n")
    assert parse_config(["--config", str(recipe)]).train.sample_prompts == ["a", "b"]
