"""Bits per byte of a trained model on each held-out play, one row a play, then all together.

    python recipes/shakespeare/score_plays.py output/shakespeare [VALIDATION_JSONL]

VALIDATION_JSONL has one play a row ("play" and "text" columns), as `python -m hfmini.shakespeare
--groups ... --validation ...` writes it; default: the built-in corpus's validation split. Each play
is scored as `hfmini eval` scores it, in blocks of the model's context.
"""

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from hfmini.cli import main as hfmini


def score(model_dir: str, validation_file: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = hfmini(["eval", model_dir, "--validation_file", str(validation_file)])
    if code != 0:
        raise SystemExit(code)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def main(model_dir: str, validation_jsonl: str | None = None) -> int:
    if validation_jsonl is None:
        from hfmini.data.sources import shakespeare_files

        validation_jsonl = shakespeare_files()["validation"][0]
    rows = [json.loads(line) for line in Path(validation_jsonl).read_text().splitlines()]
    print("| play | bytes | bits per byte |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for row in rows:
            path = Path(folder) / f"{row['play']}.jsonl"
            path.write_text(json.dumps({"text": row["text"]}) + "\n")
            result = score(model_dir, path)
            print(
                f"| {row['play']} | {len(row['text'].encode()):,} | {result['bits_per_byte']:.4f} |"
            )
    print(f"| all together | | {score(model_dir, Path(validation_jsonl))['bits_per_byte']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
