"""What serving in bf16 (`deploy.precision: auto` on a CPU with AVX512-BF16 or AMX) changes against the
fp32 the evaluate step scored: the same registered version, the same test rows, greedy, through the
task's own evaluation (generation, metrics, eval loss), once per precision.

    python benchmarks/serve_precision.py --model-uri models:/NAME@champion \\
        --rows <project>/datasets/<run>/test.jsonl [--limit 96] \\
        [--json benchmarks/results-serve-precision-cpu-2core.json]

Run it in the project folder the version was trained in (LLMFT_HOME, or its MLflow store set the
usual way). Prints each precision's task metrics, rows/s and ratio against fp32 in the same run, and
how many answers are identical to fp32's.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llmft.precision import for_inference, native_bf16  # noqa: E402
from llmft.registry.versions import load_registered  # noqa: E402
from llmft.serve.loading import registry_info  # noqa: E402
from llmft.tasks import get_task  # noqa: E402
from llmft.tasks.base import EvalSettings  # noqa: E402

PRECISIONS = ("fp32", "bf16")  # deploy.precision / eval.precision values, resolved by llmft.precision


def split_rows(path: Path, limit: int) -> list[dict[str, Any]]:
    """The exported split's rows (datasets/<run>/test.jsonl) in the shape the evaluate step reads, the
    first `limit` of them (the split is already a seeded shuffle)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        row = json.loads(line)
        messages = row["messages"]
        rows.append({"messages": json.dumps(messages, ensure_ascii=False), "response": messages[-1]["content"]})
    return rows


def measure(model: Any, tokenizer: Any, task: str, system: str | None, rows: list[dict[str, Any]],
            settings: EvalSettings) -> dict[str, Any]:
    started = time.perf_counter()
    scores = get_task(task).evaluate(model, tokenizer, rows, system, settings, None, desc="eval")
    seconds = time.perf_counter() - started
    return {"metrics": {k: round(float(v), 4) for k, v in scores.metrics.items()}, "seconds": round(seconds, 1),
            "rows_per_s": round(len(rows) / seconds, 2), "outputs": scores.outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--rows", required=True, type=Path, help="an exported test split (JSONL of messages)")
    parser.add_argument("--limit", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    parts = load_registered(args.model_uri)
    fp32, tokenizer = for_inference(parts["model"], "fp32"), parts["tokenizer"]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = registry_info(args.model_uri, tokenizer.chat_template or "")
    if info.task is None or get_task(info.task).classifier:
        raise SystemExit(f"{args.model_uri}: a generative task's version is needed (task tag: {info.task})")
    rows = split_rows(args.rows, args.limit)
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            max_seq_length=args.max_seq_length)
    results: dict[str, dict[str, Any]] = {}
    for name in PRECISIONS:
        model = fp32 if name == "fp32" else for_inference(copy.deepcopy(fp32), name)
        results[name] = measure(model, tokenizer, info.task, info.instruction, rows, settings)
        print(f"{name}: {results[name]['rows_per_s']} rows/s, {results[name]['metrics']}", flush=True)
    reference = results["fp32"]["outputs"]
    for result in results.values():
        outputs = result.pop("outputs")
        result["identical_to_fp32"] = sum(a == b for a, b in zip(outputs, reference, strict=True))
        result["speed_vs_fp32"] = round(results["fp32"]["seconds"] / result["seconds"], 2)
    report = {"model_uri": args.model_uri, "version": info.version, "task": info.task, "rows": len(rows),
              "rows_file": args.rows.name, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "cpu_native_bf16": native_bf16(), "machine": platform.machine(),
              "torch": torch.__version__, "precisions": results}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
