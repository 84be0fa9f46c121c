"""Metrics on hand-checked examples, the forgetting probe's matching, the promotion gate, the model card."""

import json
import math

import pytest

from llmft.config import ConfigError, PromotionConfig
from llmft.config_files import load_config
from llmft.contracts import DatasetInfo, EvalSample, Evaluation, Forgetting, PromotionDecision, TrainingResult
from llmft.evaluate import text_metrics
from llmft.evaluate.forgetting import answer_matches, load_probe
from llmft.registry import model_card
from llmft.registry.promotion import decide
from llmft.tasks import classification, get_task, primary_metric
from llmft.tasks.base import TaskSpec
from llmft.tasks.extraction import parse_json_object, score

GOLD = json.dumps({"brand": "Lumora", "color": "navy blue", "size": None, "price": 79.99})


def test_parse_tolerates_fences_and_chatter():
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object('Sure! {"a": 1} hope that helps') == {"a": 1}
    assert parse_json_object("no json here") is None
    assert parse_json_object("[1, 2]") is None


def test_extraction_scores_hand_checked():
    perfect = '{"brand": "lumora", "color": "Navy  Blue", "size": null, "price": "$79.99"}'
    half = '{"brand": "Lumora", "color": "red", "price": 70}'  # brand right, size null==missing, 2 wrong
    invalid = "The brand is Lumora"
    metrics, rows = score([perfect, half, invalid], [GOLD] * 3)
    assert metrics["json_validity"] == pytest.approx(2 / 3)
    assert metrics["field_accuracy"] == pytest.approx((4 + 2 + 0) / 12)
    assert metrics["all_fields_correct"] == pytest.approx(1 / 3)
    assert [r["field_accuracy"] for r in rows] == [1.0, 0.5, 0.0]
    assert [r["json_valid"] for r in rows] == [1.0, 1.0, 0.0]


def test_extraction_precision_counts_invented_fields_and_empty_gold_rows():
    gold = ['{"PER": ["Ann"]}', "{}", '{"LOC": ["Rome"], "PER": ["Bo"]}']
    # row 1 right plus an invented LOC; row 2 states nothing, as its gold; row 3 gets LOC only
    preds = ['{"PER": ["Ann"], "LOC": ["Paris"]}', '{"ORG": null}', '{"LOC": ["rome"]}']
    metrics, rows = score(preds, gold)
    assert metrics["field_accuracy"] == pytest.approx(2 / 3)  # PER(1) + LOC(3) of 3 gold fields
    assert metrics["field_precision"] == pytest.approx(2 / 3)  # PER, LOC right; LOC(1) invented
    assert metrics["field_f1"] == pytest.approx(2 / 3)
    assert metrics["all_fields_correct"] == pytest.approx(1 / 3)  # only the empty row is wholly right
    assert [r["field_accuracy"] for r in rows] == [1.0, 1.0, 0.5]
    spurious, _ = score(['{"PER": ["X"]}'], ["{}"])
    assert spurious["all_fields_correct"] == 0.0 and spurious["field_precision"] == 0.0


def test_score_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        score([], [])
    with pytest.raises(ValueError):
        text_metrics.overlap(["a"], [])


def test_rouge_hand_checked():
    # "the cat on the mat" vs "the cat sat on the mat": 5 of 6 reference unigrams, all 5 predicted ones
    # -> P 1, R 5/6, F 10/11; bigrams: 3 of 4 predicted (the cat, on the, the mat), 3 of 5 reference -> F 2/3
    m, per_row = text_metrics.overlap(["the cat on the mat"], ["the cat sat on the mat"])
    assert m["rouge1"] == pytest.approx(10 / 11)
    assert m["rouge2"] == pytest.approx(2 / 3)
    assert m["rougeL"] == pytest.approx(10 / 11)  # LCS is the 5 predicted words
    assert per_row == [pytest.approx(10 / 11)]


def test_bleu_exact_match_and_wer_hand_checked():
    same, _ = text_metrics.overlap(["the quick brown fox jumps"], ["the quick brown fox jumps"])
    assert same["bleu"] == pytest.approx(1.0) and same["exact_match"] == 1.0 and same["wer"] == 0.0
    # BLEU needs 4-gram overlap: a two-word answer to a five-word reference scores 0
    short, _ = text_metrics.overlap(["the quick"], ["the quick brown fox jumps"])
    assert short["bleu"] == 0.0
    # exact match normalises whitespace only; WER: 1 substitution in row 1, 2 deletions in row 2 over 3+2 words
    m, _ = text_metrics.overlap(["a  x c", ""], ["a b c", "d e"])
    assert m["exact_match"] == 0.0
    assert m["wer"] == pytest.approx(3 / 5)
    m, _ = text_metrics.overlap(["a b c"], ["a  b c"])
    assert m["exact_match"] == 1.0


def test_perplexity_is_exp_of_loss():
    assert text_metrics.perplexity(math.log(2.0)) == pytest.approx(2.0)
    assert math.isinf(text_metrics.perplexity(1000.0))


def test_classification_metrics_hand_checked():
    labels = ["a", "b", "c"]
    predicted, reference = ["a", "a", "b", "c"], ["a", "b", "b", "c"]
    assert classification.confusion(predicted, reference, labels) == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    m = classification.score(predicted, reference, labels)
    assert m["accuracy"] == 0.75
    # a: P 1/2 R 1 F 2/3; b: P 1 R 1/2 F 2/3; c: P 1 R 1 F 1
    assert m["macro_precision"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["macro_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    per_class = classification.per_class(predicted, reference, labels)
    assert per_class["a"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1.0})
    assert per_class["b"]["recall"] == 0.5 and per_class["c"]["f1"] == 1.0


def test_probe_set_and_answer_matching():
    probe = load_probe()
    assert len(probe) >= 50
    assert len({p["question"] for p in probe}) == len(probe)
    assert answer_matches("The capital of France is Paris.", ["Paris"])
    assert not answer_matches("Parisian food is great", ["Paris"])  # whole words only
    assert answer_matches("There are 7 days.", ["7", "seven"])
    assert not answer_matches("seventy", ["7", "seven"])
    assert answer_matches("It is the blue whale!", ["blue whale"])


CFG = PromotionConfig(min_delta=0.05, max_forgetting=0.1)


def test_gate_passes_only_when_every_check_passes():
    ok = decide("field_accuracy", True, 0.8, 0.1, 0.7, "1", 0.02, CFG)
    assert ok.promoted and len(ok.reasons) == 3 and all(r.startswith("PASS") for r in ok.reasons)
    assert "champion v1 0.7000" in ok.reasons[1]
    # below base + min_delta
    assert not decide("field_accuracy", True, 0.12, 0.1, None, None, 0.0, CFG).promoted
    # worse than the re-measured champion
    weak = decide("field_accuracy", True, 0.6, 0.1, 0.7, "3", 0.0, CFG)
    assert not weak.promoted and weak.reasons[1].startswith("FAIL champion")
    # a tie with the champion is allowed
    assert decide("field_accuracy", True, 0.7, 0.1, 0.7, "3", 0.0, CFG).promoted
    # forgot too much
    forgot = decide("field_accuracy", True, 0.9, 0.1, None, None, 0.25, CFG)
    assert not forgot.promoted and forgot.reasons[2].startswith("FAIL forgetting")
    assert "data.replay" in forgot.reasons[2] and "data.replay" not in " ".join(forgot.reasons[:2])
    # no probe (classification) and no champion pass
    assert decide("macro_f1", True, 0.9, 0.3, None, None, None, CFG).promoted
    # champion comparison can be switched off
    assert decide("field_accuracy", True, 0.6, 0.1, 0.7, "3", 0.0,
                  PromotionConfig(min_delta=0.05, beat_champion=False)).promoted


def test_gate_lower_is_better():
    extraction = get_task("extraction")
    assert not extraction.higher_is_better("eval_loss") and not extraction.higher_is_better("wer")
    assert extraction.higher_is_better("rougeL")
    assert not get_task("summarization").higher_is_better("unsupported_content")
    assert decide("eval_loss", False, 0.2, 0.8, 0.3, "1", None, CFG).promoted
    assert not decide("eval_loss", False, 0.78, 0.8, None, None, None, CFG).promoted  # not 0.05 lower
    assert not decide("eval_loss", False, 0.4, 0.8, 0.3, "1", None, CFG).promoted


def test_gate_says_why_there_is_no_champion():
    note = "no comparable champion: task classification vs chat (champion v4)"
    decision = decide("rougeL", True, 0.5, 0.1, None, None, 0.0, CFG, champion_note=note)
    assert decision.promoted and decision.reasons[1] == f"PASS champion: {note}"


@pytest.mark.parametrize(("task", "primary"), [("chat", "rougeL"), ("summarization", "rougeLsum"),
                                               ("classification", "macro_f1"), ("extraction", "field_accuracy")])
def test_primary_metric_is_checked_against_reported_metrics(task: str, primary: str):
    assert primary_metric(get_task(task), None) == primary
    assert primary in get_task(task).metric_names
    assert primary_metric(get_task(task), "eval_loss") == "eval_loss"
    with pytest.raises(ConfigError, match=r"eval\.primary_metric .json_validity. is not reported"):
        primary_metric(get_task("chat"), "json_validity")


def test_model_card_has_data_metrics_decision_and_limitations():
    cfg = load_config(None)
    spec = TaskSpec(name="extraction", reason="inferred from responses", instruction="Extract the fields.")
    evaluation = Evaluation(
        task="extraction", primary_metric="field_accuracy", higher_is_better=True,
        sample=EvalSample(n=12, of=40, seed=0, how="seeded random sample"), champion_version="2",
        champion_note="champion v2 re-evaluated on this run's rows",
        metrics={"base": {"field_accuracy": 0.1, "eval_loss": 0.8}, "base_few_shot": {"field_accuracy": 0.3,
                                                                                      "eval_loss": 0.6},
                 "finetuned": {"field_accuracy": 0.8, "eval_loss": 0.1},
                 "champion": {"field_accuracy": 0.7, "eval_loss": 0.2}},
        few_shot={"k": 3.0, "used_mean": 2.5, "used_min": 1.0, "used_max": 3.0, "rows_with_all": 6.0})
    forgetting = Forgetting(applicable=True, questions=60, base=0.6, finetuned=0.58, drop=0.02, max_allowed=0.1)
    decision = decide("field_accuracy", True, 0.8, 0.3, 0.7, "2", 0.02, CFG, baseline="base few-shot (3 shots)")
    dataset = DatasetInfo(fingerprint="abc", source="d.jsonl", task="extraction", task_reason="r", rows_in=50,
                          duplicates_removed=3, rejected=1, rows={"train": 30, "validation": 5, "test": 11}, unused=0,
                          export_dir="/x", verdict="passed", warnings=["10.0% of rows were duplicates"])
    training = TrainingResult(method="lora", steps=10, train_loss=0.5, first_loss=1.0, last_loss=0.2,
                              validation_loss=0.3, best_validation_loss=0.3, stopped_early=False,
                              resumed_from_step=None, tokens=100, padding_fraction=0.0, tokens_per_second=10.0,
                              wall_seconds=1.0, trainable_parameters=1, total_parameters=2)
    card = model_card.render("m", "3", spec, cfg.model.base, dataset, training, cfg.train, evaluation, forgetting,
                             PromotionDecision(promoted=decision.promoted, reasons=decision.reasons,
                                               baseline_used="few_shot"), 72)
    assert card.startswith("# m v3")
    assert "| metric | base | base few-shot | fine-tuned | champion |" in card
    assert "fingerprint `abc`" in card and "| field_accuracy (primary) | 0.1000 | 0.3000 | 0.8000 | 0.7000 |" in card
    assert "3 training rows as worked examples" in card and "compared with the base few-shot" in card
    assert "PASS base: field_accuracy 0.8000 >= base few-shot (3 shots) 0.3000" in card
    assert "promoted to champion" in card and "PASS forgetting" in card and "## Known limitations" in card
    assert "12 test rows scored (seeded random sample, seed 0)" in card and "Extract the fields." in card
    assert "warning: 10.0% of rows were duplicates" in card
