"""Evaluation generation and eval loss, the ways the evaluate step can run them: same prompts, same
model, greedy.

    python benchmarks/batched_eval.py [--prompts 48] [--batch-size 16] [--max-new-tokens 48] [--shots 8]
                                      [--json benchmarks/results-batched-eval-cpu-2core.json]

Prompts are the demo's evaluation prompts (the instruction written from the data + a listing), zero-shot
and few-shot (`--shots` worked examples from other rows before each, the same for every row, as the
few-shot base gets them). For each set it times generation one prompt at a time, in static left-padded
batches (the evaluate step's earlier path) and on the continuous batcher with the shared start prefilled
once (its path now, `llmft.offline_generation`), and the eval loss with and without the shared start
computed once (`llmft.evaluate.shared_start`). Prints seconds, rows/s, ratios against static batches in
the same run, and how many outputs are identical to one prompt at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _conversations(shots: int, prompts: int) -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """(zero-shot, few-shot) conversations ending with the reference answer."""
    from llmft.config import DataConfig
    from llmft.data.ingest import read_rows
    from llmft.data.shapes import to_examples
    from llmft.tasks.extraction import instruction_for

    examples, _ = to_examples(read_rows(str(ROOT / "data" / "products.jsonl")), DataConfig())
    system = {"role": "system", "content": instruction_for(examples)}
    worked = [m for ex in examples[:shots] for m in ex.messages]
    rows = examples[shots:shots + prompts]
    return [[system, *ex.messages] for ex in rows], [[system, *worked, *ex.messages] for ex in rows]


def _timed(run: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def measure(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int,
            max_new_tokens: int) -> dict[str, Any]:
    from llmft.chat_format import render_generation_prompt
    from llmft.evaluate import shared_start
    from llmft.evaluate.scoring import _own_turns_only, eval_loss
    from llmft.offline_generation import generate

    prompts = [render_generation_prompt(tokenizer, conv[:-1]) for conv in conversations]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    # as the evaluate step encodes them: a few-shot prompt's worked examples (all but the row's own two
    # turns) carry no labels, so eval loss is on the row's own answer
    examples = [_own_turns_only(tokenizer, conv, len(conv) - 2) for conv in conversations]
    out: dict[str, Any] = {"rows": len(prompts), "prompt_tokens_mean": round(sum(map(len, ids)) / len(ids), 1),
                           "shared_start_tokens": shared_start.shared_start(examples)}
    runs = {"one_at_a_time": ("static", 1), "static_batches": ("static", batch_size),
            "continuous_shared_start": ("continuous", batch_size)}
    texts = {}
    for name, (engine, size) in runs.items():
        texts[name], seconds = _timed(lambda e=engine, s=size, n=name: generate(
            model, tokenizer, prompts, max_new_tokens, s, desc=n, engine=e))
        out[name] = {"seconds": round(seconds, 2), "rows_per_s": round(len(prompts) / seconds, 3)}
    for name in runs:
        out[name]["identical_to_one_at_a_time"] = sum(
            a == b for a, b in zip(texts[name], texts["one_at_a_time"], strict=True))
    out["generation_speedup_vs_static"] = round(out["static_batches"]["seconds"] /
                                                out["continuous_shared_start"]["seconds"], 2)
    plain, plain_s = _timed(lambda: _plain_loss(model, tokenizer, examples, batch_size))
    shared, shared_s = _timed(lambda: eval_loss(model, tokenizer, examples, batch_size))
    out["eval_loss"] = {"plain": {"seconds": round(plain_s, 2), "value": round(plain, 5)},
                        "shared_start": {"seconds": round(shared_s, 2), "value": round(shared, 5)},
                        "speedup": round(plain_s / shared_s, 2)}
    return out


def _plain_loss(model: Any, tokenizer: Any, examples: list[dict[str, list[int]]], batch_size: int) -> float:
    """The eval loss without the shared start (every row's whole sequence through the model)."""
    import torch

    from llmft.chat_format import PadToLongest
    from llmft.loss import masked_lm_loss

    collate, total, count = PadToLongest(tokenizer.pad_token_id), 0.0, 0
    with torch.inference_mode():
        for first in range(0, len(examples), batch_size):
            batch = collate(examples[first:first + batch_size])
            loss, n, _ = masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total, count = total + float(loss), count + int(n)
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    from llmft.base_model import load_model, load_tokenizer, resolve_base_model
    from llmft.config import ModelConfig

    path = resolve_base_model(ModelConfig())
    model, tokenizer = load_model(path), load_tokenizer(path)
    model.eval()
    zero, few = _conversations(args.shots, args.prompts)
    results: dict[str, Any] = {"model": "embedded base (SmolLM2-135M-Instruct)", "threads": torch.get_num_threads(),
                               "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                               "shots": args.shots}
    for name, convs in (("zero_shot", zero), ("few_shot", few)):
        results[name] = r = measure(model, tokenizer, convs, args.batch_size, args.max_new_tokens)
        print(f"\n{name}: {r['rows']} rows, {r['prompt_tokens_mean']} prompt tokens on average, "
              f"{r['shared_start_tokens']} shared")
        for path_name in ("one_at_a_time", "static_batches", "continuous_shared_start"):
            p = r[path_name]
            print(f"  {path_name:<25}{p['seconds']:>8.2f} s {p['rows_per_s']:>7.3f} rows/s  identical "
                  f"{p['identical_to_one_at_a_time']}/{r['rows']}")
        print(f"  generation: continuous + shared start {r['generation_speedup_vs_static']}x static batches")
        e = r["eval_loss"]
        print(f"  eval loss: plain {e['plain']['seconds']} s ({e['plain']['value']}), shared start "
              f"{e['shared_start']['seconds']} s ({e['shared_start']['value']}): {e['speedup']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
