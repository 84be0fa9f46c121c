"""Every training method on the same data and steps: trainable parameters, losses, speed, memory.

    python benchmarks/compare_methods.py [--steps 30] [--methods lora,full] [--json methods.json]

Trains each `train.method` in a fresh process (so peak RSS is its own) on the shipped product
data, with the learning rate each method usually wants, and scores validation loss on 48 held-out
rows. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the supervised methods compared, each at its own learning rate (adapters tolerate far larger steps than full weights)
SUPERVISED = ("lora", "dora", "qlora", "prompt_tuning", "freeze", "full")


def _examples(seed: int) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    from llmft.base_model import load_tokenizer, resolve_base_model
    from llmft.chat_format import build_messages, encode_messages
    from llmft.config import EMBEDDED_MODEL
    from llmft.tasks.extraction import INSTRUCTION

    tokenizer = load_tokenizer(resolve_base_model(EMBEDDED_MODEL))
    records = [json.loads(line) for line in (ROOT / "data" / "products.jsonl").read_text().splitlines()]
    random.Random(seed).shuffle(records)
    encoded = [encode_messages(tokenizer, build_messages(INSTRUCTION, r["prompt"], r["response"])) for r in records]
    return encoded[48:], encoded[:48]


def worker(method: str, steps: int, seed: int) -> dict[str, Any]:
    from llmft.base_model import resolve_base_model
    from llmft.config import EMBEDDED_MODEL
    from llmft.config_files import load_config
    from llmft.tasks.extraction import INSTRUCTION
    from llmft.train.loop import train

    train_rows, validation_rows = _examples(seed)
    # each method at its own learning rate (train.learning_rate: auto, llmft/train/methods.py)
    cfg = load_config(None, [f"train.method={method}", f"train.max_steps={steps}", "train.eval_steps=null"]).train
    with tempfile.TemporaryDirectory() as out:
        result = train(resolve_base_model(EMBEDDED_MODEL), train_rows, validation_rows, cfg, Path(out),
                       init_text=INSTRUCTION, log_to_mlflow=False)
    return {"trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
            "first_loss": result.first_loss, "last_loss": result.last_loss,
            "validation_loss": result.validation_loss, "tokens_per_s": result.tokens_per_second,
            "learning_rate": cfg.rate,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--methods", default=",".join(SUPERVISED))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.seed)))
        return
    results: dict[str, Any] = {}
    for method in args.methods.split(","):
        print(f"training {method} ({args.steps} steps) ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--worker", method, "--steps", str(args.steps),
                               "--seed", str(args.seed)], capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        results[method] = json.loads(line[7:]) if line else {"error": (proc.stderr.splitlines() or ["?"])[-1]}
    print(f"\n{args.steps} steps x batch 4 on data/products.jsonl; validation loss on 48 held-out rows\n")
    print("| method | lr | trainable params | first loss | last loss | validation loss | tokens/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, r in results.items():
        if "error" in r:
            print(f"| {method} | {r['error']} | | | | | | |")
            continue
        share = 100 * r["trainable_parameters"] / r["total_parameters"]
        print(f"| {method} | {r['learning_rate']:g} | {r['trainable_parameters'] / 1e6:.2f} M ({share:.2f}%) | "
              f"{r['first_loss']:.3f} | {r['last_loss']:.3f} | {r['validation_loss']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
