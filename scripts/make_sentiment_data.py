"""Generate a small labelled set for the classification example: product reviews by sentiment.

Each row is a short review labelled ``positive``, ``negative`` or ``neutral``. A review
joins a product, an opening, a judgement and sometimes a closing remark; the
judgement carries the sentiment, in words that vary (praise, complaints, "it does the
job"), some of it negated ("not bad at all" is positive). The validation set reviews
products that training never names, with judgements training never uses, so its
accuracy measures what was learnt about sentiment rather than memorised sentences.

Regenerate the committed files (byte-identical, the generator is seeded) with::

    python scripts/make_sentiment_data.py

Writes ``data/sentiment/train.csv`` and ``data/sentiment/val.csv`` with columns
``text`` and ``label``.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

SEED = 7
NUM_TRAIN = 300
NUM_VAL = 60
LABELS = ("positive", "negative", "neutral")
# fmt: off
PRODUCTS = ["kettle", "desk lamp", "backpack", "phone case", "blender", "office chair", "rain jacket", "headphones",
            "coffee grinder", "yoga mat", "toaster", "water bottle", "keyboard", "frying pan", "umbrella", "monitor"]
HELD_OUT_PRODUCTS = ["tent", "hair dryer", "bike lock", "rice cooker"]
JUDGEMENTS = {
    "positive": ["works perfectly", "is excellent value", "exceeded my expectations", "is not bad at all",
                 "I love it", "is sturdy and well made", "was worth every penny", "I would buy it again"],
    "negative": ["broke after a week", "is a waste of money", "stopped working on day two", "is not worth it",
                 "I regret buying it", "feels cheap and flimsy", "arrived damaged", "I returned it"],
    "neutral": ["does the job", "is fine, nothing special", "is about what I expected", "is neither good nor bad",
                "is average", "works, I suppose", "is okay for the price", "is as described"],
}
HELD_OUT_JUDGEMENTS = {
    "positive": ["is fantastic", "made my mornings better"],
    "negative": ["is useless", "fell apart quickly"],
    "neutral": ["is acceptable", "is ordinary"],
}
OPENINGS = ["The {p} {j}.", "Bought this {p} last month and it {j}.", "Honestly, the {p} {j}.",
            "My new {p} {j}.", "Review of the {p}: it {j}."]
CLOSINGS = ["", "", " Delivery was quick.", " The colour is nice.", " It came in a big box."]
# fmt: on


def review(rng: random.Random, label: str, products: list[str], judgements: dict[str, list[str]]) -> dict[str, str]:
    judgement = rng.choice(judgements[label])
    opening = rng.choice(OPENINGS)
    # "the kettle I love it" does not read: a first-person judgement follows a colon.
    if judgement.startswith("I "):
        opening = rng.choice(["The {p}: {j}.", "About the {p}: {j}."])
    text = opening.format(p=rng.choice(products), j=judgement) + rng.choice(CLOSINGS)
    return {"text": text, "label": label}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/sentiment", help="folder to write train.csv and val.csv to")
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    splits = {
        "train": [review(rng, LABELS[i % 3], PRODUCTS, JUDGEMENTS) for i in range(NUM_TRAIN)],
        "val": [review(rng, LABELS[i % 3], HELD_OUT_PRODUCTS, HELD_OUT_JUDGEMENTS) for i in range(NUM_VAL)],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        rng.shuffle(rows)
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=["text", "label"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
