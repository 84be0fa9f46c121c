"""Overfitting is flagged from the history: validation loss rising while training loss falls."""

from __future__ import annotations

from llmft.train.overfitting import overfitting_onset


def _history(train: list[float], validation: dict[int, float]) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = [{"step": i + 1, "loss": loss} for i, loss in enumerate(train)]
    rows += [{"step": step, "eval_loss": loss} for step, loss in validation.items()]
    return sorted(rows, key=lambda r: r["step"])


def test_rising_validation_with_falling_training_loss_is_flagged_at_its_start() -> None:
    train = [2.0, 1.6, 1.3, 1.1, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2]
    validation = {2: 1.8, 4: 1.5, 6: 1.6, 8: 1.7, 10: 1.9}
    assert overfitting_onset(_history(train, validation)) == 4


def test_no_flag_when_validation_keeps_falling_or_rises_once_or_training_also_rises() -> None:
    train = [2.0, 1.6, 1.3, 1.1, 0.9, 0.7, 0.5, 0.4]
    assert overfitting_onset(_history(train, {2: 1.8, 4: 1.5, 6: 1.4, 8: 1.3})) is None
    assert overfitting_onset(_history(train, {2: 1.8, 4: 1.5, 6: 1.6, 8: 1.4})) is None  # one noisy rise
    diverging = [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8]  # training loss rising too: divergence, not overfitting
    assert overfitting_onset(_history(diverging, {2: 1.8, 4: 1.9, 6: 2.2, 8: 2.6})) is None
    assert overfitting_onset(_history(train, {4: 1.5})) is None
