"""Generate the shipped synthetic 3-class sentiment dataset (product reviews).

The reviews are SYNTHETIC, composed by this script from a fixed seed, so `data/sentiment.jsonl`
is reproducible byte for byte:

    python scripts/generate_sentiment_data.py --seed 7 --count 360 --out data/sentiment.jsonl

Each record has `text` (a short review) and `label`: positive, negative or neutral. Reviews mix
an opinion about one or two aspects with product context; some use negation ("not bad", "not
worth it") or hedging, so the words alone do not give the label away.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PRODUCTS = ["headphones", "rain jacket", "blender", "yoga mat", "desk lamp", "running shoes", "backpack",
            "coffee grinder", "phone case", "water bottle", "office chair", "electric kettle", "face cream",
            "bike helmet", "wool sweater", "bluetooth speaker", "frying pan", "sleeping bag"]
ASPECTS = ["sound", "fit", "battery", "build quality", "price", "comfort", "delivery", "packaging", "design",
           "instructions", "grip", "noise level", "smell", "stitching"]

OPINIONS = {
    "positive": ["the {a} is excellent", "really happy with the {a}", "the {a} exceeded my expectations",
                 "love the {a}", "the {a} is not bad at all, actually great", "the {a} is spot on",
                 "could not ask for a better {a}", "the {a} feels premium", "no complaints about the {a}, superb"],
    "negative": ["the {a} is terrible", "very disappointed with the {a}", "the {a} broke within a week",
                 "the {a} is not worth it", "the {a} is far worse than advertised",
                 "regret buying it, the {a} is awful",
                 "the {a} is cheap and flimsy", "returned it because of the {a}", "the {a} is a joke"],
    "neutral": ["the {a} is okay", "the {a} is average, nothing special", "the {a} is as described",
                "the {a} is fine for the price", "no strong feelings about the {a}", "the {a} is acceptable",
                "the {a} does what it says", "the {a} is neither good nor bad", "the {a} is standard"],
}
CLOSERS = {
    "positive": ["Would buy again.", "Highly recommend.", "Five stars.", "Great purchase.", ""],
    "negative": ["Would not recommend.", "One star.", "Avoid.", "Waste of money.", ""],
    "neutral": ["It works.", "Three stars.", "Might look at other options next time.", "Does the job.", ""],
}
OPENERS = ["Bought the {p} last month", "Got this {p} as a gift", "Ordered the {p}", "Used the {p} for two weeks",
           "My second {p} from this shop", "Picked up the {p} on sale"]


def review(rng: random.Random, label: str) -> str:
    product = rng.choice(PRODUCTS)
    aspects = rng.sample(ASPECTS, 2)
    first = rng.choice(OPINIONS[label]).format(a=aspects[0])
    parts = [rng.choice(OPENERS).format(p=product) + ": " + first + "."]
    if rng.random() < 0.5:  # a second, milder remark about another aspect
        second_label = label if rng.random() < 0.7 else "neutral"
        parts.append(rng.choice(OPINIONS[second_label]).format(a=aspects[1]).capitalize() + ".")
    closer = rng.choice(CLOSERS[label])
    if closer:
        parts.append(closer)
    text = " ".join(parts)
    return text.lower() if rng.random() < 0.15 else text


def generate(seed: int, count: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    labels = ["positive", "negative", "neutral"]
    rows, seen = [], set()
    while len(rows) < count:
        label = labels[len(rows) % 3]
        text = review(rng, label)
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--count", type=int, default=360)
    parser.add_argument("--out", default="data/sentiment.jsonl")
    args = parser.parse_args()
    out = Path(args.out)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in generate(args.seed, args.count)))
    print(f"wrote {args.count} rows to {out}")


if __name__ == "__main__":
    main()
