"""Training throughput: this project's path against the usual recipes, same model, data and steps.

    python benchmarks/train_throughput.py [--steps 24] [--json results.json]   (~12 min on 2 cores)
    # on a GPU: bf16 autocast for every path, any HF directory of the model (weights need not be trained)
    python benchmarks/train_throughput.py --device cuda --precision bf16 --base DIR --batch-size 16

Paths, each in a fresh process (so peak RSS is its own), LoRA with the same settings:
- project:    llmft.training.train (length-grouped dynamic padding, logits only where labelled,
              cheaper LoRA dropout masks);
- hf_trainer: plain HF Trainer + DataCollatorForLanguageModeling (dynamic padding, random order,
              loss over every token), the recipe most scripts start from;
- trl_sft:    TRL's SFTTrainer with packing (best-fit-decreasing into `--max-length` rows), fp32 and
              no gradient checkpointing like the others (skipped if trl is not installed).

Each path trains `--steps` optimizer steps; the first `--warmup` are left out of the timing.
tokens_per_s counts real (non-pad) tokens. MFU = tokens/s x model FLOPs per token / the fp32
matmul peak measured in this process, with model FLOPs per token for an adapter method =
4 N (forward, and backward to the activations; frozen weights get no gradient) + 6 N_adapter
+ 12 L d T (attention scores and values, T = mean sequence length), N = parameters in matmuls
(lm_head included). The same formula for every path, so MFU ratios equal tokens/s ratios.
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

PATHS = ("project", "hf_trainer", "trl_sft")
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def matmul_peak_gflops(seconds: float = 3.0, device: str = "cpu", precision: str = "fp32") -> float:
    """Best GEMM rate over a few square sizes in the run's precision (what this device can do at most)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    sizes = (1024, 1536, 2048) if device == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(sizes):
            torch.mm(a, b)
            reps += 1
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def _conversations(rows: int, seed: int) -> list[list[dict[str, str]]]:
    from llmft.chat_format import build_messages
    from llmft.data.shapes import Example
    from llmft.tasks.extraction import instruction_for

    records = [json.loads(line) for line in (ROOT / "data" / "products.jsonl").read_text().splitlines()]
    random.Random(seed).shuffle(records)
    # the instruction a default run writes from this data
    instruction = instruction_for([Example("", "prompt_response", messages=build_messages(None, r["prompt"],
                                                                                          r["response"]))
                                   for r in records])
    return [build_messages(instruction, r["prompt"], r["response"]) for r in records[:rows]]


def _timing_callback(record: list[tuple[int, float, int, int]], counter: dict[str, int]):
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record.append((state.global_step, time.perf_counter(), counter["tokens"], counter["slots"]))

    return Timing()


def _counting(trainer_cls: Any, counter: dict[str, int]) -> Any:
    """Subclass that counts the real and padded tokens of each training batch (nothing else changes)."""

    class Counting(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            ids = inputs["input_ids"]
            counter["tokens"] += int(mask.sum()) if mask is not None else int(ids.numel())
            counter["slots"] += int(ids.numel())
            return super().training_step(model, inputs, num_items_in_batch)

    return Counting


def _window(record: list[tuple[int, float, int, int]], warmup: int) -> dict[str, float]:
    start = next(r for r in record if r[0] == warmup)
    end = record[-1]
    tokens, slots = end[2] - start[2], end[3] - start[3]
    return {"tokens_per_s": tokens / (end[1] - start[1]), "padding_fraction": 1 - tokens / slots if slots else 0.0,
            "timed_steps": end[0] - start[0], "timed_tokens": tokens}


def run_project(args: argparse.Namespace, base: str, tokenizer: Any, out: Path) -> dict[str, float]:
    from llmft.chat_format import encode_messages
    from llmft.config_files import load_config
    from llmft.train.loop import train

    examples = [encode_messages(tokenizer, c) for c in _conversations(args.rows, args.seed)]
    cfg = load_config(None, [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
                             "train.eval_steps=null", "train.learning_rate=0.0002", "train.warmup_ratio=0",
                             f"train.precision={args.precision}",
                             f"train.lora.r={LORA['r']}", f"train.lora.alpha={LORA['lora_alpha']}",
                             f"train.lora.dropout={LORA['lora_dropout']}"]).train
    result = train(base, examples, [], cfg, out, log_to_mlflow=False)
    steps = [h for h in result.history if "tokens_seen" in h]
    start = next(h for h in steps if h["step"] == args.warmup)
    tokens = steps[-1]["tokens_seen"] - start["tokens_seen"]
    return {"tokens_per_s": tokens / (steps[-1]["train_seconds"] - start["train_seconds"]),
            "padding_fraction": result.padding_fraction, "timed_steps": steps[-1]["step"] - start["step"],
            "timed_tokens": tokens, "mean_seq_len": sum(len(e["input_ids"]) for e in examples) / len(examples)}


def _lora_model(base: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))


def _common_args(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return {"output_dir": str(out), "max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
            "learning_rate": 2e-4, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
            "use_cpu": args.device == "cpu", "seed": args.seed, "disable_tqdm": True,
            "bf16": args.precision == "bf16", "fp16": args.precision == "fp16"}


def run_hf_trainer(args: argparse.Namespace, base: str, tokenizer: Any, out: Path) -> dict[str, float]:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in _conversations(args.rows, args.seed)]
    dataset = [dict(tokenizer(t, add_special_tokens=False)) for t in texts]
    counter = {"tokens": 0, "slots": 0}
    record: list[tuple[int, float, int, int]] = []
    trainer = _counting(Trainer, counter)(
        model=_lora_model(base), args=TrainingArguments(**_common_args(args, out)), train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[_timing_callback(record, counter)])
    trainer.train()
    return _window(record, args.warmup)


def run_trl_sft(args: argparse.Namespace, base: str, tokenizer: Any, out: Path) -> dict[str, float]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    dataset = datasets.Dataset.from_list([{"messages": c} for c in _conversations(args.rows, args.seed)])
    counter = {"tokens": 0, "slots": 0}
    record: list[tuple[int, float, int, int]] = []
    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.use_cache = False
    trainer = _counting(SFTTrainer, counter)(
        model=model, processing_class=tokenizer, train_dataset=dataset, peft_config=LoraConfig(**LORA),
        # TRL defaults to bf16 autocast and gradient checkpointing: precision follows --precision as for
        # every path (bf16 is emulated, i.e. far slower, on CPUs without it) and checkpointing is off
        args=SFTConfig(**_common_args(args, out), packing=True, max_length=args.max_length,
                       gradient_checkpointing=False),
        callbacks=[_timing_callback(record, counter)])
    trainer.train()
    return _window(record, args.warmup)


def _flops_per_token(base: str, mean_seq_len: float) -> tuple[float, int]:
    import torch

    model = _lora_model(base)
    lm = model.get_base_model()
    linear = sum(m.weight.numel() for name, m in lm.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in name)
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = lm.config
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_seq_len
    return 4 * linear + 6 * adapter + attention, linear


def worker(args: argparse.Namespace) -> None:
    from llmft.base_model import load_tokenizer, resolve_base_model
    from llmft.config import EMBEDDED_MODEL

    base = args.base or resolve_base_model(EMBEDDED_MODEL)
    tokenizer = load_tokenizer(base)
    runner = {"project": run_project, "hf_trainer": run_hf_trainer, "trl_sft": run_trl_sft}[args.worker]
    with tempfile.TemporaryDirectory() as out:
        result = runner(args, base, tokenizer, Path(out))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=384, help="TRL packing: tokens per packed row")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="autocast for every path (CPUs without bf16 units emulate it, far slower)")
    parser.add_argument("--base", help="a Hugging Face model directory (default: the embedded SmolLM2-135M)")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from llmft.base_model import resolve_base_model
    from llmft.config import EMBEDDED_MODEL

    peak = matmul_peak_gflops(device=args.device, precision=args.precision)
    print(f"{args.precision} matmul peak on {args.device}: {peak:.1f} GFLOP/s")
    results: dict[str, Any] = {}
    for path in args.paths.split(","):
        if path == "trl_sft":
            try:
                import trl  # noqa: F401
            except ImportError:
                results[path] = {"skipped": "trl is not installed (pip install -e '.[bench]')"}
                continue
        print(f"training: {path} ({args.steps} steps) ...", flush=True)
        command = [sys.executable, __file__, "--worker", path, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch-size", str(args.batch_size), "--rows", str(args.rows),
                   "--max-length", str(args.max_length), "--seed", str(args.seed), "--device", args.device,
                   "--precision", args.precision, *(["--base", args.base] if args.base else [])]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            results[path] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        results[path] = json.loads(line[len("RESULT "):])

    mean_len = results.get("project", {}).get("mean_seq_len", 144.0)
    flops, linear = _flops_per_token(args.base or resolve_base_model(EMBEDDED_MODEL), mean_len)
    for values in results.values():
        if "tokens_per_s" in values:
            values["mfu"] = values["tokens_per_s"] * flops / (peak * 1e9)
    baseline = results.get("hf_trainer", {}).get("tokens_per_s")
    print(f"\nLoRA r={LORA['r']}, batch {args.batch_size}, {args.steps} steps ({args.warmup} warm-up left out); "
          f"model FLOPs/token {flops / 1e9:.2f} G ({linear / 1e6:.0f} M matmul parameters)\n")
    print("| path | real tokens/s | vs hf_trainer | padding | peak RSS MB | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for path, v in results.items():
        if "tokens_per_s" not in v:
            print(f"| {path} | {v.get('skipped') or v.get('error')} | | | | |")
            continue
        ratio = f"{v['tokens_per_s'] / baseline:.2f}x" if baseline else "-"
        print(f"| {path} | {v['tokens_per_s']:.1f} | {ratio} | {v['padding_fraction']:.3f} | "
              f"{v['peak_rss_mb']:.0f} | {v['mfu']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "precision": args.precision,
                                               "batch_size": args.batch_size, "steps": args.steps,
                                               "matmul_peak_gflops": peak, "model_flops_per_token": flops,
                                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
