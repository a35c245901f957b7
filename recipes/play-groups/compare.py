"""The play-groups table: each comedy run's bits per byte on the two held-out comedies, with
what it cost. Reads the runs' eval_results.json; prints Markdown.

    python recipes/play-groups/compare.py [output/play-groups]
"""

import json
import sys
from pathlib import Path

RUNS = {"scratch": "from scratch", "full": "full fine-tuning", "lora": "LoRA (merged)"}


def main(root: str = "output/play-groups") -> int:
    print("| run | bits per byte (start → end) | minutes | trained parameters | peak memory |")
    print("|---|---|---|---|---|")
    for name, label in RUNS.items():
        path = Path(root) / name / "eval_results.json"
        if not path.is_file():
            print(f"| {label} | (not run: {path} missing) | | | |")
            continue
        r = json.loads(path.read_text())
        start = f"{r['start_bits_per_byte']:.4f} → " if "start_bits_per_byte" in r else ""
        print(
            f"| {label} | {start}{r['bits_per_byte']:.4f} | {r['train_runtime'] / 60:.1f} | "
            f"{r['trainable_parameters']:,} of {r['parameters']:,} | "
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
