"""DPO training throughput: this project's DPO against TRL's DPOTrainer, same model, pairs and steps.

    OMP_NUM_THREADS=1 python benchmarks/preference_throughput.py --pairs PAIRS.jsonl [--steps 12] \
        [--json benchmarks/results-preference-cpu-2core.json]

Paths, each in a fresh process (so peak RSS is its own), LoRA r=16 on every linear layer, beta 0.1,
fp32, no gradient checkpointing, batch of `--batch-size` pairs (2x that many rows per forward):
- project: llmft.train.loop.train with train.method=dpo (length-grouped dynamic padding, logits only
  at answer positions, reference = the adapter switched off, no second model copy);
- trl_dpo: TRL's DPOTrainer (sigmoid loss, reference = the adapter switched off as well when given a
  peft_config, `precompute_ref_log_probs=False` like the project), from the same conversational pairs.

Both train `--steps` optimizer steps; the first `--warmup` are left out of the timing. tokens_per_s
counts real (non-pad) tokens of the chosen and rejected rows each step feeds the policy (the reference
pass over the same rows is not counted again).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = ("project", "trl_dpo")
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def _pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Conversational pairs: prompt turns, then the chosen and the rejected assistant turn."""
    from llmft.config import DataConfig
    from llmft.data.ingest import read_rows
    from llmft.data.shapes import pair_conversations, to_examples

    examples, _ = to_examples(read_rows(args.pairs), DataConfig())
    random.Random(args.seed).shuffle(examples)
    out = []
    for ex in examples[: args.rows]:
        chosen, rejected = pair_conversations(ex.messages)
        assert rejected is not None, f"{ex.where} is not a preference pair"
        out.append({"prompt": chosen[:-1], "chosen": [chosen[-1]], "rejected": [rejected[-1]]})
    return out


def _timing(record: list[tuple[int, float, int]], counter: dict[str, int]) -> Any:
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record.append((state.global_step, time.perf_counter(), counter["tokens"]))

    return Timing()


def _window(record: list[tuple[int, float, int]], warmup: int) -> dict[str, float]:
    start = next(r for r in record if r[0] == warmup)
    end = record[-1]
    return {"tokens_per_s": (end[2] - start[2]) / (end[1] - start[1]), "timed_steps": end[0] - start[0],
            "timed_tokens": end[2] - start[2], "seconds_per_step": (end[1] - start[1]) / (end[0] - start[0])}


def run_project(args: argparse.Namespace, base: str, tokenizer: Any, out: Path) -> dict[str, float]:
    from llmft.config_files import load_config
    from llmft.data.shapes import REJECTED_ROLE
    from llmft.tasks.preference import pair_example
    from llmft.train.loop import train

    examples = [pair_example(tokenizer, [*p["prompt"], p["chosen"][0],
                                         {"role": REJECTED_ROLE, "content": p["rejected"][0]["content"]}],
                             args.max_length) for p in _pairs(args)]
    cfg = load_config(None, ["train.method=dpo", f"train.max_steps={args.steps}",
                             f"train.batch_size={args.batch_size}", "train.eval_steps=null",
                             "train.learning_rate=0.0005", "train.warmup_ratio=0", "train.beta=0.1",
                             f"train.lora.r={LORA['r']}", f"train.lora.alpha={LORA['lora_alpha']}",
                             f"train.lora.dropout={LORA['lora_dropout']}"]).train
    result = train(base, examples, [], cfg, out, log_to_mlflow=False)
    steps = [h for h in result.history if "tokens_seen" in h]
    start = next(h for h in steps if h["step"] == args.warmup)
    seconds = steps[-1]["train_seconds"] - start["train_seconds"]
    tokens = steps[-1]["tokens_seen"] - start["tokens_seen"]
    return {"tokens_per_s": tokens / seconds, "timed_steps": steps[-1]["step"] - start["step"],
            "timed_tokens": tokens, "seconds_per_step": seconds / (steps[-1]["step"] - start["step"]),
            "final_reward_accuracy": steps[-1].get("rewards/accuracy", float("nan"))}


def run_trl_dpo(args: argparse.Namespace, base: str, tokenizer: Any, out: Path) -> dict[str, float]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    counter = {"tokens": 0}
    record: list[tuple[int, float, int]] = []

    class Counting(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counter["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.use_cache = False
    config = DPOConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=5e-4, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                       seed=args.seed, disable_tqdm=True, beta=0.1, max_length=args.max_length,
                       precompute_ref_log_probs=False, bf16=False, gradient_checkpointing=False,
                       dataloader_num_workers=0)
    trainer = Counting(model=model, args=config, train_dataset=datasets.Dataset.from_list(_pairs(args)),
                       processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                       callbacks=[_timing(record, counter)])
    trainer.train()
    result = _window(record, args.warmup)
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    result["final_reward_accuracy"] = logged[-1]["rewards/accuracies"] if logged else float("nan")
    return result


def worker(args: argparse.Namespace) -> None:
    from llmft.base_model import load_tokenizer, resolve_base_model
    from llmft.config import EMBEDDED_MODEL

    base = resolve_base_model(EMBEDDED_MODEL)
    tokenizer = load_tokenizer(base)
    runner = {"project": run_project, "trl_dpo": run_trl_dpo}[args.worker]
    with tempfile.TemporaryDirectory() as out:
        result = runner(args, base, tokenizer, Path(out))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, help="a pairs file (prompt/chosen/rejected)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")}}
    for path in args.paths:
        command = [sys.executable, __file__, "--worker", path, "--pairs", args.pairs, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--rows", str(args.rows),
                   "--max-length", str(args.max_length), "--seed", str(args.seed)]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            results[path] = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        else:
            results[path] = json.loads(line[len("RESULT "):])
        print(path, json.dumps(results[path]), flush=True)
    if "tokens_per_s" in results.get("project", {}) and "tokens_per_s" in results.get("trl_dpo", {}):
        results["speedup_vs_trl"] = results["project"]["tokens_per_s"] / results["trl_dpo"]["tokens_per_s"]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
