"""The default run again on unchanged data and model: what a second run reuses, and its wall time.

    python benchmarks/warm_run.py [--out benchmarks/results-warm-run-cpu-2core.json] [--set key=value ...]

Three runs in one fresh project folder (own ZenML and MLflow state), default config:
- first: nothing cached, no champion;
- second: the same command; the training, every evaluation and the probes come from ZenML's cache
  (train.reuse), v1 is this very model and stays champion;
- retrain: the same with --set train.reuse=false: it trains again (a new version), the base
  evaluations and the base's probe still come from the cache, v1 is re-measured as champion.
Printed and written: wall seconds of each run, the seconds of every step that ran, the steps served
from ZenML's cache, and the primary metric of base, candidate and champion (cached numbers must equal
computed ones: training is seeded and evaluation is greedy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(home: Path, label: str, overrides: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update({"LLMFT_HOME": str(home), "ZENML_CONFIG_PATH": str(home / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
                "HF_HUB_OFFLINE": "1"})
    out = home / f"{label}.json"
    args = [arg for item in overrides for arg in ("--set", item)]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "--pipeline", "finetune", "--quiet", *args,
                           "--summary", str(out)], cwd=ROOT, env=env, text=True, capture_output=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{label} run failed: {proc.stderr.strip().splitlines()[-1:]}")
    s = json.loads(out.read_text())
    metric = s["primary_metric"]
    return {"run": label, "wall_seconds": round(wall, 1), "reported_wall_seconds": s["wall_seconds"],
            "cached_steps": s["cached_steps"], "step_seconds": s["step_seconds"], "primary_metric": metric,
            **{role: (s["metrics"][role] or {}).get(metric) for role in ("base", "finetuned", "champion")},
            "champion_note": s["champion_note"], "promoted": s["promoted"],
            "registered_version": s["registered_model"]["version"], "already_champion": s.get("already_champion")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-warm-run-cpu-2core.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmft-warm-") as tmp:
        home = Path(tmp)
        first = run(home, "first", args.overrides)
        print(json.dumps(first), flush=True)
        second = run(home, "second", args.overrides)
        print(json.dumps(second), flush=True)
        retrain = run(home, "retrain", [*args.overrides, "train.reuse=false"])
        print(json.dumps(retrain), flush=True)
    result = {"config": "configs/finetune.yaml", "overrides": args.overrides, "runs": [first, second, retrain],
              "second_vs_first": round(second["wall_seconds"] / first["wall_seconds"], 3),
              "retrain_vs_first": round(retrain["wall_seconds"] / first["wall_seconds"], 3),
              "target_seconds": 180, "second_within_target": second["wall_seconds"] <= 180}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in (first, second, retrain):
        print(f"{r['run']:>8}: {r['wall_seconds']:.0f} s, {r['primary_metric']} base {r['base']} fine-tuned "
              f"{r['finetuned']} champion {r['champion']}, v{r['registered_version']}; from cache: "
              f"{', '.join(r['cached_steps']) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
