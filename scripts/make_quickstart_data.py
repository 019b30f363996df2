"""Generate the quickstart dataset: extracting a name, a city and a date as JSON.

Each example asks for the person, city and date in one sentence and expects a compact
JSON object such as ``{"name": "Maria", "city": "Lisbon", "date": "12 May"}``.
SmolLM2-135M-Instruct never answers in exactly that form before fine-tuning (it writes
multi-line JSON, ISO dates, or repeats the sentence) and almost always does after one
short LoRA epoch, so exact match on the validation set shows at a glance whether
training worked.

The validation set tests generalisation rather than memorisation: it shares no
(name, city) pair with training, and most of its examples use a name or a city that
training never shows (see ``build_splits``).

Regenerate the committed files (byte-identical, the generator is seeded) with::

    python scripts/make_quickstart_data.py

Writes ``data/quickstart/train.jsonl`` and ``data/quickstart/val.jsonl``, one
``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` object a line.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1234
NUM_TRAIN = 400
NUM_VAL = 40
# Names and cities that only the validation set uses, drawn from the pools below.
NUM_HELD_OUT_NAMES = 12
NUM_HELD_OUT_CITIES = 10

# Ten to a line, so the pools stay readable.
# fmt: off
NAMES = [
    "Maria", "Liam", "Aisha", "Kenji", "Sofia", "Omar", "Elena", "Lucas", "Priya", "Jonas",
    "Chloe", "Mateo", "Hannah", "Ravi", "Ingrid", "Diego", "Fatima", "Noah", "Yuki", "Emma",
    "Tomas", "Leila", "Oscar", "Nadia", "Felix", "Amara", "Hugo", "Clara", "Samir", "Greta",
    "Pablo", "Zara", "Anton", "Mei", "Victor", "Lena", "Rafael", "Ines", "Marco", "Olga",
    "Daniel", "Sara", "Ivan", "Julia", "Kofi", "Alice", "Arjun", "Nora", "Pedro", "Eva",
    "Hiroshi", "Layla", "Mustafa", "Astrid", "Bruno", "Carmen", "Dario", "Esther", "Farid", "Gloria",
    "Hamza", "Irene", "Jakob", "Keiko", "Lars", "Miriam", "Nikolai", "Ophelia", "Paolo", "Rosa",
    "Stefan", "Tanvi", "Ulrich", "Vera", "Walter", "Yasmin", "Zoltan", "Adele", "Boris", "Camila",
    "Elif", "Fiona", "Gustavo", "Helga", "Imran", "Joaquin", "Kamala", "Lionel", "Magnus", "Nasser",
    "Orla", "Petra", "Quentin", "Rania", "Soren", "Thea", "Umar", "Vivian", "Wanjiru", "Yusuf",
    "Agnes", "Bilal", "Cyrus", "Dagny", "Emeka", "Frida", "Gideon", "Hanna", "Ilse", "Jasper",
    "Beatriz", "Tariq", "Wilhelm", "Svetlana", "Mbali", "Cormac", "Xiomara", "Dmitri", "Sophie", "Karim",
]
CITIES = [
    "Lisbon", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Oslo", "Dublin", "Athens",
    "Warsaw", "Munich", "Porto", "Milan", "Lyon", "Seville", "Helsinki", "Brussels", "Hamburg", "Naples",
    "Tokyo", "Osaka", "Seoul", "Mumbai", "Delhi", "Cairo", "Nairobi", "Lagos", "Toronto", "Chicago",
    "Boston", "Denver", "Austin", "Sydney", "Lima", "Quito", "Havana", "Dakar", "Hanoi", "Accra",
    "Amsterdam", "Rotterdam", "Antwerp", "Copenhagen", "Stockholm", "Bergen", "Tallinn", "Riga", "Vilnius", "Budapest",
    "Bucharest", "Valencia", "Belgrade", "Zagreb", "Istanbul", "Ankara", "Beirut", "Amman", "Doha", "Dubai",
    "Karachi", "Lahore", "Dhaka", "Colombo", "Bangkok", "Jakarta", "Singapore", "Shanghai", "Beijing", "Taipei",
    "Melbourne", "Perth", "Auckland", "Vancouver", "Ottawa", "Seattle", "Phoenix", "Houston", "Miami", "Atlanta",
    "Caracas", "Santiago", "Rosario", "Kampala", "Kigali", "Luanda", "Tunis", "Algiers", "Rabat", "Durban",
    "Reykjavik", "Valparaiso", "Tbilisi", "Glasgow", "Ljubljana", "Winnipeg", "Geneva", "Manila", "Edinburgh", "Florence",  # noqa: E501
]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]
# fmt: on

# The three fields come in several orders, so the model has to find them by meaning
# rather than by position.
SENTENCES = [
    "{name} moved to {city} on {date}.",
    "On {date}, {name} flew to {city}.",
    "{city} welcomed {name} on {date}.",
    "Our guest {name} checks in at the {city} office on {date}.",
    "The meeting with {name} in {city} is set for {date}.",
    "{name}'s flight lands in {city} on {date}.",
    "On {date} the conference in {city} opens with a talk by {name}.",
    "Please book a hotel in {city} for {name}, arriving {date}.",
    "{name} was born in {city} on {date}.",
    "Reminder: {name} visits {city} on {date}.",
    "In {city}, {name} signed the lease on {date}.",
    "Dear team, {name} will present in {city} on {date}.",
    "The parcel for {name} leaves {city} on {date}.",
    "From {date}, {name} works at our branch in {city}.",
]
INSTRUCTIONS = [
    "Extract the name, city and date from: '{sentence}'",
    "Return the name, city and date in this sentence as JSON: {sentence}",
    "Sentence: {sentence}\nGive the name, city and date as JSON.",
]


def make_example(rng: random.Random, name: str, city: str) -> dict:
    """Build one example about ``name`` and ``city`` with a random date and wording."""
    date = f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"
    sentence = rng.choice(SENTENCES).format(name=name, city=city, date=date)
    user = rng.choice(INSTRUCTIONS).format(sentence=sentence)
    answer = json.dumps({"name": name, "city": city, "date": date})
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def build_splits(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Build the train and validation records.

    Validation tests generalisation rather than memorisation: no (name, city) pair
    occurs in both splits, and three quarters of the validation examples use a name,
    a city or both that training never shows, so the model must copy from the
    sentence instead of recalling. Held-out names and cities are drawn at random
    rather than picked, so the score is not tuned to words the model spells well.
    """
    rng = random.Random(seed)
    new_names = set(rng.sample(NAMES, NUM_HELD_OUT_NAMES))
    new_cities = set(rng.sample(CITIES, NUM_HELD_OUT_CITIES))
    seen_names = [n for n in NAMES if n not in new_names]
    seen_cities = [c for c in CITIES if c not in new_cities]

    train_pairs: set[tuple[str, str]] = set()
    train: list[dict] = []
    while len(train) < NUM_TRAIN:
        pair = (rng.choice(seen_names), rng.choice(seen_cities))
        if pair not in train_pairs:
            train_pairs.add(pair)
            train.append(make_example(rng, *pair))

    # Cycle through the four ways of being new, so each makes up a quarter of validation.
    kinds = [
        (sorted(new_names), seen_cities),
        (seen_names, sorted(new_cities)),
        (sorted(new_names), sorted(new_cities)),
        (seen_names, seen_cities),
    ]
    val_pairs: set[tuple[str, str]] = set()
    val: list[dict] = []
    while len(val) < NUM_VAL:
        names, cities = kinds[len(val) % len(kinds)]
        pair = (rng.choice(names), rng.choice(cities))
        if pair not in train_pairs and pair not in val_pairs:
            val_pairs.add(pair)
            val.append(make_example(rng, *pair))
    return train, val


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write one JSON object a line, with ``\\n`` endings on every platform."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    """Write ``train.jsonl`` and ``val.jsonl`` into the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "quickstart")
    args = parser.parse_args()
    train, val = build_splits()
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "val.jsonl", val)
    print(f"wrote {len(train)} train and {len(val)} val examples to {args.out}")


if __name__ == "__main__":
    main()
