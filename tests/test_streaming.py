"""Data that does not fit in memory: token files read in place, a bounded tokenizer sample, and
streaming with exact resume on one process and on two."""

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    BIN,
    TRAIN_SCRIPT,
    assert_eval_reproduces_report,
    tiny_run_args,
    train_error,
    write_lines,
)
from safetensors.torch import load_file

from hfmini.config import parse_config
from hfmini.training.trainer import run_training


def documents(path: Path, n: int, seed: int = 0) -> Path:
    """JSON lines, one short document a row, deterministic."""
    rng = np.random.default_rng(seed)
    words = "thou art the king my lord what say you good night sweet prince fair".split()
    rows = [" ".join(rng.choice(words, size=rng.integers(20, 80))) + "." for _ in range(n)]
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    return path


def losses(out):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def max_diff(a, b):
    wa, wb = load_file(Path(a) / "model.safetensors"), load_file(Path(b) / "model.safetensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


# --- token files --------------------------------------------------------------------------------


def test_token_files_are_memory_mapped_and_read_again(tmp_path):
    from hfmini.data.prepare import prepare_data

    args = tiny_run_args(
        tmp_path / "o", 1, "--train_file", str(write_lines(tmp_path / "t.txt", 400))
    )
    data, tokenizer = prepare_data(parse_config([*args, "--vocab_size", "300"]))
    assert data.train_tokens.dtype == torch.uint16  # 300 ids fit: 2 bytes a token
    cache = Path(os.environ["HF_HOME"])
    files = [
        f
        for f in cache.rglob("tokens-*.bin")
        if f.stat().st_size
        in (
            2 * data.eval_tokens.numel(),
            2 * (data.train_tokens.numel() + data.dropped_train_tokens),
        )
    ]
    assert len(files) == 2  # train and validation
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the tensors are the files, mapped, not copies in memory
        mapped = maps.read_text()
        assert all(str(f) in mapped for f in files)
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again, _ = prepare_data(parse_config([*args, "--vocab_size", "300"]))
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # read, not written again
    assert torch.equal(again.train_tokens, data.train_tokens)
    # The fingerprint is that of the int32 streams, as before token files.
    import hashlib

    digest = hashlib.sha256()
    for tokens in (data.train_tokens, data.eval_tokens):
        digest.update(tokens.to(torch.int32).numpy().tobytes())
    assert data.fingerprint() == digest.hexdigest()[:16]
    text = tokenizer.decode(data.train_tokens[:50].tolist())
    assert text.startswith((tmp_path / "t.txt").read_text()[:20])


def test_the_tokenizer_trains_on_a_bounded_sample(tmp_path, caplog):
    from hfmini.data.prepare import prepare_data

    caplog.set_level(logging.INFO, logger="hfmini.data")
    train = write_lines(tmp_path / "t.txt", 3000)
    args = tiny_run_args(tmp_path / "o", 1, "--train_file", str(train), "--vocab_size", "300")
    prepare_data(parse_config([*args, "--tokenizer_train_bytes", "20000"]))
    assert "tokenizer: trains on every" in caplog.text
    assert "MB of training text (tokenizer_train_bytes 20000)" in caplog.text
    caplog.clear()
    prepare_data(parse_config([*args, "--tokenizer_train_bytes", "0"]))
    assert "tokenizer: trains on every" not in caplog.text


# --- streaming ----------------------------------------------------------------------------------


@pytest.fixture
def small_stream(monkeypatch):
    """A small shuffle buffer and document batch, so a resume lands with blocks in the buffer,
    tokens pending and the stream mid-file."""
    monkeypatch.setattr("hfmini.data.streaming.SHUFFLE_BLOCKS", 12)
    monkeypatch.setattr("hfmini.data.streaming.DOCUMENT_BATCH", 5)


STREAM = ("--streaming", "true", "--vocab_size", "300", "--block_size", "32")


def stream_args(tmp_path, out, steps, *extra):
    train = documents(tmp_path / "train.jsonl", 300)
    val = documents(tmp_path / "val.jsonl", 20, seed=1)
    return tiny_run_args(
        out,
        steps,
        "--train_file",
        str(train),
        "--validation_file",
        str(val),
        *STREAM,
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--dropout",
        "0.1",
        *extra,
    )


def test_streaming_trains_and_resumes_exactly(tmp_path, small_stream, caplog, capsys):
    full, saved, resumed = tmp_path / "full", tmp_path / "saved", tmp_path / "resumed"
    run_training(parse_config(stream_args(tmp_path, full, 10)))
    assert "data: streamed in blocks of 32 tokens" in caplog.text
    run_training(parse_config(stream_args(tmp_path, saved, 10, "--save_steps", "5")))
    assert max_diff(full, saved) == 0.0
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(saved / "checkpoints" / "step-5", resumed / "checkpoints" / "step-5")
    state = torch.load(resumed / "checkpoints" / "step-5" / "stream-0.pt", weights_only=True)
    assert len(state["buffer"]) and state["position"] is not None  # a real mid-stream point
    resume = ("--save_steps", "5", "--resume_from_checkpoint", "latest")
    run_training(parse_config(stream_args(tmp_path, resumed, 10, *resume)))
    assert_eval_reproduces_report(full, capsys)  # hfmini eval scores the same blocks
    assert sorted(losses(resumed)) == list(range(6, 11))
    assert {s: losses(resumed)[s] for s in range(6, 11)} == pytest.approx(
        {s: losses(full)[s] for s in range(6, 11)}, rel=1e-5
    )
    assert max_diff(full, resumed) < 1e-5


def test_streaming_without_a_validation_split_holds_out_the_first_documents(tmp_path, caplog):
    from hfmini.data.prepare import prepare_data

    caplog.set_level(logging.INFO, logger="hfmini.data")
    train = documents(tmp_path / "train.jsonl", 200)
    args = tiny_run_args(
        tmp_path / "o",
        2,
        "--train_file",
        str(train),
        *STREAM,
        "--max_eval_samples",
        "4",
    )
    data, tokenizer = prepare_data(parse_config(args))
    first = json.loads(train.read_text().splitlines()[0])["text"]
    assert tokenizer.decode(data.eval_tokens[:10].tolist()) in first
    assert data.eval_tokens.numel() == 4 * 32
    assert "validation: the stream's first" in caplog.text
    block = next(iter(data.stream))["input_ids"]
    assert block.shape == (32,)


def test_streaming_holds_out_a_bounded_share_of_the_documents(tmp_path, caplog, capsys):
    """Without a validation file the held-out documents are only those the validation tokens
    need, at most validation_split_percentage % of the stream (fewer validation tokens, with a
    warning, when the stream is short); a stream too short for one block is one line."""
    from hfmini.data.prepare import prepare_data

    caplog.set_level(logging.INFO, logger="hfmini.data")
    train = documents(tmp_path / "train.jsonl", 70)
    args = tiny_run_args(tmp_path / "o", 2, "--train_file", str(train), *STREAM)
    data, _ = prepare_data(parse_config([*args, "--max_eval_samples", "2"]))
    assert data.eval_tokens.numel() == 2 * 32
    held = [r.getMessage() for r in caplog.records if "the stream's first" in r.getMessage()]
    assert held and int(held[-1].split("first ")[1].split()[0]) <= 2
    data, _ = prepare_data(parse_config([*args, "--max_eval_samples", "200"]))
    assert "from the first 4 of the stream's 70 documents" in caplog.text  # 5%, rounded
    assert 32 <= data.eval_tokens.numel() < 200 * 32
    one = documents(tmp_path / "one.jsonl", 1)
    message = train_error(
        capsys, *tiny_run_args(tmp_path / "p", 2, "--train_file", str(one), *STREAM)
    )
    assert "holds 1 document(s), too few to hold out 5% for validation" in message
    assert "set validation_file" in message


def test_streaming_reads_text_files_a_document_each(tmp_path):
    train = write_lines(tmp_path / "train.txt", 300)
    val = write_lines(tmp_path / "val.txt", 60, seed=4)
    out = tmp_path / "o"
    files = ("--train_file", str(train), "--validation_file", str(val))
    run_training(parse_config(tiny_run_args(out, 2, *files, *STREAM)))
    assert json.loads((out / "eval_results.json").read_text())["step"] == 2


def test_streaming_needs_max_steps(capsys, tmp_path):
    message = train_error(
        capsys, "--streaming", "true", "--max_steps", "-1", "--output_dir", str(tmp_path / "o")
    )
    assert "streaming reads the data as training goes" in message and "set max_steps" in message


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["true", "false"])
def test_two_processes_resume_exactly(tmp_path, streaming):
    """torchrun, 2 gloo processes, each reading its own part of the stream (or its blocks of the
    shared token files); a resume from the step-4 checkpoint ends with the uninterrupted run's
    weights."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def torchrun(out, *extra):
        command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
        args = [*stream_args(tmp_path, out, 8, *extra), "--streaming", streaming]
        result = subprocess.run(
            [*command, str(TRAIN_SCRIPT), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    full, saved, resumed = tmp_path / "full", tmp_path / "saved", tmp_path / "resumed"
    torchrun(full)
    torchrun(saved, "--save_steps", "4")
    checkpoint = saved / "checkpoints" / "step-4"
    streams = {p.name for p in checkpoint.glob("stream-*.pt")}
    assert streams == ({"stream-0.pt", "stream-1.pt"} if streaming == "true" else set())
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, resumed / "checkpoints" / "step-4")
    torchrun(resumed, "--save_steps", "4", "--resume_from_checkpoint", "latest")
    assert {s: losses(resumed)[s] for s in range(5, 9)} == pytest.approx(
        {s: losses(full)[s] for s in range(5, 9)}, rel=1e-5
    )
    assert max_diff(full, resumed) < 1e-5


def test_streaming_names_a_missing_column_and_refuses_chat_rows(capsys, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "some text here"}) + "\n", encoding="utf-8")
    stream = ("--streaming", "true", "--max_steps", "2", "--output_dir", str(tmp_path / "o"))
    message = train_error(capsys, "--train_file", str(rows), *stream)
    assert "text_column 'text' is not in the streamed data; its columns are body" in message
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    message = train_error(capsys, "--train_file", str(chat), *stream)
    assert "streaming reads plain text only" in message
