"""Byte-level BPE tokenizer, trained with `tokenizers` on the training split only.

Like GPT-2: bytes are mapped to printable symbols before merging, so any UTF-8 text round-trips
exactly and nothing is ever unknown; `<|endoftext|>` is bos, eos and unk, and pad is set to it
explicitly (packed training never pads; generation needs a pad id).

Training costs a few seconds per 10 MB on one core; the result is cached under
`$HF_HOME/hfmini/tokenizers/` keyed by the training data's datasets fingerprint and the vocabulary
size, so a second run on the same data skips it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hfmini.cache import hfmini_cache_dir
from hfmini.errors import HfminiError, cache_full, disk_full

logger = logging.getLogger("hfmini")

EOS_TOKEN = "<|endoftext|>"


def _wrap(tokenizer_object, model_max_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )


def train_tokenizer(texts: Iterator[str], vocab_size: int, model_max_length: int):
    """Train a byte-level BPE of at most `vocab_size` tokens; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    # GPT-2's pre-tokenizer: split on words/spaces/punctuation, then map bytes to symbols.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer, model_max_length)


def _cache_dir(fingerprint: str, vocab_size: int) -> Path:
    key = hashlib.sha256(f"{fingerprint}-{vocab_size}-bytelevel-v1".encode()).hexdigest()[:16]
    return hfmini_cache_dir() / "tokenizers" / key


# What a folder holds when it has a tokenizer transformers can load.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)


def check_has_tokenizer(
    name: str, fix: str = "or set --tokenizer_name to a folder that has them"
) -> None:
    """A local model folder without tokenizer files: transformers would build something from
    config.json alone that reads every text as a token or two (transformers 5: an empty GPT-2
    tokenizer of one token)."""
    folder = Path(name)
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise HfminiError(
            f"{folder} has no tokenizer (no tokenizer.json or tokenizer_config.json): copy the "
            f"tokenizer files of the model it came from into it, {fix}"
        )


def get_tokenizer(
    tokenizer_name: str | None,
    train_dataset=None,
    text_column: str = "text",
    vocab_size: int = 4096,
    model_max_length: int | None = 1024,
):
    """Load `tokenizer_name`, or train (or reuse the cached) BPE on `train_dataset[text_column]`.
    `model_max_length` None keeps a loaded tokenizer's own."""
    from transformers import AutoTokenizer

    if tokenizer_name is not None:
        check_has_tokenizer(tokenizer_name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise HfminiError(
                f"could not load tokenizer {tokenizer_name!r} ({str(err).splitlines()[0]}): "
                "point tokenizer_name at a folder holding tokenizer.json (or a Hub id), or unset "
                "it to use the model's own"
            ) from None
        if tokenizer.eos_token is None:
            raise HfminiError(f"tokenizer {tokenizer_name!r} has no eos token: pick another")
        if tokenizer.pad_token is None:
            # GPT-2's has none. Packed blocks never pad; generation and batching need an id.
            tokenizer.pad_token = tokenizer.eos_token
            logger.info(
                "tokenizer %s has no pad token: using its eos token %r as pad",
                tokenizer_name,
                tokenizer.eos_token,
            )
        if model_max_length is not None:
            tokenizer.model_max_length = model_max_length
        return tokenizer

    cache = _cache_dir(train_dataset._fingerprint, vocab_size)
    if (cache / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cache)
        tokenizer.model_max_length = model_max_length
        return tokenizer

    def batches() -> Iterator[list[str]]:
        for batch in train_dataset.iter(batch_size=1000):
            yield batch[text_column]

    tokenizer = train_tokenizer(batches(), vocab_size, model_max_length)
    # Save under a private name, then rename: a concurrent run never sees half a tokenizer.
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    try:
        tokenizer.save_pretrained(tmp)
    except Exception as err:  # tokenizers reports a full disk as a plain Exception
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(err):
            raise cache_full("the trained tokenizer", hfmini_cache_dir()) from None
        raise
    try:
        os.replace(tmp, cache)
    except OSError:  # another process cached it first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def tokenizer_for_run(model_args, train_chunks, context_length: int, resume_path: Path | None):
    """The tokenizer of a training run: the resumed checkpoint's own (a given `tokenizer_name`
    must match it), else `tokenizer_name`, else model_name_or_path's own, else a BPE trained on
    the train chunks only."""
    if model_args.model_name_or_path is not None:
        context_length = None  # the fine-tuned model's tokenizer knows its context
    if resume_path is None:
        name = model_args.tokenizer_name or model_args.model_name_or_path
        return get_tokenizer(name, train_chunks, "text", model_args.vocab_size, context_length)
    saved = get_tokenizer(str(saved_tokenizer_dir(resume_path)), model_max_length=context_length)
    if model_args.tokenizer_name:
        given = get_tokenizer(model_args.tokenizer_name, model_max_length=context_length)
        if given.get_vocab() != saved.get_vocab():
            raise HfminiError(
                f"tokenizer {model_args.tokenizer_name} does not match the one the checkpoint "
                f"was trained with ({len(given)} vs {len(saved)} tokens): drop --tokenizer_name "
                "when resuming"
            )
    return saved


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """tokenizer.json and tokenizer_config.json, a chat template inside the latter: the one
    place every transformers version and serving tool reads it from. The config is then made
    portable (`portable_tokenizer_config`), so that transformers 4.x loads it as well as 5.x."""
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    config_file = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(
        json.dumps(portable_tokenizer_config(config), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )


# Keys transformers 5 writes that describe how this process loaded the files, not the tokenizer.
_LOAD_TIME_KEYS = ("backend", "is_local", "local_files_only")


def portable_tokenizer_config(config: dict) -> dict:
    """tokenizer_config.json as transformers 4.57 and 5.x both read it.

    transformers 5 names the class `TokenizersBackend`, which 4.x cannot import ("Tokenizer class
    TokenizersBackend does not exist"); `PreTrainedTokenizerFast` is the same tokenizer.json
    loaded as it is, in both (5.x aliases it to TokenizersBackend). 5.x lists extra special
    tokens as `extra_special_tokens`, a list, where 4.x expects a mapping of names there and
    reads the list from `additional_special_tokens`, which 5.x reads too.
    """
    config = {k: v for k, v in config.items() if k not in _LOAD_TIME_KEYS}
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        if extra:
            config["additional_special_tokens"] = extra
    return config


def saved_tokenizer_dir(checkpoint: Path) -> Path:
    """A checkpoint keeps its tokenizer beside the weights (older ones: in tokenizer/)."""
    return checkpoint if (checkpoint / "tokenizer.json").is_file() else checkpoint / "tokenizer"


def token_byte_lengths(tokenizer) -> list[int]:
    """UTF-8 bytes each token id stands for (0 for special tokens); used for bits per byte.

    Byte-level BPE maps each byte to exactly one symbol, so a token's byte count is the length of
    its symbol string. Costs one pass over the vocabulary.
    """
    from tokenizers import pre_tokenizers

    byte_symbols = set(pre_tokenizers.ByteLevel.alphabet())
    special = set(tokenizer.all_special_ids)
    lengths = [0] * len(tokenizer)
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        if all(symbol in byte_symbols for symbol in token):
            lengths[token_id] = len(token)
        else:  # not a byte-level vocabulary: measure the decoded text instead
            lengths[token_id] = len(tokenizer.decode([token_id]).encode("utf-8"))
    return lengths
