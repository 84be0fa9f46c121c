"""Class imbalance handled by default for classification: balanced class weights from the training
split's label counts reach the sequence-classification loss, and are recorded."""

import math
from pathlib import Path

import pytest

from llmft.config_files import load_config
from llmft.contracts import TrainingResult
from llmft.loss import balanced_class_weights, class_weighted_loss
from llmft.train.loop import train


def test_balanced_by_default():
    assert load_config(None).train.class_weights == "balanced"
    assert load_config(None, ["train.class_weights=none"]).train.class_weights == "none"


def test_balanced_weights_from_counts():
    weights = balanced_class_weights([90, 10])
    assert weights == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])  # n / (k * count)
    assert weights == pytest.approx([0.5556, 5.0], abs=1e-4)
    # every class weighs the same in total, and the mean weight over the training rows is 1
    assert 90 * weights[0] == pytest.approx(10 * weights[1])
    assert (90 * weights[0] + 10 * weights[1]) / 100 == pytest.approx(1.0)
    assert balanced_class_weights([5, 5, 5]) == pytest.approx([1.0, 1.0, 1.0])  # balanced data: unchanged
    # a pinned label with no training rows: 1.0, and it does not take a share from the others
    assert balanced_class_weights([30, 10, 0]) == pytest.approx([40 / 60, 40 / 20, 1.0])


def test_weighted_loss_equals_the_hand_computed_value():
    import torch

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    weights = [0.5, 3.0]
    # row losses: -log softmax at the true class
    row = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(-1.0)), math.log(2.0)]
    w = [0.5, 3.0, 0.5]
    expected = sum(wi * li for wi, li in zip(w, row, strict=True)) / sum(w)
    assert float(class_weighted_loss(logits, labels, weights)) == pytest.approx(expected, rel=1e-6)
    plain = sum(row) / 3
    assert float(class_weighted_loss(logits, labels, [1.0, 1.0])) == pytest.approx(plain, rel=1e-6)
    assert float(torch.nn.functional.cross_entropy(logits, labels)) == pytest.approx(plain, rel=1e-6)


LABELS = ["ham", "spam"]
TEXTS = ["see you at lunch tomorrow", "the meeting moved to three", "can you call me back later",
         "thanks for the photos", "running ten minutes late", "dinner at seven works",
         "did you get my email", "happy birthday to you", "WIN a free prize now, text CLAIM",
         "URGENT your account won cash"]


def _examples(tokenizer):
    # 8 ham, 2 spam: imbalanced
    return [{"input_ids": tokenizer(text)["input_ids"], "label": int(i >= 8)} for i, text in enumerate(TEXTS)]


def _cfg(weights: str):
    return load_config(None, ["train.max_steps=2", "train.batch_size=10", "train.learning_rate=1e-3",
                              "train.warmup_ratio=0", "train.eval_steps=null", f"train.class_weights={weights}"]).train


def test_classification_training_uses_the_weights(tiny_model_path: str, tokenizer, tmp_path: Path, monkeypatch):
    import llmft.train.trainer as trainer

    seen = []
    real = trainer.class_weighted_loss

    def spy(logits, labels, weights):
        seen.append(list(weights))
        return real(logits, labels, weights)

    monkeypatch.setattr(trainer, "class_weighted_loss", spy)
    examples = _examples(tokenizer)
    weighted = train(tiny_model_path, examples, examples[:4], _cfg("balanced"), tmp_path / "w", labels=LABELS,
                     log_to_mlflow=False)
    assert weighted.class_weights == {"ham": 0.625, "spam": 2.5}  # 10 / (2 x 8), 10 / (2 x 2)
    assert seen and all(w == pytest.approx([0.625, 2.5]) for w in seen)  # training and validation batches
    calls = len(seen)
    plain = train(tiny_model_path, examples, examples[:4], _cfg("none"), tmp_path / "p", labels=LABELS,
                  log_to_mlflow=False)
    assert len(seen) == calls and plain.class_weights is None  # none: the model's own unweighted loss
    # same seed, same first batch (all ten rows): only the weighting differs
    assert weighted.first_loss != pytest.approx(plain.first_loss, rel=1e-4)


def test_weights_reach_the_summary_and_mlflow(tmp_path: Path):
    import mlflow

    from llmft.report import TRAIN_KEYS
    from llmft.train.stage import log_plan_and_weights

    assert "class_weights" in TRAIN_KEYS
    result = TrainingResult(method="lora", steps=2, train_loss=1.0, first_loss=1.0, last_loss=0.9,
                            validation_loss=None, best_validation_loss=None, stopped_early=False,
                            resumed_from_step=None, tokens=10, padding_fraction=0.0, tokens_per_second=1.0,
                            wall_seconds=1.0, trainable_parameters=1, total_parameters=2, planned_steps=2,
                            epochs_seen=2.0, class_weights={"ham": 0.625, "spam": 2.5})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            log_plan_and_weights(result)
        params = mlflow.get_run(run.info.run_id).data.params
    finally:
        mlflow.set_tracking_uri("")
    assert params["train.class_weight_values"] == '{"ham": 0.625, "spam": 2.5}'
    assert params["train.steps_planned"] == "2"


def test_a_classifier_keeps_the_weights_of_its_best_validation_macro_f1(tiny_model_path: str, tokenizer,
                                                                        tmp_path: Path):
    """Validation reports macro-F1 from the head's logits at every evaluation; the kept step is its best."""
    examples = _examples(tokenizer)
    cfg = load_config(None, ["train.max_steps=6", "train.batch_size=4", "train.learning_rate=5e-3",
                             "train.warmup_ratio=0", "train.eval_steps=1"]).train
    result = train(tiny_model_path, examples, examples, cfg, tmp_path / "out", labels=LABELS, log_to_mlflow=False)
    evals = [h for h in result.history if "eval_loss" in h]
    assert len(evals) >= 6 and all(0.0 <= h["eval_macro_f1"] <= 1.0 and "eval_accuracy" in h for h in evals)
    during = evals[:6]
    best = max(h["eval_macro_f1"] for h in during)
    first_best = next(h for h in during if h["eval_macro_f1"] == best)
    assert result.kept_step == first_best["step"]
    assert result.kept_by == f"highest validation macro-F1 {best:.4f}"
    # here the loss kept falling after macro-F1 peaked: the lowest loss would have kept a later step
    assert min(during, key=lambda h: h["eval_loss"])["step"] > result.kept_step
