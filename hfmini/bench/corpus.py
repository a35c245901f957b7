"""`python -m hfmini.bench.corpus`: training on a corpus larger than the memory a run may use.

    python -m hfmini.bench.corpus [--gigabytes 2] [--small_megabytes 100] [--memory_limit_gb 1]
                                  [--single_file]

1. Writes two corpora of JSON lines files (100 MB each, the last one shorter; a row is a
   document of 50 paragraphs): the built-in plays' paragraphs, reshuffled with a seeded
   generator for every copy, to --gigabytes and to --small_megabytes (a corpus that fits in
   memory). JSON lines, as large corpora come (or Parquet). --single_file: each corpus is one
   .txt file instead, one document that is read in pieces of about 1 MB (readers.text_pieces),
   so memory should not grow with the file either.
2. Runs hfmini's training (`hfmini.training.trainer.run_training`) on each in its own process, a micro GPT-2 for --steps steps, with
   preprocessing_num_workers set to every core. The big run is confined by a cgroup memory limit
   of --memory_limit_gb when the machine lets one be made (Linux, root, cgroup v1 or v2); else it
   runs unconfined and the report says so.
   Then the big run again under torchrun with --processes processes (on the data the first run
   prepared), confined to --processes × --memory_limit_gb in all.
3. Reports for each: tokenize-and-pack MB/s (the cold data preparation, timed in that process:
   reading, chunking, tokenizer training on its sample, tokenizing, writing the token files), training tokens/s (median of the logged windows), and the process's
   peak memory: anonymous memory (RssAnon, sampled every 0.2 s: what the process itself holds)
   and VmHWM (which also counts the token files' mapped pages, reclaimable page cache).

The corpus and the datasets cache live in a temporary folder that is removed at the end; the
big corpus needs about 3.5 × --gigabytes of free disk (text, Arrow chunks, Arrow tokens, token
file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hfmini.bench.report import machine as _machine
from hfmini.config import parse_config
from hfmini.data.prepare import prepare_data
from hfmini.data.shakespeare import load_plays
from hfmini.run_folder import EVAL_RESULTS_FILE, METRICS_FILE
from hfmini.training.trainer import run_training as train

FILE_BYTES = 100_000_000
DOCUMENT_PARAGRAPHS = 50  # a row (a document) of the JSON lines: about 10 KB
REPO = Path(__file__).resolve().parent.parent


def write_corpus(folder: Path, total_bytes: int, seed: int = 0, single_text: bool = False) -> int:
    """JSON lines of reshuffled play paragraphs, `total_bytes` of text in all (within one
    paragraph); returns the text's bytes. `single_text`: one .txt file instead (one document),
    written 100 MB at a time."""
    import numpy as np

    plays = [text for split in load_plays().values() for text in split.values()]
    paragraphs = [p for text in plays for p in text.split("\n\n") if p.strip()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, index = 0, 0
    while written < total_bytes:
        size = min(FILE_BYTES, total_bytes - written)
        parts, length = [], 0
        while length < size:
            for i in rng.permutation(len(paragraphs)):
                parts.append(paragraphs[i])
                length += len(paragraphs[i]) + 2
                if length >= size:
                    break
        if single_text:
            with (folder / "corpus.txt").open("a", encoding="utf-8") as handle:
                handle.write("\n\n".join(parts) + "\n\n")
            written += length
            continue
        rows = [
            json.dumps({"text": "\n\n".join(parts[i : i + DOCUMENT_PARAGRAPHS])})
            for i in range(0, len(parts), DOCUMENT_PARAGRAPHS)
        ]
        (folder / f"part-{index:04d}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        written += length
        index += 1
    return written


def _memory_cgroup(limit_bytes: int) -> Path | None:
    """A fresh memory cgroup limited to `limit_bytes` (v2 memory.max, or v1 limit_in_bytes), or
    None where none can be made (not Linux, not root, no memory controller)."""
    name = f"hfmini-bench-{os.getpid()}"
    for root, limit_file in (
        (Path("/sys/fs/cgroup"), "memory.max"),
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
    ):
        folder = root / name
        try:
            if not (root / "cgroup.procs").exists():
                continue
            folder.mkdir()
            (folder / limit_file).write_text(str(limit_bytes))
            return folder
        except OSError:
            if folder.is_dir():
                folder.rmdir()
    return None


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (Linux /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            tasks = Path(f"/proc/{parent}/task").iterdir()
            kids = [int(c) for t in tasks for c in (t / "children").read_text().split()]
        except OSError:
            kids = []
        found += kids
        frontier += kids
    return found


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "VmHWM", "VmRSS"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def run_training(
    corpus: Path, out: Path, steps: int, cgroup: Path | None, processes: int = 1
) -> dict:
    """One training run in its own process (or `processes` under torchrun, on data the
    one-process run prepared); peak memory sampled from outside, per process."""
    argv = ["--train_file", str(corpus)]
    argv += ["--model_size", "micro", "--vocab_size", "4096", "--block_size", "256"]
    argv += ["--per_device_train_batch_size", "16", "--max_steps", str(steps)]
    argv += ["--logging_steps", "5", "--eval_steps", "0", "--save_steps", "0"]
    argv += ["--validation_split_percentage", "0.05", "--max_eval_samples", "20"]
    argv += ["--preprocessing_num_workers", str(os.cpu_count() or 1)]
    argv += ["--torch_compile", "false", "--mixed_precision", "no", "--report_to", "none"]
    argv += ["--sample_max_new_tokens", "1", "--output_dir", str(out)]
    command = [sys.executable, "-m", "hfmini.bench.corpus", "--child", json.dumps(argv)]
    if processes > 1:
        torchrun = Path(sys.executable).parent / "torchrun"
        command = [str(torchrun), "--standalone", "--nproc_per_node", str(processes)]
        command += [str(REPO / "recipes" / "train.py"), *argv]
    started = time.perf_counter()
    # The log goes to a file: a pipe read only at the end would fill and block the child.
    log_path = out.parent / f"{out.name}.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text(str(process.pid))
    peak_anon = 0  # the largest of any one process (the run, or each torchrun worker)
    while process.poll() is None:
        pids = [process.pid] + _children(process.pid)
        peak_anon = max([peak_anon] + [_status(pid).get("RssAnon", 0) for pid in pids])
        time.sleep(0.2)
    log_file.close()
    log = log_path.read_text()
    if process.returncode != 0:
        raise SystemExit(f"training on {corpus} failed ({process.returncode}):\n{log[-3000:]}")
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    rates = [r["train/tokens_per_second"] for r in rows if "train/tokens_per_second" in r]
    results = json.loads((out / EVAL_RESULTS_FILE).read_text())
    cgroup_peak = None
    if cgroup is not None:
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            if (cgroup / name).is_file():
                cgroup_peak = int((cgroup / name).read_text())
    prepared = float("nan")  # torchrun: the data came from the cache
    if processes == 1:
        prepared = json.loads(log.strip().splitlines()[-1])["prepare_seconds"]
    return {
        "wall_seconds": seconds,
        "prepare_seconds": prepared,
        "tokens_per_second": statistics.median(rates[1:] or rates),
        "peak_anonymous_bytes": peak_anon,
        "peak_rss_bytes": results["peak_memory_bytes"],
        # The whole cgroup (the run and its tokenizing workers, page cache included).
        "cgroup_peak_bytes": cgroup_peak,
    }


def child(argv: list[str]) -> None:
    """In the measured process: the cold data preparation, timed, then the training run (which
    reads the prepared data from the cache). The last line printed is the timing, as JSON."""

    config = parse_config(argv)
    started = time.perf_counter()
    prepare_data(config)
    prepared = time.perf_counter() - started
    train(config)
    print(json.dumps({"prepare_seconds": prepared}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hfmini.bench.corpus", description=__doc__)
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--small_megabytes", type=float, default=100.0)
    parser.add_argument("--memory_limit_gb", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--processes", type=int, default=2, help="then the big run again under torchrun"
    )
    parser.add_argument(
        "--single_file",
        action="store_true",
        help="each corpus as one .txt file (one document, read in pieces) instead of JSON lines",
    )
    parser.add_argument("--output", default="output/bench_corpus.json")
    parser.add_argument("--work_dir", default=None, help="default: a temporary folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: the measured process
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hfmini-corpus-"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "datasets")  # cold, and removed at the end
    os.environ["HF_HOME"] = str(work / "hf")
    report = {"machine": _machine(), "memory_limit_bytes": int(args.memory_limit_gb * 2**30)}
    report["corpus"] = "one .txt file" if args.single_file else "JSON lines files of 100 MB"
    try:
        for name, size in (("small", args.small_megabytes * 1e6), ("big", args.gigabytes * 1e9)):
            corpus = work / f"{name}-corpus"
            text_bytes = write_corpus(corpus, int(size), single_text=args.single_file)
            cgroup = _memory_cgroup(report["memory_limit_bytes"]) if name == "big" else None
            try:
                run = run_training(corpus, work / f"{name}-run", args.steps, cgroup)
            finally:
                if cgroup is not None:
                    cgroup.rmdir()
            run["corpus_bytes"] = text_bytes
            run["memory_limited"] = cgroup is not None
            run["tokenize_and_pack_mb_per_second"] = text_bytes / 1e6 / run["prepare_seconds"]
            report[name] = run
            if name == "big" and args.processes > 1:
                # The limit per process: N processes together get N times the memory.
                cgroup = _memory_cgroup(report["memory_limit_bytes"] * args.processes)
                try:
                    run = run_training(
                        corpus, work / "big-torchrun", args.steps, cgroup, args.processes
                    )
                finally:
                    if cgroup is not None:
                        cgroup.rmdir()
                run |= {"corpus_bytes": text_bytes, "memory_limited": cgroup is not None}
                report[f"big, {args.processes} processes"] = run
            shutil.rmtree(corpus)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"hfmini bench_corpus — {report['machine']}")
    for name in [k for k in report if k.startswith(("small", "big"))]:
        r = report[name]
        limit = (
            f"under a {args.memory_limit_gb:g} GiB cgroup limit per process"
            if r["memory_limited"]
            else "no limit"
        )
        print(
            f"{name}: {r['corpus_bytes'] / 1e9:.2f} GB of text ({limit}); prepare "
            f"{r.get('tokenize_and_pack_mb_per_second', float('nan')):.1f} MB/s; train "
            f"{r['tokens_per_second']:,.0f} tokens/s; peak anonymous of a process "
            f"{r['peak_anonymous_bytes'] / 2**20:,.0f} MiB, VmHWM {r['peak_rss_bytes'] / 2**20:,.0f}"
            f" MiB, cgroup {(r['cgroup_peak_bytes'] or 0) / 2**20:,.0f} MiB"
        )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
