"""Simple (non-LLM) baselines on small hand-made data, the entity-level F1, the collapse warning and
the gate when the simple baseline wins. No model, no ZenML."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from llmft.config import PromotionConfig
from llmft.contracts import EvalSample, Evaluation, SplitInfo
from llmft.evaluate import simple_baselines as sb
from llmft.evaluate.collapse import canonical, collapse_warning
from llmft.evaluate.stage import evaluate_simple_baseline
from llmft.registry.promotion import gate_baselines, pick_baseline
from llmft.tasks import extraction, get_task, primary_metric
from llmft.tasks.base import TaskSpec


def chat_row(user: str, answer: str, system: str | None = None) -> dict[str, str]:
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": json.dumps(turns), "response": answer}


# ---- classification ----

HAM = [f"see you at lunch today {w}" for w in ("friend", "mom", "team", "boss", "later", "soon", "there",
                                              "tomorrow", "again", "now", "home", "work")]
SPAM = ["win a free prize now", "free prize claim now"]
TRAIN = [{"text": t, "label": "ham"} for t in HAM] + [{"text": t, "label": "spam"} for t in SPAM]
TEST = [{"text": "claim your free prize", "label": "spam"}, {"text": "lunch with the team", "label": "ham"},
        {"text": "see you now", "label": "ham"}]


def test_classifier_is_class_weighted_and_scored_like_a_classifier():
    found = sb.classify(TRAIN, [], TEST, ["ham", "spam"], "macro_f1")
    assert found.method == "tf-idf + logistic regression (class-weighted)"
    # 12 ham to 2 spam: an unweighted regression answers ham for all three; balanced weights find the spam
    assert found.scores.outputs == ["spam", "ham", "ham"]
    assert found.scores.metrics["macro_f1"] == 1.0 and found.scores.metrics["accuracy"] == 1.0
    assert set(found.scores.metrics) == set(get_task("classification").metric_names)  # eval_loss included
    assert 0 < found.scores.metrics["eval_loss"] < 0.69  # every true label above one half
    assert found.scores.extras["confusion"] == [[2, 0], [0, 1]]
    assert "C=1 (no validation rows)" in found.detail


def test_classifier_picks_c_on_validation_and_survives_one_label():
    found = sb.classify(TRAIN, TEST, TEST, ["ham", "spam"], "macro_f1")
    assert "chosen on 3 validation rows by macro_f1" in found.detail
    one = sb.classify([r for r in TRAIN if r["label"] == "ham"], [], TEST, ["ham", "spam"], "macro_f1")
    assert one.scores.outputs == ["ham"] * 3 and one.scores.metrics["accuracy"] == pytest.approx(2 / 3)


# ---- summarization ----

def test_lead_k_chooses_k_on_validation():
    assert sb.sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    docs = ["Cats sleep a lot. They purr when happy. Dogs bark. Birds sing.",
            "The council met. It approved the budget. Parks get money. Nobody objected."]
    validation = [chat_row(d, " ".join(sb.sentences(d)[:2])) for d in docs]  # the gold is always Lead-2
    rows = [chat_row("Rain fell all day. Rivers rose fast. Roads closed.", "Rain fell all day. Rivers rose fast."),
            chat_row("Alpha beta gamma. Delta.", "Zeta eta theta.")]
    found = sb.summarize([], validation, rows, "Summarize.", "rougeLsum")
    assert found.method == "lead-2 sentences" and found.detail == "k=2 chosen on 2 validation rows by rougeLsum"
    assert found.scores.outputs == ["Rain fell all day. Rivers rose fast.", "Alpha beta gamma. Delta."]
    assert [r["rougeL"] for r in found.scores.row_scores] == [1.0, 0.0]
    assert "eval_loss" not in found.scores.metrics  # a token-level loss needs a language model
    assert found.scores.metrics["unsupported_content"] == 0.0  # Lead-k only copies the source


# ---- chat ----

def test_nearest_neighbour_returns_the_closest_training_response():
    train = [chat_row("how do I reset my password", "Use the reset link."),
             chat_row("what are your opening hours", "9 to 5."),
             chat_row("when do you open on saturday", "9 to 5.")]
    rows = [chat_row("I forgot my password, how to reset it?", "Use the reset link."),
            chat_row("opening hours please", "We open at 9."),
            chat_row("xyzzy", "Hello.")]
    found = sb.nearest_neighbour(train, rows, None)
    # the row sharing no word gets the most common training response
    assert found.scores.outputs == ["Use the reset link.", "9 to 5.", "9 to 5."]
    assert found.scores.metrics["exact_match"] == pytest.approx(1 / 3)


# ---- extraction ----

NER_TRAIN = [chat_row("Alice flew to Paris", '{"person": ["Alice"], "location": ["Paris"]}'),
             chat_row("Berlin is cold", '{"location": ["Berlin"]}'),
             chat_row("Jordan visited Jordan", '{"person": ["Jordan"], "location": ["Jordan"]}'),
             chat_row("Jordan won again", '{"person": ["Jordan"]}'),
             chat_row("nothing to see", "{}")]


def test_dictionary_extraction_finds_training_values_word_bounded():
    rows = [chat_row("alice met Bob in BERLIN", '{"person": ["Alice", "Bob"], "location": ["Berlin"]}'),
            chat_row("Parisian food and Jordan", '{"person": ["Jordan"]}'),
            chat_row("a quiet day", "{}")]
    found = sb.extraction(NER_TRAIN, rows, None)
    assert found is not None
    # keys left out (the targets leave them out), spelled as training wrote them; "Parisian" is not
    # Paris; Jordan belongs to person (seen there twice, as a location once)
    assert [json.loads(o) for o in found.scores.outputs] == [{"person": ["Alice"], "location": ["Berlin"]},
                                                            {"person": ["Jordan"]}, {}]
    # pairs: predicted 2 + 1 + 0, gold 3 + 1 + 0, correct 2 + 1: 2 * 3 / (3 + 4)
    assert found.scores.metrics["entity_f1"] == pytest.approx(6 / 7)


def test_dictionary_extraction_of_scalar_fields_answers_null_and_typed_values():
    train = [chat_row("Bluecairn watch black 12.5", '{"brand": "Bluecairn", "color": "black", "price": 12.5}'),
             chat_row("Ember Lane bag", '{"brand": "Ember Lane", "color": null, "price": null}')]
    rows = [chat_row("EMBER LANE black boots 12.5", '{"brand": "Ember Lane", "color": "black", "price": 12.5}'),
            chat_row("Unknown thing 3", '{"brand": null, "color": null, "price": 3}')]
    found = sb.extraction(train, rows, None)
    assert found is not None
    assert [json.loads(o) for o in found.scores.outputs] == [
        {"brand": "Ember Lane", "color": "black", "price": 12.5}, {"brand": None, "color": None, "price": None}]
    assert found.scores.metrics["field_accuracy"] == pytest.approx(5 / 6)
    assert sb.extraction([chat_row("x", "not json")], rows, None) is None


# ---- preference ----

def _pair(chosen: str, rejected: str) -> dict[str, str]:
    turns = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": chosen},
             {"role": "rejected", "content": rejected}]
    return {"messages": json.dumps(turns), "response": chosen}


def test_longer_answer_preference():
    rows = [_pair("a long and careful answer", "short"), _pair("ok", "a much longer rejected answer"),
            _pair("same", "size"), _pair("the chosen is longer", "no")]
    found = sb.simple_baseline("preference", [], [], rows, None, None, "preference_accuracy")
    assert not isinstance(found, str)
    assert found.scores.metrics == {"preference_accuracy": 0.5}  # a tie is no preference
    why = sb.simple_baseline("preference", [], [], rows, None, None, "rougeL")
    assert why == "the longer-answer rule gives preference_accuracy only, not the primary metric rougeL"


# ---- entity-level F1 and the primary metric ----

def test_entity_f1_is_micro_over_field_value_pairs():
    references = ['{"per": ["A", "B"], "loc": ["C"]}', "{}", '{"loc": ["E"]}']
    predictions = ['{"per": ["a"], "loc": ["C", "D"]}', '{"per": ["X"]}', "not json"]
    metrics, _ = extraction.score(predictions, references)
    # correct 2 (a = A, C), predicted 3 + 1 + 0, gold 3 + 0 + 1: 2 * 2 / (4 + 4)
    assert metrics["entity_f1"] == pytest.approx(0.5)
    assert extraction.score(predictions[:1], references[:1])[0]["entity_f1"] == pytest.approx(4 / 6)
    # the all-empty answer on mostly empty targets: 2 of 3 records right, no entity found
    empty, _ = extraction.score(["{}", "{}", "{}"], ["{}", "{}", '{"per": ["A"]}'])
    assert empty["entity_f1"] == 0.0 and empty["all_fields_correct"] == pytest.approx(2 / 3)
    assert extraction.score(["{}"], ["{}"])[0]["entity_f1"] == 1.0  # nothing to find, nothing claimed


def test_entity_f1_is_primary_for_list_targets_only():
    task = get_task("extraction")
    lists = [{"response": '{"per": ["A"]}'}, {"response": "{}"}]
    scalars = [{"response": '{"brand": "X", "price": null}'}]
    assert primary_metric(task, None, lists) == "entity_f1"
    assert primary_metric(task, None, scalars) == "field_accuracy" == primary_metric(task, None)
    assert primary_metric(task, "field_f1", lists) == "field_f1"  # eval.primary_metric wins
    assert "entity_f1" in task.metric_names


# ---- collapse ----

def test_collapse_warning_when_one_answer_covers_nearly_all():
    gold = ["ham"] * 17 + ["spam"] * 3
    warning = collapse_warning("fine-tuned", ["ham"] * 19 + ["spam"], gold)
    assert warning == ("collapse: 95% of the fine-tuned answers are 'ham' (19 of 20 rows), against 85% of the gold "
                       "answers: it answers the majority, not the task")
    assert collapse_warning("fine-tuned", ["ham"] * 20, ["ham"] * 19 + ["spam"]) is None  # gold as concentrated
    assert collapse_warning("x", ["a"] * 91 + ["b"] * 9, ["a"] * 89 + ["b"] * 11) is None  # within the margin
    assert collapse_warning("x", ["a"] * 4, ["a", "b", "c", "d"]) is None  # too few rows to say
    assert canonical('```json\n{"b": 1, "a": 2}\n```') == canonical('{"a":2, "b":1}')
    assert collapse_warning("x", ["{}"] * 10, ['{"per": ["A"]}'] * 4 + [" { } "] * 6) is not None
    assert collapse_warning("x", [""] * 5, ["a", "b", "c", "d", "e"]).startswith("collapse: 100% of the x answers "
                                                                                  "are empty (5 of 5 rows)")


# ---- the gate ----

def _evaluation(simple: float | None, tuned: float = 0.514, warnings: list[str] | None = None) -> Evaluation:
    return Evaluation(task="classification", primary_metric="macro_f1", higher_is_better=True,
                      sample=EvalSample(n=20, of=20, seed=None, how="whole test split"), champion_version=None,
                      champion_note="no current champion",
                      metrics={"base": {"macro_f1": 0.30}, "base_few_shot": {"macro_f1": 0.40},
                               "simple_baseline": None if simple is None else {"macro_f1": simple},
                               "finetuned": {"macro_f1": tuned}, "champion": None},
                      few_shot={"k": 3.0, "used_mean": 2.0}, warnings=warnings or [],
                      simple_baseline_method="tf-idf + logistic regression (class-weighted)")


def test_pick_baseline_with_the_simple_one():
    three = {"zero_shot": 0.40, "few_shot": 0.55, "simple": 0.60}
    assert pick_baseline(three, "best", True) == ("simple", 0.60)
    assert pick_baseline(three, "prompted", True) == ("few_shot", 0.55)
    assert pick_baseline(three, "simple", True) == ("simple", 0.60)
    assert pick_baseline({**three, "simple": 0.55}, "best", True) == ("simple", 0.55)  # tie: no LLM before shots
    assert pick_baseline({**three, "simple": None}, "simple", True) == ("zero_shot", 0.40)
    assert pick_baseline({**three, "simple": 0.2}, "best", False) == ("simple", 0.2)  # a loss: lowest


def test_gate_refuses_when_the_simple_baseline_wins_and_says_what_to_try():
    decision, used = gate_baselines(_evaluation(0.589), None, PromotionConfig(), unused_rows=2300)
    assert used == "simple" and not decision.promoted and len(decision.reasons) == 3
    base = decision.reasons[0]
    assert base.startswith("FAIL base: macro_f1 0.5140 >= simple baseline (tf-idf + logistic regression "
                           "(class-weighted)) 0.5890 + min_delta 0.01 = 0.5990 (delta -0.0750)")
    # (train.epochs joins train.max_steps where the config has it)
    assert ("(delta -0.0750); the simple baseline beats fine-tuning here: train on the 2300 kept rows "
            "data.max_train_rows left out (data.max_train_rows: null uses every one), train longer "
            "(train.max_steps") in base
    assert base.endswith(") or at another train.learning_rate, try a larger model.base; or ship the simple baseline")
    none_left, _ = gate_baselines(_evaluation(0.589), None, PromotionConfig(), unused_rows=0)
    assert "add labelled rows to data.source (data.max_train_rows left none out)" in none_left.reasons[0]
    # the prompted baselines alone would pass it
    passed, prompted = gate_baselines(_evaluation(0.589), None, PromotionConfig(baseline="prompted"))
    assert passed.promoted and prompted == "few_shot" and "simple baseline" not in passed.reasons[0]
    # not measured (not applicable): the best prompted one
    assert gate_baselines(_evaluation(None), None, PromotionConfig())[1] == "few_shot"


def test_gate_reasons_carry_the_collapse_warning():
    warning = "collapse: 100% of the fine-tuned answers are 'ham' (20 of 20 rows), against 85% of the gold answers"
    decision, _ = gate_baselines(_evaluation(0.2, tuned=0.9, warnings=[warning]), None, PromotionConfig())
    assert decision.promoted  # a warning, not a refusal: the numbers decide
    assert decision.reasons[0].startswith("PASS base:") and decision.reasons[0].endswith(f"; warning: {warning}")
    assert [r.split(":")[0] for r in decision.reasons] == ["PASS base", "PASS champion", "PASS forgetting"]


def test_a_forgetting_refusal_adds_the_methods_own_advice():
    from llmft.train.methods import get_method

    advice = get_method("dpo").forgetting_advice
    assert "train.method=orpo" in advice and not get_method("lora").forgetting_advice
    forgot, _ = gate_baselines(_evaluation(0.2, tuned=0.9), 0.5, PromotionConfig(), forgetting_advice=advice)
    assert not forgot.promoted and forgot.reasons[2].startswith("FAIL forgetting: probe accuracy drop +0.5000")
    assert forgot.reasons[2].endswith(f"or allow more (promotion.max_forgetting); {advice}")
    assert advice not in forgot.reasons[0] + forgot.reasons[1]
    kept, _ = gate_baselines(_evaluation(0.2, tuned=0.9), 0.05, PromotionConfig(), forgetting_advice=advice)
    assert kept.promoted and advice not in " ".join(kept.reasons)


# ---- the stage function, on split DataFrames ----

def test_stage_fits_on_the_users_training_rows_only():
    mixed = pd.DataFrame([{**r, "origin": "data"} for r in TRAIN]
                         + [{"text": "free prize lunch today", "label": "ham", "origin": "mix"}] * 50)
    rows = pd.DataFrame(TEST)
    spec = TaskSpec(name="classification", reason="test")
    split = SplitInfo(rows={"train": 14, "validation": 0, "test": 3}, unused=0, labels=["ham", "spam"])
    found = evaluate_simple_baseline(mixed, pd.DataFrame(columns=["text", "label"]), rows, spec, split, None)
    assert found.available and found.role == "simple_baseline" and found.outputs == ["spam", "ham", "ham"]
    assert found.identity == "tf-idf + logistic regression (class-weighted)"
    assert found.note.startswith("tf-idf + logistic regression (class-weighted): 14 training rows")
    pairs = pd.DataFrame([_pair("a", "bb")])
    none = evaluate_simple_baseline(pairs, pairs, pairs, TaskSpec(name="preference", reason="t"), split,
                                    "rougeL")
    assert not none.available and none.note.startswith("not applicable: the longer-answer rule")


# ---- where it shows: compare (MLflow), the console table, the model card ----

def test_compare_logs_the_simple_baseline_and_warns_of_a_collapse(tmp_path):
    import mlflow

    from llmft.config_files import load_config
    from llmft.contracts import ModelEvaluation
    from llmft.evaluate.stage import compare
    from llmft.tasks import classification

    refs = ["ham"] * 8 + ["spam"] * 2
    rows = pd.DataFrame([{"text": f"t{i}", "label": r, "messages": "[]", "response": ""} for i, r in enumerate(refs)])

    def model(role: str, outputs: list[str]) -> ModelEvaluation:
        return ModelEvaluation(role=role, outputs=outputs, metrics=classification.score(outputs, refs, ["ham", "spam"]),
                               extras={"labels": ["ham", "spam"]})

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(None, ["eval.genai_table_rows=0"]).eval
    off = ModelEvaluation(role="champion", available=False, note="no current champion")
    simple = model("simple_baseline", refs).model_copy(update={"identity": "tf-idf", "note": "tf-idf: 10 rows"})
    with mlflow.start_run() as run:
        evaluation = compare(model("base", ["spam"] * 10), off.model_copy(update={"role": "base_few_shot"}),
                             model("finetuned", ["ham"] * 10), off, rows,
                             EvalSample(n=10, of=10, seed=None, how="whole test split"),
                             TaskSpec(name="classification", reason="t"), cfg.reporting(), cfg.scoring(64),
                             simple)
    assert evaluation.metrics["simple_baseline"]["macro_f1"] == 1.0 and evaluation.simple_baseline_method == "tf-idf"
    assert evaluation.warnings == ["collapse: 100% of the fine-tuned answers are 'ham' (10 of 10 rows), against 80% "
                                   "of the gold answers: it answers the majority, not the task"]
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.metrics["simple_baseline/macro_f1"] == 1.0
    assert logged.tags["evaluation.simple_baseline"] == "tf-idf: 10 rows" and "collapse" in logged.tags[
        "evaluation.warnings"]


def summary_dict() -> dict:
    """A classification run's summary as the closing table reads it (also tests/test_baselines.py's)."""
    return {
        "metrics": {"base": {"macro_f1": 0.2, "eval_loss": 1.5}, "base_few_shot": {"macro_f1": 0.4, "eval_loss": 1.2},
                    "simple_baseline": {"macro_f1": 0.6, "eval_loss": 0.9},
                    "finetuned": {"macro_f1": 0.5, "eval_loss": 0.3}, "champion": None},
        "primary_metric": "macro_f1", "higher_is_better": True, "champion_evaluated": None,
        "zenml_run_id": "z", "mlflow_run_id": "r", "tracking_uri": "file:///m",
        "baseline_used": "simple", "few_shot": {"k": 3.0, "used_mean": 1.5, "used_min": 0.0, "used_max": 3.0},
        "simple_baseline_method": "tf-idf + logistic regression (class-weighted)",
        "simple_baseline_note": "tf-idf + logistic regression (class-weighted): 70 training rows; C=1",
        "warnings": ["collapse: 95% of the fine-tuned answers are 'ham'"],
        "eval_sample": {"n": 20, "of": 20, "seed": None, "how": "whole test split"}, "task": "classification",
        "task_reason": "r",
        "dataset": {"fingerprint": "f", "source": "d.jsonl", "task": "classification", "task_reason": "r",
                    "rows_in": 100, "rows": {"train": 70, "validation": 10, "test": 20}, "unused": 0,
                    "duplicates_removed": 0, "rejected": 0, "truncated": 3, "warnings": [], "export_dir": "/x",
                    "verdict": "passed"},
        "champion_note": "no current champion",
        "forgetting": {"applicable": False, "reason": "a classifier", "max_allowed": 0.05},
        "registered_model": {"name": "m", "version": "1", "uri": "models:/m/1"}, "promoted": False,
        "promotion_reasons": ["FAIL base: x"],
        "deployment": {"deployed": False, "reason": "off"}, "cached_steps": [], "wall_seconds": 1.0}


def test_console_table_has_the_simple_column_and_deltas_against_it():
    from llmft.report import finetune_table

    table = finetune_table(summary_dict(), "mlflow ui")
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert header.split()[1:7] == ["base", "base", "few-shot", "simple", "fine-tuned", "delta"]
    row = next(line for line in table.splitlines() if line.startswith("macro_f1 *")).split()
    assert row[2:7] == ["0.2000", "0.4000", "0.6000", "0.5000", "-0.1000"]  # delta against the simple baseline
    assert "delta: fine-tuned minus the simple baseline" in table
    assert "simple baseline (no LLM, fitted on the training split): tf-idf + logistic regression" in table
    assert "warning: collapse: 95% of the fine-tuned answers are 'ham'" in table


def test_model_card_shows_the_simple_baseline():
    from llmft.config_files import load_config
    from llmft.contracts import DatasetInfo, Forgetting, PromotionDecision, TrainingResult
    from llmft.registry import model_card

    cfg = load_config(None)
    evaluation = _evaluation(0.589).model_copy(update={"simple_baseline_note": "tf-idf: 300 training rows"})
    dataset = DatasetInfo(fingerprint="abc", source="d.jsonl", task="classification", task_reason="r", rows_in=50,
                          duplicates_removed=0, rejected=0, rows={"train": 30, "validation": 5, "test": 15}, unused=0,
                          export_dir="/x", verdict="passed")
    training = TrainingResult(method="lora", steps=10, train_loss=0.5, first_loss=1.0, last_loss=0.2,
                              validation_loss=0.3, best_validation_loss=0.3, stopped_early=False,
                              resumed_from_step=None, tokens=100, padding_fraction=0.0, tokens_per_second=10.0,
                              wall_seconds=1.0, trainable_parameters=1, total_parameters=2)
    decision, used = gate_baselines(evaluation, None, PromotionConfig())
    card = model_card.render("m", "3", TaskSpec(name="classification", reason="r"), cfg.model.base, dataset, training,
                             cfg.train, evaluation, Forgetting(applicable=False, reason="n/a", max_allowed=0.1),
                             PromotionDecision(promoted=False, reasons=decision.reasons, baseline_used=used), 72)
    assert "| metric | base | base few-shot | simple (no LLM) | fine-tuned |" in card
    assert "| macro_f1 (primary) | 0.3000 | 0.4000 | 0.5890 | 0.5140 |" in card
    assert "Simple baseline (no language model, fitted on the training split, same test rows): tf-idf: 300" in card
    assert "compared with the simple baseline (promotion.baseline)" in card and "FAIL base: macro_f1 0.5140" in card


def test_the_advice_names_the_time_budget_when_it_cut_training_short():
    """BBC News on 2 cores: 41 steps, 0.11 epochs, before the 20-minute budget stopped training."""
    cut, _ = gate_baselines(_evaluation(0.978, tuned=0.936), None, PromotionConfig(), epochs_seen=0.11)
    assert cut.reasons[0].startswith("FAIL base") and "training saw 0.11 epochs" in cut.reasons[0]
    assert "raise train.max_minutes" in cut.reasons[0]
    whole, _ = gate_baselines(_evaluation(0.978, tuned=0.936), None, PromotionConfig(), epochs_seen=1.0)
    assert "train.max_minutes" not in whole.reasons[0] and "train.epochs" in whole.reasons[0]
