"""Generate the shipped synthetic product-attribute extraction dataset.

The records are SYNTHETIC: brands, products and prices are invented by this script from a fixed
seed, so `data/products.jsonl` is reproducible byte for byte:

    python scripts/generate_product_data.py --seed 13 --count 480 --out data/products.jsonl

Each record has `prompt` (a noisy marketplace listing) and `response` (the gold attributes as a
JSON object with the keys of ATTRIBUTE_KEYS; null where the listing does not state a value).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ATTRIBUTE_KEYS = ("brand", "category", "color", "material", "size", "price")

# category -> product nouns, plausible materials, size style
CATALOGUE: dict[str, dict[str, object]] = {
    "clothing": {
        "products": ["t-shirt", "hoodie", "rain jacket", "denim jeans", "wool sweater", "polo shirt",
                     "running shorts", "puffer vest", "flannel shirt", "chino pants"],
        "materials": ["cotton", "organic cotton", "polyester", "wool", "linen", "denim", "fleece",
                      "nylon"],
        "sizes": ["XS", "S", "M", "L", "XL", "XXL"],
    },
    "footwear": {
        "products": ["running shoes", "hiking boots", "sneakers", "sandals", "loafers",
                     "trail runners", "ankle boots", "slip-on shoes"],
        "materials": ["leather", "suede", "mesh", "canvas", "synthetic leather", "rubber"],
        "sizes": ["6", "7", "7.5", "8", "8.5", "9", "9.5", "10", "11", "12"],
    },
    "electronics": {
        "products": ["wireless earbuds", "bluetooth speaker", "phone charger", "usb-c cable",
                     "smart watch", "power bank", "noise cancelling headphones", "webcam",
                     "mechanical keyboard", "wireless mouse"],
        "materials": ["aluminum", "plastic", "silicone", "stainless steel", "braided nylon"],
        "sizes": ["1m", "2m", "10000mAh", "20000mAh", "40mm", "44mm", "compact", "full size"],
    },
    "home": {
        "products": ["coffee mug", "throw blanket", "table lamp", "cutting board", "bath towel",
                     "scented candle", "storage basket", "frying pan", "pillow cover", "vase"],
        "materials": ["ceramic", "bamboo", "cotton", "glass", "cast iron", "stainless steel",
                      "acacia wood", "linen", "soy wax"],
        "sizes": ["small", "medium", "large", "12 oz", "16 oz", "50x60 in", "10 inch", "queen"],
    },
    "sports": {
        "products": ["yoga mat", "water bottle", "dumbbell set", "tennis racket", "resistance bands",
                     "cycling gloves", "gym bag", "jump rope", "foam roller"],
        "materials": ["rubber", "stainless steel", "neoprene", "carbon fiber", "polyester", "foam",
                      "TPE"],
        "sizes": ["S", "M", "L", "24 oz", "32 oz", "6mm", "10 lb", "one size"],
    },
    "beauty": {
        "products": ["face serum", "lip balm", "hair dryer", "makeup brush set", "shampoo",
                     "moisturizer", "nail polish", "body lotion"],
        "materials": ["glass", "plastic", "aluminum", "synthetic bristles"],
        "sizes": ["30 ml", "50 ml", "100 ml", "250 ml", "4.2 oz", "travel size"],
    },
}

BRANDS = ["Northpeak", "Lumora", "Veltra", "Kestrel & Co", "Brightfold", "Oakhaven", "Zephyra",
          "Mistral Goods", "Pinecrest", "Auralis", "Tidewell", "Corvane", "Halden", "Sunvale",
          "Quillon", "Ember Lane", "Novique", "Redfern", "Aster Bloom", "Ironbark", "Solenne",
          "Bluecairn", "Marlowe", "Fennix"]

COLORS = ["black", "white", "navy blue", "forest green", "red", "charcoal gray", "beige", "pink",
          "sky blue", "olive", "burgundy", "mustard yellow", "silver", "rose gold", "teal", "orange",
          "lavender", "brown"]

SIZE_WORDS = {"XS": "extra small", "S": "small", "M": "medium", "L": "large", "XL": "extra large",
              "XXL": "2XL"}

MARKETING = ["Free shipping!", "Best seller", "NEW ARRIVAL", "Limited stock", "Gift ready",
             "Ships in 24h", "100% satisfaction guaranteed", "Top rated", "Sale!!", "Eco friendly",
             "Hot deal", "Brand new in box", "Great for gifting", "Fast dispatch"]


def _price(rng: random.Random, category: str) -> float:
    low, high = {"electronics": (12, 260), "footwear": (25, 180), "clothing": (9, 150),
                 "home": (6, 120), "sports": (8, 140), "beauty": (4, 90)}[category]
    return round(round(rng.uniform(low, high)) - rng.choice([0.01, 0.05, 0.0, 0.51]), 2)


def _fmt_price(rng: random.Random, price: float) -> str:
    style = rng.randrange(5)
    if style == 0:
        return f"${price:.2f}"
    if style == 1:
        return f"{price:.2f} USD"
    if style == 2:
        return f"Price: ${price:.2f}"
    if style == 3:
        return f"only ${price:.2f}"
    return f"US ${price:.2f}"


def _maybe(rng: random.Random, p_present: float) -> bool:
    return rng.random() < p_present


def make_record(rng: random.Random) -> dict[str, str]:
    category = rng.choice(list(CATALOGUE))
    spec = CATALOGUE[category]
    product = rng.choice(spec["products"])  # type: ignore[arg-type]
    attrs: dict[str, object] = {
        "brand": rng.choice(BRANDS) if _maybe(rng, 0.9) else None,
        "category": category,
        "color": rng.choice(COLORS) if _maybe(rng, 0.8) else None,
        "material": rng.choice(spec["materials"]) if _maybe(rng, 0.7) else None,  # type: ignore[arg-type]
        "size": rng.choice(spec["sizes"]) if _maybe(rng, 0.65) else None,  # type: ignore[arg-type]
        "price": _price(rng, category) if _maybe(rng, 0.85) else None,
    }
    return {"prompt": _render_listing(rng, product, attrs), "response": json.dumps(attrs)}


def _size_text(rng: random.Random, size: str, category: str) -> str:
    if category == "footwear":
        return rng.choice([f"Size {size}", f"US {size}", f"size {size} US"])
    word = SIZE_WORDS.get(size)
    if word and rng.random() < 0.3:
        return rng.choice([f"Size {size} ({word})", f"size {size}"])
    return rng.choice([f"Size {size}", f"size: {size}", f"{size}"])


def _render_listing(rng: random.Random, product: str, attrs: dict[str, object]) -> str:
    brand, color, material = attrs["brand"], attrs["color"], attrs["material"]
    size, price = attrs["size"], attrs["price"]
    category = str(attrs["category"])
    parts: dict[str, str] = {}
    if color:
        parts["color"] = str(color)
    if material:
        parts["material"] = rng.choice([f"{material}", f"made of {material}", f"100% {material}",
                                        f"{material} build"])
    if size:
        parts["size"] = _size_text(rng, str(size), category)
    if price is not None:
        parts["price"] = _fmt_price(rng, float(price))  # type: ignore[arg-type]
    style = rng.randrange(5)
    if style == 0:  # title with separators
        head = " ".join(x for x in [str(brand) if brand else "", color or "", product.title()] if x)
        tail = [parts[k] for k in ("size", "material", "price") if k in parts]
        text = " - ".join([head, *tail]) if tail else head
    elif style == 1:  # pipe-delimited marketplace title
        fields = [f"{brand} {product}" if brand else product.capitalize()]
        fields += [parts[k] for k in ("color", "material", "size", "price") if k in parts]
        text = " | ".join(fields)
    elif style == 2:  # sentence-style description
        who = f"this {product} from {brand}" if brand else f"this {product}"
        bits = [f"Meet {who}."]
        if color:
            bits.append(f"Comes in {color}.")
        if "material" in parts:
            bits.append(f"It is {parts['material']}.")
        if "size" in parts:
            bits.append(f"{parts['size']}.")
        if "price" in parts:
            bits.append(f"{parts['price']}.")
        text = " ".join(bits)
    elif style == 3:  # key: value spec sheet
        lines = [f"Item: {product}"]
        if brand:
            lines.append(f"Brand: {brand}")
        if color:
            lines.append(f"Colour: {color}")
        if material:
            lines.append(f"Material: {material}")
        if "size" in parts:
            lines.append(parts["size"] if ":" in parts["size"] else f"Size: {size}")
        if "price" in parts:
            lines.append(parts["price"] if ":" in parts["price"] else f"Price: {parts['price']}")
        text = "; ".join(lines)
    else:  # shouty seller listing
        words = [str(brand).upper() if brand else "", product.upper()]
        if color:
            words.append(str(color).upper())
        extra = [parts[k] for k in ("material", "size", "price") if k in parts]
        text = " ".join(w for w in words if w) + (" " + ", ".join(extra) if extra else "") + " !!!"
    if rng.random() < 0.45:  # marketing noise before or after
        noise = rng.choice(MARKETING)
        text = f"{noise} {text}" if rng.random() < 0.5 else f"{text} {noise}"
    if rng.random() < 0.2:
        text += f" SKU {rng.randrange(10000, 99999)}-{rng.choice('ABCDEFGH')}"
    return text


def generate(seed: int, count: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    records: list[dict[str, str]] = []
    while len(records) < count:
        rec = make_record(rng)
        if rec["prompt"].lower() in seen:  # the shipped set has no duplicate listings
            continue
        seen.add(rec["prompt"].lower())
        records.append(rec)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--count", type=int, default=480)
    parser.add_argument("--out", type=Path, default=Path("data/products.jsonl"))
    args = parser.parse_args()
    records = generate(args.seed, args.count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
