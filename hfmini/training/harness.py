"""lm-evaluation-harness on a saved model (`hfmini eval OUTPUT_DIR --tasks NAMES`), with hfmini's
own task, `hfmini_validation`, whose bits_per_byte is `hfmini eval`'s own figure:

    validation text → tokens → blocks of the model's context (exactly as `hfmini eval` cuts them)
      → one document per block: context = its first token, continuation = the rest, decoded,
        and the bytes of the predicted tokens as hfmini counts them (EOS: 0)
      → a YAML task in a temporary folder (local jsonl) → lm_eval.simple_evaluate
      → bits_per_byte = -Σ loglikelihood / Σ bytes / ln 2
      → eval_results.json ("task/metric" keys, merged) and the card's model-index

Why loglikelihood, not loglikelihood_rolling: rolling windows start from an EOS prefix and overlap
across blocks, so they predict other tokens from other contexts than hfmini does; one
loglikelihood request per block predicts exactly the block's tokens after its first, from the
same positions. Every block must round-trip (decode, then re-encode, gives back its ids); one that
does not (its edge splits a character's bytes, which text cannot hold) is left out of both sums
and counted in `hfmini_validation/skipped_blocks`: then the figure is of the other blocks only.

lm-eval moves a context's trailing whitespace into the continuation (for word boundaries); a block
whose first token is all whitespace (a newline: about one block in eight of Shakespeare) would lose
its context altogether (stock HFLM then fails an assertion), so the model is lm-eval's HFLM with
that one case kept as given (see `_encode_pair` in `harness_lm`); other contexts encode as in
lm-eval.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import torch

from hfmini.config import HARNESS_DEFAULT_TASK
from hfmini.data.blocks import block_ranges
from hfmini.data.prepare import eval_examples, prepare_eval_tokens
from hfmini.errors import HfminiError
from hfmini.models.sampling import load_model_and_tokenizer
from hfmini.models.size import context_length
from hfmini.models.tokenizer import token_byte_lengths
from hfmini.outputs.card import describe_data, update_card_results
from hfmini.run_folder import EVAL_RESULTS_FILE
from hfmini.training.evaluation import eval_data_args

# Keys of lm-eval's per-task results that are not figures of the model.
NOT_METRICS = ("alias", "sample_len", "samples")
INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'hfmini[eval]'"
OFFLINE_HINT = (
    "needs its dataset from the Hub: unset HF_DATASETS_OFFLINE and connect, "
    f"or use --tasks {HARNESS_DEFAULT_TASK}"
)

# The task's YAML: `context` and `continuation` are column names, used verbatim (no template), and
# joined with no delimiter; the per-document pair feeds lm-eval's own bits_per_byte aggregation.
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: loglikelihood
doc_to_text: context
doc_to_target: continuation
target_delimiter: ""
process_results: !function {task}.process_results
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""
# lm-eval's `!function` loads a file beside the YAML: (loglikelihood, bytes) per document.
TASK_CODE = """\
def process_results(doc, results):
    loglikelihood, _ = results[0]
    return {"bits_per_byte": (loglikelihood, doc["bytes"])}
"""


def block_documents(tokens: torch.Tensor, block_size: int, tokenizer) -> tuple[list[dict], int]:
    """One document per validation block that round-trips through the tokenizer; returns the
    documents and the number of blocks left out. Costs a decode and two encodes per block."""
    token_bytes = token_byte_lengths(tokenizer)
    documents, skipped = [], 0
    for start, end in block_ranges(tokens.numel(), block_size):
        ids = tokens[start:end].tolist()
        context, continuation = tokenizer.decode(ids[:1]), tokenizer.decode(ids[1:])
        # lm-eval encodes context + continuation whole and splits after the context's tokens.
        if tokenizer.encode(context + continuation) != ids or tokenizer.encode(context) != ids[:1]:
            skipped += 1
            continue
        n_bytes = sum(token_bytes[i] for i in ids[1:])
        documents.append({"context": context, "continuation": continuation, "bytes": n_bytes})
    return documents, skipped


def write_task_files(folder: Path) -> Path:
    """The `hfmini_validation` task's YAML and process_results in `folder`; returns the path its
    data goes to (written by `write_documents`, after lm-eval has indexed the task)."""
    task = HARNESS_DEFAULT_TASK
    data_file = folder / f"{task}.jsonl"
    (folder / f"{task}.yaml").write_text(TASK_YAML.format(task=task, data_file=data_file))
    (folder / f"{task}.py").write_text(TASK_CODE)
    return data_file


def write_documents(data_file: Path, model_dir: str | Path, tokenizer, block_size: int) -> int:
    """The model's validation blocks as the task's jsonl documents; returns the number of blocks
    left out (see `block_documents`)."""
    data_args = eval_data_args(model_dir, None, None)
    if eval_examples(data_args, tokenizer, data_args.block_size) is not None:
        raise HfminiError(
            f"{HARNESS_DEFAULT_TASK} scores plain text, and this model was trained on examples "
            "(prompts, pairs or conversations): use hfmini eval without --tasks"
        )
    tokens = prepare_eval_tokens(data_args, tokenizer)
    documents, skipped = block_documents(tokens, block_size, tokenizer)
    if not documents:
        raise HfminiError(f"no validation block of {model_dir} round-trips through its tokenizer")
    data_file.write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    return skipped


def harness_lm(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around a loaded model, keeping an all-whitespace context as it is."""
    from lm_eval.models.huggingface import HFLM

    class BlockLM(HFLM):
        def _encode_pair(self, context: str, continuation: str):
            if context.strip():  # lm-eval's own rule: trailing whitespace joins the continuation
                return super()._encode_pair(context, continuation)
            whole = self.tok_encode(context + continuation)
            split = len(self.tok_encode(context))
            return whole[:split], whole[split:]

    # HFLM warns that a loaded model (not a path) ignores its loading arguments: hfmini loaded it.
    lm_logger = logging.getLogger("lm_eval.models.huggingface")
    level = lm_logger.level
    lm_logger.setLevel(logging.ERROR)
    try:
        return BlockLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_length=context_length(model.config),
            # As hfmini scores: log-softmax in fp32 whatever the weights' dtype (bf16 on a GPU).
            softmax_dtype="float32",
        )
    finally:
        lm_logger.setLevel(level)


def run_harness(
    model_dir: str | Path, tasks: list[str], batch_size: int, limit: int | None
) -> dict:
    """Run lm-eval `tasks` on a saved model; returns {"task/metric": value}, also merged into
    model_dir/eval_results.json and the card's model-index. `limit`: at most this many documents
    per task (hfmini_validation's bits_per_byte then covers those blocks only)."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise HfminiError(INSTALL_HINT) from None
    tasks = [name.strip() for name in tasks if name.strip()]
    if not tasks:
        raise HfminiError(f"--tasks needs task names, e.g. --tasks {HARNESS_DEFAULT_TASK}")
    if batch_size <= 0 or (limit is not None and limit <= 0):
        raise HfminiError(f"batch_size and limit must be positive, got {batch_size} and {limit}")
    quiet_lm_eval()
    own_task = HARNESS_DEFAULT_TASK in tasks
    with tempfile.TemporaryDirectory(prefix="hfmini-harness-") as folder:
        data_file = write_task_files(Path(folder)) if own_task else None
        # Indexing lm-eval's own registry (thousands of YAML files) takes half a minute on a slow
        # CPU: only when a task from it is asked for.
        manager = TaskManager(
            include_path=folder if own_task else None,
            include_defaults=any(name != HARNESS_DEFAULT_TASK for name in tasks),
        )
        check_task_names(tasks, manager)
        model, tokenizer = load_model_and_tokenizer(model_dir)
        context = context_length(model.config)
        skipped = write_documents(data_file, model_dir, tokenizer, context) if own_task else None
        try:
            output = lm_eval.simple_evaluate(
                model=harness_lm(model, tokenizer, batch_size),
                tasks=tasks,
                task_manager=manager,
                limit=limit,
            )
        except Exception as err:
            if needs_download(err):
                raise HfminiError(f"--tasks {','.join(tasks)} {OFFLINE_HINT}") from None
            raise
    results = flat_results(output["results"])
    if skipped is not None:
        results[f"{HARNESS_DEFAULT_TASK}/skipped_blocks"] = skipped
    save_results(model_dir, results, output.get("configs", {}))
    return results


def quiet_lm_eval() -> None:
    """lm-eval logs every step of its setup at INFO; keep its warnings only."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)


def check_task_names(tasks: list[str], manager) -> None:
    """Unknown task names as one line, before any model runs."""
    import difflib

    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HfminiError(
                f"unknown lm-eval task {name!r}{hint}: `lm-eval ls tasks` lists them, "
                f"{HARNESS_DEFAULT_TASK} is the model's own validation text"
            )


def needs_download(err: BaseException) -> bool:
    """Whether lm-eval failed because a dataset is not cached and the Hub is off (offline mode,
    or no network): datasets and huggingface_hub say so in a few ways."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    signs = ("Couldn't reach", "OfflineModeIsEnabled")  # how datasets words an unreachable Hub
    while err is not None:
        if isinstance(err, OfflineModeIsEnabled | LocalEntryNotFoundError | ConnectionError):
            return True
        if any(sign in str(err) for sign in signs):
            return True
        err = err.__cause__ or err.__context__
    return False


def flat_results(results: dict) -> dict[str, float]:
    """lm-eval's {"task": {"metric,filter": value, "metric_stderr,filter": ...}} as
    {"task/metric": value}: numbers only, stderr left out (N/A for bits_per_byte)."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or metric in NOT_METRICS:
                continue
            if not isinstance(value, int | float):
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            suffix = "" if filter_name in ("", "none") else f"/{filter_name}"
            flat[f"{task}/{metric}{suffix}"] = value
    return flat


def save_results(model_dir: str | Path, results: dict[str, float], configs: dict) -> None:
    """Merge `results` into eval_results.json (other keys kept) and the card's model-index."""
    path = Path(model_dir) / EVAL_RESULTS_FILE
    try:
        recorded = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as err:
        raise HfminiError(f"{path} is not JSON ({err}): fix or delete it") from None
    if not isinstance(recorded, dict):
        raise HfminiError(f"{path} is not a mapping of figures: fix or delete it")
    path.write_text(json.dumps({**recorded, **results}, indent=2) + "\n")
    rows = []
    for key, value in results.items():
        task, metric = key.split("/", 1)
        if metric == "skipped_blocks":
            continue
        rows.append((task, *dataset_of(model_dir, task, configs.get(task, {})), metric, value))
    update_card_results(model_dir, rows)


def dataset_of(model_dir: str | Path, task: str, config: dict) -> tuple[str, str]:
    """(dataset type, dataset name) of a task, as the model-index names them."""
    if task == HARNESS_DEFAULT_TASK:
        name, _, hub_datasets = describe_data(eval_data_args(model_dir, None, None))
        return (hub_datasets[0] if hub_datasets else "text"), f"{name} (validation)"
    path = config.get("dataset_path") or task
    return path, config.get("dataset_name") or path
