"""Tasks of three length profiles that ``scripts/benchmark.py --profiles`` generates for itself.

The benchmark's own data should not be data lit_lora was tuned on, and the defaults
must hold where lengths differ from the quickstart's: so the benchmark writes three
synthetic, learnable chat tasks, seeded and deterministic, whose token counts (with
SmolLM2's chat template, its default system prompt included) spread the way real
instruction data does:

- ``short``: short prompt, short answer (sort a few words), about 45-80 tokens.
- ``long_prompt``: a long prompt, a short answer (look a value up in an inventory of
  10-68 lines), about 200-1,000 tokens with a one-number answer.
- ``long_answer``: a short prompt, a long answer (write one sentence for each of
  3-52 items), about 100-1,000 tokens, most of them supervised.

Each profile is a ``messages`` JSONL training file, a validation file of other
examples, and the ``data.max_length`` that fits its longest example.

    python scripts/benchmark_profiles.py /tmp/profiles   # write all three
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# fmt: off
WORDS = [
    "apple", "river", "candle", "marble", "forest", "pepper", "violin", "harbor", "lantern", "meadow",
    "copper", "falcon", "garden", "island", "jacket", "kettle", "ladder", "mirror", "needle", "orange",
    "pillow", "quartz", "rocket", "saddle", "tunnel", "velvet", "window", "yellow", "zipper", "basket",
    "cactus", "dragon", "engine", "feather", "glacier", "hammer", "igloo", "jungle", "kernel", "lemon",
]
COLORS = ["red", "blue", "green", "black", "white", "silver", "golden", "brown", "purple", "orange"]
ANIMALS = ["fox", "owl", "whale", "tiger", "horse", "otter", "raven", "camel", "panda", "eagle"]
PLACES = ["barn", "river", "forest", "harbor", "desert", "valley", "island", "garden", "castle", "market"]
# fmt: on


@dataclass(frozen=True)
class Profile:
    """One generated task.

    Args:
        name: The profile's name on the command line.
        description: One line for ``--help`` and the report.
        make: Draws one ``(prompt, answer)`` pair from a seeded ``random.Random``.
        num_train: Training examples.
        num_val: Validation examples.
        max_length: ``data.max_length``, at least the longest example's tokens.
    """

    name: str
    description: str
    make: Callable[[random.Random], tuple[str, str]]
    num_train: int
    num_val: int
    max_length: int


def sort_words(rng: random.Random) -> tuple[str, str]:
    """Short prompt, short answer: 3-12 words to put in alphabetical order."""
    words = rng.sample(WORDS, rng.randint(3, 12))
    return f"Sort these words alphabetically: {' '.join(words)}", ", ".join(sorted(words))


def inventory_lookup(rng: random.Random) -> tuple[str, str]:
    """Long prompt, short answer: an inventory of 10-68 lines and the count of one item in it."""
    lines = []
    for number in rng.sample(range(100, 1000), rng.randint(10, 68)):
        lines.append(f"Item {number}: {rng.choice(COLORS)} {rng.choice(WORDS)}, {rng.randint(1, 99)} units")
    asked = rng.choice(lines)
    item, units = asked.split(":")[0], asked.rsplit(", ", 1)[1].split()[0]
    return "Inventory:\n" + "\n".join(lines) + f"\nHow many units of {item} are there?", units


def describe_items(rng: random.Random) -> tuple[str, str]:
    """Short prompt, long answer: one sentence for each of 3-52 coded items."""
    count = rng.randint(3, 52)
    codes = [f"{rng.choice(COLORS)}-{rng.choice(ANIMALS)}-{rng.choice(PLACES)}" for _ in range(count)]
    prompt = "Describe each code in one sentence: " + " ".join(codes)
    sentences = []
    for index, code in enumerate(codes, 1):
        color, animal, place = code.split("-")
        sentences.append(f"{index}. A {color} {animal} lives near the {place}.")
    return prompt, "\n".join(sentences)


PROFILES = {
    profile.name: profile
    for profile in (
        Profile("short", "short prompt and answer (45-80 tokens)", sort_words, 320, 40, 128),
        Profile("long_prompt", "long prompt, short answer (200-1,000 tokens)", inventory_lookup, 64, 16, 1024),
        Profile("long_answer", "long answers (100-1,000 tokens)", describe_items, 64, 16, 1024),
    )
}


def write_profile(profile: Profile, directory: Path, seed: int = 0) -> dict[str, str]:
    """Write ``profile``'s ``train.jsonl`` and ``val.jsonl`` under ``directory`` and return their paths.

    The validation examples are drawn after the training ones from the same seeded
    stream, so they differ from them (up to chance repeats of the short task).
    """
    rng = random.Random(f"{profile.name}-{seed}")
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in (("train", profile.num_train), ("val", profile.num_val)):
        path = directory / f"{split}.jsonl"
        with path.open("w") as file:
            for _ in range(count):
                prompt, answer = profile.make(rng)
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
                file.write(json.dumps({"messages": messages}) + "\n")
        paths[f"{split}_file"] = str(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="where each profile's folder goes")
    args = parser.parse_args()
    for profile in PROFILES.values():
        paths = write_profile(profile, args.directory / profile.name)
        print(f"{profile.name}: {paths['train_file']}, {paths['val_file']}")


if __name__ == "__main__":
    main()
