"""The model card: one markdown page per registered version, logged to MLflow and set as the
version's description, so the registry UI says what a model is before anyone serves it."""

from __future__ import annotations

import json
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render(name: str, version: str, config: dict[str, Any], dataset: dict[str, Any], training: dict[str, Any],
           evaluation: dict[str, Any], forgetting: dict[str, Any], decision: dict[str, Any]) -> str:
    metrics = evaluation["metrics"]
    columns = [label for label in ("base", "finetuned", "champion") if metrics.get(label)]
    primary = evaluation["primary_metric"]
    rows = dataset.get("rows", {})
    train = config["train"]
    verdict = "promoted to champion" if decision["promoted"] else "not promoted"
    lines = [
        f"# {name} v{version}",
        "",
        f"Task **{config['task']}**, method **{config['train']['method']}** on base model "
        f"`{config['model']['base']}`. Decision: **{verdict}**.",
        "",
        "## Data",
        "",
        f"- source `{config['data']['source']}`, fingerprint `{dataset.get('fingerprint')}`",
        f"- rows in {dataset.get('rows_in')}, duplicates removed {dataset.get('duplicates_removed')}, "
        f"rejected {dataset.get('rejected')} {json.dumps(dataset.get('rejected_by_reason', {}))}",
        f"- split train / validation / test: {rows.get('train')} / {rows.get('validation')} / {rows.get('test')}; "
        f"{evaluation['samples']} test rows scored",
        "",
        "## Training",
        "",
        f"- {training.get('steps')} steps, loss {_fmt(training.get('first_loss'))} → "
        f"{_fmt(training.get('last_loss'))}, "
        f"validation loss {_fmt(training.get('validation_loss'))}",
        f"- learning rate {train['learning_rate']}, batch {train['batch_size']} × "
        f"{train['gradient_accumulation_steps']} accumulation, max sequence {train['max_seq_length']}",
        "",
        "## Metrics (same test rows for every column)",
        "",
        "| metric | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for metric in metrics["finetuned"]:
        mark = " (primary)" if metric == primary else ""
        lines.append(f"| {metric}{mark} | " + " | ".join(_fmt(metrics[c].get(metric)) for c in columns) + " |")
    if evaluation.get("champion_version"):
        lines += ["", f"Champion column: v{evaluation['champion_version']}, re-evaluated in this run."]
    lines += ["", "## Forgetting probe", ""]
    if forgetting.get("applicable"):
        lines.append(f"{forgetting['questions']} general-knowledge questions: base {_fmt(forgetting['base'])}, "
                     f"fine-tuned {_fmt(forgetting['finetuned'])}, drop {_fmt(forgetting['drop'])} "
                     f"(allowed {forgetting['max_allowed']}).")
    else:
        lines.append(forgetting.get("reason", "not run"))
    lines += ["", "## Promotion gate", ""] + [f"- {r}" for r in decision["reasons"]]
    lines += [
        "",
        "## Known limitations",
        "",
        "- Scored on a held-out split of the same source as training: it says nothing about data from "
        "elsewhere.",
        "- Greedy decoding at evaluation; sampled answers can differ.",
        f"- Generation capped at {config['eval']['max_new_tokens']} new tokens; longer answers are cut.",
        "- The forgetting probe is short and English-only: it catches gross loss of general ability, "
        "not subtle drift.",
    ]
    if config["data"]["source"] in ("data/products.jsonl", "data/sentiment.jsonl"):
        lines.append("- Trained on the shipped synthetic dataset: a demonstration, not a production model.")
    return "\n".join(lines) + "\n"
