"""Benchmark reading and tokenizing a large JSONL file through ``SFTDataModule``.

Writes ``--rows`` short prompt/completion examples to a temporary folder, then
prepares the training split twice, each time in a fresh process with the same
``datasets`` cache: the first run reads and tokenizes, the second should find both
in the cache. Prints each run's wall time and peak resident memory (its own and its
tokenizing workers').

    python scripts/bench_tokenize.py --rows 200000 --num-proc 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lit_lora.data import SFTDataModule

TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "tiny-llama"


def write_rows(path: Path, rows: int) -> None:
    """Write ``rows`` distinct short prompt/completion examples as JSON Lines."""
    with path.open("w", encoding="utf-8") as file:
        for index in range(rows):
            file.write(json.dumps({"prompt": f"What is {index} plus one?", "completion": f"It is {index + 1}."}) + "\n")


def measure(train_file: str, num_proc: int) -> dict[str, float]:
    """Prepare the training split once and return its wall time and peak memory."""
    start = time.perf_counter()
    data = SFTDataModule(train_file, num_proc=num_proc, tokenizer_name_or_path=str(TOKENIZER), max_length=64)
    data.setup("fit")
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": round(seconds, 2),
        "examples": len(data.dataset("train")),
        "peak_rss_mib": round(own / 1024, 1),  # ru_maxrss is in KiB on Linux
        "peak_worker_rss_mib": round(workers / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one run in this process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.num_proc)))
        return
    with tempfile.TemporaryDirectory() as folder:
        train_file = Path(folder) / "train.jsonl"
        start = time.perf_counter()
        write_rows(train_file, args.rows)
        size = train_file.stat().st_size / 2**20
        print(f"wrote {args.rows:,} rows ({size:.1f} MiB) in {time.perf_counter() - start:.1f}s")
        # A cache of its own, so the first run really starts cold.
        env = {**os.environ, "HF_DATASETS_CACHE": str(Path(folder) / "cache")}
        for run in ("first (cold)", "second (cached)"):
            command = [sys.executable, __file__, "--measure", str(train_file), "--num-proc", str(args.num_proc)]
            result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            print(f"{run}: {result.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
