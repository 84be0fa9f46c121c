"""Does replay (`data.mix`) reduce forgetting, and does augmentation help a small training set? Measured
on real corpora through the normal finetune pipeline, each arm in a fresh project folder, the arms of
one question differing only in the setting under test (same data, split, seed, steps, test sample).

    python benchmarks/replay_augmentation.py [--only replay|augmentation] [--steps 60]

replay:        movie_dialog (chat, Cornell movie lines; its first 4000 rows: the gate over all 64k takes
               longer than this study), full fine-tuning (the method that forgets most),
               without vs with `data.mix=[{source: builtin:general, weight: W}]`: the forgetting probe's
               drop from the base and the task metric (rougeL).
augmentation:  sms_spam (classification) with the training split capped at 100 rows, without vs with
               `augment.enabled=true` (2 paraphrases per row by the base model): macro-F1 on the test sample.

Results go to benchmarks/results-replay-augmentation-cpu-2core.{json,md}, whatever they show.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import ROOT, fetch, run_one

STUDIES = {
    "replay": {
        "corpus": "movie_dialog",
        "common": ["data.max_rows=4000", "train.method=full", "train.learning_rate=5e-5", "eval.max_samples=40",
                   "eval.few_shot_k=0", "eval.genai_table_rows=0"],
        "arms": {"no replay": [], "replay 0.5": ["data.mix=[{source: builtin:general, weight: 0.5}]"]},
    },
    "augmentation": {
        "corpus": "sms_spam",
        "common": ["data.max_train_rows=100", "eval.max_samples=100", "eval.few_shot_k=0", "eval.genai_table_rows=0"],
        "arms": {"no augmentation": [], "augmentation x2": ["augment.enabled=true", "augment.per_row=2"]},
    },
}


def _row(study: str, arm: str, result: dict) -> dict:
    if "error" in result:
        return {"study": study, "arm": arm, "error": result["error"], "wall_seconds": result["wall_seconds"]}
    metric = result["primary_metric"]
    forgetting = result["forgetting"]
    extras = {e["origin"]: e for e in result.get("dataset_extras", [])}
    return {"study": study, "arm": arm, "corpus": result["corpus"], "primary_metric": metric,
            "base": result["base"], "finetuned": result["finetuned"],
            "probe_base": forgetting.get("base") if forgetting.get("applicable") else None,
            "probe_finetuned": forgetting.get("finetuned") if forgetting.get("applicable") else None,
            "train_rows": result["rows"]["train"], "extra_rows": {k: v["used"] for k, v in extras.items()},
            "extras": list(extras.values()), "eval_n": result["eval_sample"]["n"], "promoted": result["promoted"],
            "steps": result["train"].get("steps"), "wall_seconds": result["wall_seconds"]}


def markdown(rows: list[dict], steps: int) -> str:
    lines = [f"`python run.py --pipeline finetune --set data.source=FILE --set train.max_steps={steps}` plus the "
             "settings below; 2 CPU cores; each arm in a fresh project folder.", "",
             "| study | corpus | arm | training rows (+extra) | primary metric | base | fine-tuned | probe base → "
             "fine-tuned (drop) | wall s |", "|---|---|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['study']} | – | {r['arm']} | – | – | – | – | failed: {r['error']} | "
                         f"{r['wall_seconds']:.0f} |")
            continue
        probe = "n/a"
        if r["probe_base"] is not None:
            drop = r["probe_base"] - r["probe_finetuned"]
            probe = f"{r['probe_base']:.3f} → {r['probe_finetuned']:.3f} ({drop:+.3f})"
        extra = ", ".join(f"+{v} {k}" for k, v in r["extra_rows"].items())
        lines.append(f"| {r['study']} | {r['corpus']} | {r['arm']} | {r['train_rows']} {extra} | "
                     f"{r['primary_metric']} (n={r['eval_n']}) | {r['base']:.3f} | {r['finetuned']:.3f} | {probe} | "
                     f"{r['wall_seconds']:.0f} |")
    lines += ["", "Settings per study:", ""]
    for name, study in STUDIES.items():
        arms = "; ".join(f"{arm}: {' '.join(s) or '(nothing more)'}" for arm, s in study["arms"].items())
        lines.append(f"- **{name}** ({study['corpus']}): {' '.join(study['common'])}; {arms}")
    for r in rows:
        for e in r.get("extras", []):
            lines.append(f"  - {r['arm']}: {e['origin']} from {e['source']}: read {e['read']}, kept {e['kept']}, "
                         f"used {e['used']}, dropped {e['dropped_by_reason'] or 'none'}"
                         + (f" ({e['note']})" if e.get("note") else ""))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(STUDIES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-replay-augmentation-cpu-2core"))
    parser.add_argument("--cache", default=os.environ.get("LLMFT_CACHE", str(Path.home() / ".cache" / "llmft")))
    args = parser.parse_args()
    names = args.only or list(STUDIES)
    sources = fetch(sorted({STUDIES[n]["corpus"] for n in names}), Path(args.cache) / "real_data")
    out = Path(args.out)
    previous = json.loads(out.with_suffix(".json").read_text())["rows"] if out.with_suffix(".json").is_file() else []
    rows = [r for r in previous if r["study"] not in names]
    with tempfile.TemporaryDirectory(prefix="llmft-iteration-") as workdir:
        for name in names:
            study = STUDIES[name]
            for i, (arm, settings) in enumerate(study["arms"].items()):
                print(f"== {name} / {arm}", flush=True)
                result = run_one(study["corpus"], sources[study["corpus"]], args.steps, Path(workdir),
                                 (*study["common"], *settings), label=f"{name}-{i}")
                rows.append(_row(name, arm, result))
                print(json.dumps({k: rows[-1].get(k) for k in ("base", "finetuned", "probe_base", "probe_finetuned",
                                                                "extra_rows", "wall_seconds", "error")}), flush=True)
                out.with_suffix(".json").write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1) + "\n")
                out.with_suffix(".md").write_text(markdown(rows, args.steps))
    print(markdown(rows, args.steps))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
