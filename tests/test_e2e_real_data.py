"""End to end on real rows: one small slice per kind of data users bring (tests/data/real/, drawn from
public corpora on the package registries by scripts/fetch_real_data.py), with only `data.source` and
tiny run settings set. Each must infer its task, go through the gate with its duplicates, long
records and odd labels, train, evaluate and reach a readable promotion decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_e2e import ROOT, run_py

pytestmark = pytest.mark.e2e

REAL = ROOT / "tests" / "data" / "real"
FAST = ["--set", "train.max_steps=8", "--set", "eval.max_samples=10", "--set", "eval.max_new_tokens=32",
        "--set", "train.eval_steps=null", "--set", "train.save_steps=1000"]


def finetune(run_env: dict[str, str], tmp_path: Path, name: str, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "summary.json"
    proc = run_py(run_env, "--pipeline", "finetune", "--set", f"data.source={REAL / name}", *FAST, *extra,
                  "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout + proc.stderr


def readable_decision(s: dict) -> None:
    """The decision follows from the run's own numbers (default gate: promotion.min_delta 0.01, the
    strongest baseline, max_forgetting 0.1), and its first line states the numbers it compared."""
    reasons = s["promotion_reasons"]
    assert [r.split(":")[0].split(" ", 1)[1] for r in reasons] == ["base", "champion", "forgetting"]
    primary, m = s["primary_metric"], s["metrics"]
    tuned = m["finetuned"][primary]
    baselines = {k: m[k][primary] for k in ("base", "base_few_shot", "simple_baseline")
                 if m.get(k) and m[k].get(primary) is not None}
    assert "simple_baseline" in baselines, m.keys()  # every run measures the non-LLM baseline
    beats = tuned >= max(baselines.values()) + 0.01
    assert reasons[0].startswith("PASS base" if beats else "FAIL base"), (reasons[0], baselines, tuned)
    assert f"{tuned:.4f}" in reasons[0] and f"{max(baselines.values()):.4f}" in reasons[0], reasons[0]
    keeps = not s["forgetting"]["applicable"] or s["forgetting"]["drop"] <= 0.1
    assert s["promoted"] == (beats and keeps), reasons


def test_dialog_corpus_is_chat(run_env: dict[str, str], tmp_path: Path):
    s, console = finetune(run_env, tmp_path, "dialog.jsonl", "--set", "augment.enabled=true",
                          "--set", "augment.max_rows=4", "--set", "augment.max_new_tokens=48")
    assert s["task"] == "chat" and s["task_reason"] == "inferred from conversations in column conversation"
    assert console.startswith("task: chat (inferred from conversations in column conversation; set task=")
    assert s["registered_model"]["name"] == "dialog-chat" and s["primary_metric"] == "rougeL"
    assert s["dataset"]["duplicates_removed"] >= 1  # the corpus repeats a conversation
    assert s["dataset"]["duplicate_examples"][0].startswith(f"{REAL / 'dialog.jsonl'}, line ")
    assert s["metrics"]["finetuned"]["eval_loss"] < s["metrics"]["base"]["eval_loss"]  # it learned the replies
    assert s["forgetting"]["applicable"]
    # augmentation: four rows paraphrased once each; what was not kept is accounted for by reason
    (synthetic,) = [e for e in s["dataset"]["extras"] if e["origin"] == "synthetic"]  # (and data.replay's mix)
    assert synthetic["origin"] == "synthetic" and synthetic["used"] == synthetic["kept"]
    assert synthetic["read"] + synthetic["dropped_by_reason"].get("too_long_to_paraphrase", 0) == 4
    assert synthetic["read"] - synthetic["kept"] == sum(v for k, v in synthetic["dropped_by_reason"].items()
                                                        if k != "too_long_to_paraphrase")
    assert "synthetic paraphrases by" in console
    readable_decision(s)
    # a clean console: progress bars and step lines, never the trainer's raw log dicts
    assert "{'loss'" not in console and "'grad_norm'" not in console and "Failed to disable MLflow" not in console


def test_news_corpus_is_classification_with_inferred_labels(run_env: dict[str, str], tmp_path: Path):
    s, _ = finetune(run_env, tmp_path, "classification.jsonl", "--set", "train.max_seq_length=256")
    assert s["task"] == "classification" and s["primary_metric"] == "macro_f1"
    assert s["labels"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert s["dataset"]["duplicates_removed"] == 4 and s["dataset"]["truncated"] > 0  # long articles are cut
    assert s["eval_sample"]["how"] == "seeded sample stratified by label" and s["eval_sample"]["n"] == 10
    assert not s["forgetting"]["applicable"]
    # the base is the instruct model told the five labels, zero- and few-shot, with the head's metric keys
    assert set(s["metrics"]["base"]) == set(s["metrics"]["base_few_shot"]) == set(s["metrics"]["finetuned"])
    assert s["few_shot"]["k"] == 3
    # the gate compared with the strongest of the three baselines, and says which
    scores = {"zero_shot": s["metrics"]["base"]["macro_f1"], "few_shot": s["metrics"]["base_few_shot"]["macro_f1"],
              "simple": s["metrics"]["simple_baseline"]["macro_f1"]}
    assert scores[s["baseline_used"]] == max(scores.values()), (s["baseline_used"], scores)
    assert s["simple_baseline_method"].startswith("tf-idf + logistic regression")
    assert s["promotion_reasons"][0].split(" ")[1:2] == ["base:"]
    named = {"zero_shot": "base zero-shot", "few_shot": "base few-shot", "simple": "simple baseline"}
    assert named[s["baseline_used"]] in s["promotion_reasons"][0], s["promotion_reasons"][0]
    if s["baseline_used"] == "simple" and not s["promoted"]:  # a bag of words wins: say what to try
        assert "train.max_steps" in s["promotion_reasons"][0] and "model.base" in s["promotion_reasons"][0]
    readable_decision(s)


def test_summarization_corpus_with_document_summary_columns(run_env: dict[str, str], tmp_path: Path):
    s, _ = finetune(run_env, tmp_path, "summarization.jsonl", "--set", "eval.max_new_tokens=48",
                    "--set", "eval.slice_by=aspect", "--set", "data.mix=[{source: builtin:general, weight: 0.25}]")
    assert s["task"] == "summarization" and s["task_reason"] == "inferred from columns document/summary"
    assert s["primary_metric"] == "rougeLsum"
    tuned = s["metrics"]["finetuned"]
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "length_ratio", "unsupported_content",
            "unsupported_output_rate"} <= set(tuned)
    # replay: a quarter of the training rows again, from the shipped general set, training split only
    (replay,) = s["dataset"]["extras"]
    assert replay["origin"] == "mix" and replay["used"] == round(0.25 * s["dataset"]["rows"]["train"])
    # slices: the paper aspect each summary is about; every evaluated row is in one
    slices = s["slices"]
    assert slices["column"] == "aspect" and {x["name"] for x in slices["slices"]} <= {"challenge", "approach",
                                                                                     "outcome"}
    assert sum(x["rows"] for x in slices["slices"]) == s["eval_sample"]["n"] and slices["worst"] is not None
    assert tuned["eval_loss"] < s["metrics"]["base"]["eval_loss"]
    readable_decision(s)


def test_messy_csv_with_integer_labels_and_a_huge_record(run_env: dict[str, str], tmp_path: Path):
    s, console = finetune(run_env, tmp_path, "messy.csv", "--set", "train.max_seq_length=128")
    assert s["task"] == "classification" and s["task_reason"] == "inferred from columns text/spam"
    assert s["labels"] == ["0", "1"]
    d = s["dataset"]
    assert d["rows_in"] == 100 and d["duplicates_removed"] >= 8 and d["truncated"] >= 1  # the 28k-character record
    assert d["warnings"] and "duplicates" in d["warnings"][0]
    assert "validation.max_duplicate_fraction" in d["warnings"][0]
    assert "warning: " in console
    readable_decision(s)
