import json

import pytest

from llmft.extraction import parse_json_object, score
from llmft.registry import decide_promotion

GOLD = json.dumps({"brand": "Lumora", "color": "navy blue", "size": None, "price": 79.99})


def test_parse_tolerates_fences_and_chatter():
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object('Sure! {"a": 1} hope that helps') == {"a": 1}
    assert parse_json_object("no json here") is None
    assert parse_json_object("[1, 2]") is None


def test_scores_hand_checked():
    perfect = '{"brand": "lumora", "color": "Navy  Blue", "size": null, "price": "$79.99"}'
    half = '{"brand": "Lumora", "color": "red", "price": 70}'  # brand right, size null==missing, 2 wrong
    invalid = "The brand is Lumora"
    metrics = score([perfect, half, invalid], [GOLD] * 3)
    assert metrics["json_validity"] == pytest.approx(2 / 3)
    assert metrics["field_accuracy"] == pytest.approx((4 + 2 + 0) / 12)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_score_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        score([], [])


def test_promotion_gate():
    assert decide_promotion(0.8, 0.1, 0.0)[0]
    assert not decide_promotion(0.1, 0.1, 0.0)[0]  # a tie is not an improvement
    assert not decide_promotion(0.15, 0.1, 0.1)[0]
    promoted, reason = decide_promotion(0.9, 0.5, 0.18)
    assert promoted and "delta +0.4000" in reason
