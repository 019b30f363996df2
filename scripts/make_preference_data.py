"""Generate preference pairs from the quickstart data, for the DPO example and tests.

Each quickstart example becomes a pair: the prompt (the user's request), the chosen
response (the compact JSON answer), and a rejected response with one of the mistakes
SmolLM2-135M-Instruct makes before fine-tuning: a wrong city, a numeric date, a
multi-line JSON layout, or a missing field. The validation pairs come from the
quickstart's validation set, so they share no (name, city) pair with training.

Regenerate the committed files (byte-identical, the generator is seeded) with::

    python scripts/make_preference_data.py

Writes ``data/preference/train.jsonl`` and ``data/preference/val.jsonl``, one
``{"prompt": ..., "chosen": ..., "rejected": ...}`` object a line.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 99
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def rejected_answer(answer: dict[str, str], mistake: int, cities: list[str], rng: random.Random) -> str:
    """The answer with one mistake: 0 wrong city, 1 numeric date, 2 multi-line JSON, 3 no date."""
    wrong = dict(answer)
    if mistake == 0:
        wrong["city"] = rng.choice([city for city in cities if city != answer["city"]])
    elif mistake == 1:
        day, month = answer["date"].split(" ")
        wrong["date"] = f"{int(day):02d}/{MONTHS.index(month) + 1:02d}"
    elif mistake == 2:
        return json.dumps(answer, indent=2)
    else:
        del wrong["date"]
    return json.dumps(wrong)


def pairs(rows: list[dict], cities: list[str], rng: random.Random) -> list[dict[str, str]]:
    result = []
    for index, row in enumerate(rows):
        prompt, answer = (turn["content"] for turn in row["messages"])
        result.append(
            {
                "prompt": prompt,
                "chosen": answer,
                "rejected": rejected_answer(json.loads(answer), index % 4, cities, rng),
            }
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source", default="data/quickstart", help="folder with the quickstart's train.jsonl and val.jsonl"
    )
    parser.add_argument("--out", default="data/preference", help="folder to write train.jsonl and val.jsonl to")
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    splits = {
        name: [json.loads(line) for line in (Path(args.source) / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "val")
    }
    cities = sorted({json.loads(row["messages"][1]["content"])["city"] for rows in splits.values() for row in rows})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        lines = [json.dumps(pair, ensure_ascii=False) for pair in pairs(rows, cities, rng)]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
