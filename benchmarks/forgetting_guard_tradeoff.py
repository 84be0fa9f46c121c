"""The trade-off the forgetting guard walks: one trained LoRA adapter scaled to shares of its update (the
guard's own `UpdateScaler`), each share's forgetting probe, guard questions and task metric on the run's
own test rows, scored in fp32 with the shipped config's evaluation settings.

    python benchmarks/forgetting_guard_tradeoff.py --home PROJECT_HOME --shares 1,0.75,0.5,0.35 \
        --out benchmarks/results-forgetting-guard-tradeoff-cpu-2core

PROJECT_HOME is a finished finetune run's project folder (`LLMFT_HOME`): its exported test split and the
adapter it registered. The probe is read here for the report; the guard itself never reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve_precision import split_rows  # noqa: E402

from llmft.base_model import load_model  # noqa: E402
from llmft.config_files import load_config  # noqa: E402
from llmft.evaluate.forgetting import load_probe, run_probe  # noqa: E402
from llmft.evaluate.forgetting_guard import GUARD_FILE, UpdateScaler  # noqa: E402
from llmft.evaluate.sampling import sample_rows  # noqa: E402
from llmft.tasks import get_task  # noqa: E402
from llmft.train.methods import load_trained  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--task", default="extraction")
    parser.add_argument("--metric", default="entity_f1")
    parser.add_argument("--shares", default="1,0.75,0.5,0.35")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--base", default=None, help="the base model's folder (default: the adapter's own)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    adapter = next(args.home.glob("mlartifacts/*/artifacts/adapter"))
    base = args.base or json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    trained, tokenizer = load_trained(base, adapter)
    scaler = UpdateScaler(load_model(base), trained.eval())
    test_file = next((args.home / "datasets").iterdir()) / "test.jsonl"
    rows, _ = sample_rows(split_rows(test_file, limit=len(test_file.read_text().splitlines())), args.rows, 0, None)
    system = json.loads(rows[0]["messages"])[0]["content"]
    cfg = load_config(None)
    settings = cfg.eval.scoring(cfg.train.max_seq_length).model_copy(update={"precision": "fp32"})
    probing = cfg.eval.probing()
    task, probe, guard = get_task(args.task), load_probe(), load_probe(GUARD_FILE)
    results = []
    for share in [float(s) for s in args.shares.split(",")]:
        model = scaler.set(share)
        began = time.perf_counter()
        probed = run_probe(model, tokenizer, probe, probing.max_new_tokens, probing.batch_size,
                           desc=f"probe {share:g}")
        guarded = run_probe(model, tokenizer, guard, probing.max_new_tokens, probing.batch_size,
                            desc=f"guard {share:g}")
        scores = task.evaluate(model, tokenizer, rows, system, settings, None, desc=f"{args.metric} {share:g}")
        results.append({"share": share, "probe": probed.accuracy, "guard": guarded.accuracy,
                        args.metric: scores.metrics[args.metric], "seconds": time.perf_counter() - began})
        print(json.dumps(results[-1]), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"home": args.home.name, "adapter": str(adapter.relative_to(args.home)), "rows": len(rows),
         "metric": args.metric, "precision": "fp32", "results": results}, indent=1) + "\n")
    lines = [f"One trained adapter ({args.home.name}) scaled to shares of its update; {len(rows)} test rows, fp32.", "",
             f"| share | probe (60 q) | guard (120 q) | {args.metric} |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['share']:g} | {r['probe']:.3f} | {r['guard']:.3f} | {r[args.metric]:.3f} |" for r in results]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
