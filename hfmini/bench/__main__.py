"""python -m hfmini.bench: every section, the table, output/bench.json (see hfmini/bench/__init__.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


from hfmini.bench.data import bench_data
from hfmini.bench.finetuning import bench_finetuning, peak_memory_of_run
from hfmini.bench.generation import bench_generation
from hfmini.bench.grpo import bench_grpo
from hfmini.bench.packing import bench_packing
from hfmini.bench.preference import bench_preference
from hfmini.bench.report import machine, print_table
from hfmini.bench.timing import REPO_RECIPE
from hfmini.bench.training import bench_training

SECTIONS = ["data", "training", "finetuning", "packing", "generation", "preference", "grpo"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfmini bench", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=REPO_RECIPE)
    parser.add_argument("--output", default="output/bench.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps_per_round", type=int, default=4)
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="run these sections only"
    )
    # Internal: bench_finetuning's peak-memory subprocess ({"argv": [...], "steps": N} as JSON).
    parser.add_argument("--peak_memory_run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.peak_memory_run:
        request = json.loads(args.peak_memory_run)
        peak = peak_memory_of_run(request["argv"], request["steps"])
        print(json.dumps({"peak_memory_bytes": peak}))  # the last line: what the parent reads
        return 0
    with tempfile.TemporaryDirectory(prefix="hfmini-bench-") as tmp:
        work_dir = Path(tmp)
        # A private datasets cache: the cold data run is really cold.
        os.environ["HF_DATASETS_CACHE"] = str(work_dir / "datasets")
        sections = {
            "data": lambda: bench_data(args.recipe, work_dir),
            "training": lambda: bench_training(
                args.recipe, args.rounds, args.steps_per_round, work_dir
            ),
            "finetuning": lambda: bench_finetuning(
                args.recipe, args.rounds, args.steps_per_round, work_dir
            ),
            "packing": lambda: bench_packing(work_dir, args.rounds),
            "generation": lambda: bench_generation(args.recipe),
            "preference": lambda: bench_preference(
                args.recipe, args.rounds, args.steps_per_round, work_dir
            ),
            "grpo": lambda: bench_grpo(args.recipe, args.rounds, args.steps_per_round, work_dir),
        }
        results = {"machine": machine(), "recipe": args.recipe}
        results |= {name: run() for name, run in sections.items() if name in args.only}
    print_table(results)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
