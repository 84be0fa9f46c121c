"""Batched evaluation generation against one prompt at a time: same prompts, same model, greedy.

    python benchmarks/batched_eval.py [--prompts 32] [--batch-size 16] [--max-new-tokens 48]
                                      [--model-uri models:/NAME@champion] [--json out.json]

The model is the embedded base model, or a registered model (`--model-uri`, read from the MLflow
store that `MLFLOW_TRACKING_URI` or the project folder names). Prompts are the product task's
evaluation prompts (instruction + listing). Both paths run llmft.evaluation.generate, which is
what the evaluate step uses; batch size 1 is the unbatched path. Prints wall time, prompts/s and
generated tokens/s of each, the speed-up (goal >= 3x) and how many outputs are identical.
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


def _load(model_uri: str | None) -> tuple[Any, Any]:
    if model_uri:
        import mlflow

        from llmft.locations import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        parts = mlflow.transformers.load_model(model_uri, return_type="components")
        return parts["model"].float(), parts["tokenizer"]
    from llmft.base_model import load_model, load_tokenizer, resolve_base_model
    from llmft.config import EMBEDDED_MODEL

    path = resolve_base_model(EMBEDDED_MODEL)
    return load_model(path), load_tokenizer(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model-uri")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    from llmft.chat_format import build_messages, render_generation_prompt
    from llmft.generation import generate
    from llmft.tasks.extraction import INSTRUCTION

    model, tokenizer = _load(args.model_uri)
    records = [json.loads(line) for line in (ROOT / "data" / "products.jsonl").read_text().splitlines()]
    prompts = [render_generation_prompt(tokenizer, build_messages(INSTRUCTION, r["prompt"]))
               for r in records[: args.prompts]]
    generate(model, tokenizer, prompts[:2], 4, 2, desc="warm-up")

    results: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                               "model": args.model_uri or "embedded base", "threads": torch.get_num_threads()}
    outputs: dict[str, list[str]] = {}
    for name, batch_size in (("one_at_a_time", 1), ("batched", args.batch_size)):
        start = time.perf_counter()
        outputs[name] = generate(model, tokenizer, prompts, args.max_new_tokens, batch_size, desc=name)
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs[name])
        results[name] = {"batch_size": batch_size, "seconds": round(seconds, 2),
                         "prompts_per_s": round(len(prompts) / seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}
    identical = sum(a == b for a, b in zip(outputs["one_at_a_time"], outputs["batched"], strict=True))
    results["speedup"] = round(results["one_at_a_time"]["seconds"] / results["batched"]["seconds"], 2)
    results["identical_outputs"] = f"{identical}/{len(prompts)}"

    print(f"\n{len(prompts)} prompts, up to {args.max_new_tokens} new tokens, greedy, {results['model']}, "
          f"{results['threads']} threads")
    print(f"{'path':<16}{'batch':>6}{'seconds':>10}{'prompts/s':>11}{'tokens/s':>10}")
    for name in ("one_at_a_time", "batched"):
        r = results[name]
        print(f"{name:<16}{r['batch_size']:>6}{r['seconds']:>10.2f}{r['prompts_per_s']:>11.3f}{r['tokens_per_s']:>10.1f}")
    print(f"speed-up {results['speedup']}x (goal >= 3x); identical outputs {results['identical_outputs']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
