"""The default run twice on unchanged data and model: what the second run reuses, and its wall time.

    python benchmarks/warm_run.py [--out benchmarks/results-warm-run-cpu-2core.json] [--set key=value ...]

Both runs use a fresh project folder (own ZenML and MLflow state) and the default config. The first
run has no champion; the second re-measures the first run's model as champion. Printed and written:
wall seconds of each run, the seconds of every step that ran, the steps served from ZenML's cache,
and the primary metric of base, candidate and champion (the cached numbers must equal the computed
ones: the evaluation is deterministic).
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
            "champion_note": s["champion_note"], "promoted": s["promoted"]}


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
    result = {"config": "configs/finetune.yaml", "overrides": args.overrides, "runs": [first, second],
              "second_vs_first": round(second["wall_seconds"] / first["wall_seconds"], 3),
              "target_seconds": 180, "second_within_target": second["wall_seconds"] <= 180}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"first {first['wall_seconds']:.0f} s, second {second['wall_seconds']:.0f} s "
          f"({result['second_vs_first']:.2f}x); second run served from cache: {', '.join(second['cached_steps'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
