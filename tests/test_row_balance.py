"""Extraction with many entity-free rows: balanced loss weights between rows that state entities and rows
that state none (train.balance_empty_targets), and replay against forgetting (data.replay)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from llmft.chat_format import IGNORE_INDEX, PadToLongest
from llmft.config import DataConfig, MixSource, TrainConfig
from llmft.data import mix
from llmft.data.ingest import RawRow
from llmft.data.shapes import Example, compact_entity_lists, to_examples
from llmft.loss import balanced_group_weights, masked_lm_loss, row_weighted_lm_loss
from llmft.tasks import get_task
from llmft.tasks.base import TaskSpec
from llmft.tasks.extraction import instruction_for
from llmft.train.stage import balance_weights

EMPTY = json.dumps({"person": [], "location": []})
FULL = json.dumps({"person": ["Ada"], "location": []})


def test_extraction_groups_entity_free_rows_apart_from_the_rest() -> None:
    task = get_task("extraction")
    assert task.balance_groups([EMPTY, FULL, EMPTY]) == ["empty", "states", "empty"]
    assert task.balance_groups([FULL, FULL]) is None  # nothing to balance
    assert task.balance_groups(['{"brand": "Lumora", "color": null}', '{"brand": null}']) is None  # not lists
    assert get_task("chat").balance_groups(["hi", "there"]) is None


def test_balanced_group_weights_even_out_groups_and_keep_the_mean_at_one() -> None:
    groups = ["empty"] * 6 + ["states"] * 2
    weights = balanced_group_weights(groups)
    assert weights == pytest.approx({"empty": 8 / (2 * 6), "states": 8 / (2 * 2)})
    assert sum(weights[g] for g in groups) / len(groups) == pytest.approx(1.0)
    assert 6 * weights["empty"] == pytest.approx(2 * weights["states"])  # each group weighs the same in total


def test_balance_weights_apply_to_extraction_rows_only_when_balanced() -> None:
    frame = pd.DataFrame({"response": [EMPTY, EMPTY, EMPTY, FULL]})
    spec = TaskSpec(name="extraction", reason="test")
    rows, per_group = balance_weights(frame, spec, TrainConfig(balance_empty_targets=True))
    assert per_group == {"empty": pytest.approx(0.6667, abs=1e-4), "states": 2.0}
    assert rows == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    assert balance_weights(frame, spec, TrainConfig()) == (rows, per_group)  # on by default (measured on WNUT16)
    assert balance_weights(frame, spec, TrainConfig(balance_empty_targets=False)) == ([], {})
    chat = TaskSpec(name="chat", reason="test")
    assert balance_weights(frame, chat, TrainConfig(balance_empty_targets=True)) == ([], {})


def test_the_collator_carries_row_weights_only_when_every_row_has_one() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3], "weight": 0.5},
            {"input_ids": [4, 5], "labels": [IGNORE_INDEX, 5], "weight": 2.0}]
    batch = PadToLongest(0)(rows)
    assert batch["weight"].tolist() == [0.5, 2.0] and batch["labels"].tolist()[1] == [IGNORE_INDEX, 5, IGNORE_INDEX]
    assert "weight" not in PadToLongest(0)([{k: v for k, v in r.items() if k != "weight"} for r in rows])


def test_row_weighted_loss_scales_each_rows_token_losses(tiny_lm) -> None:
    model, _ = tiny_lm
    batch = PadToLongest(0)([{"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8]},
                             {"input_ids": [9, 10, 11], "labels": [IGNORE_INDEX, 10, 11]}])
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    with torch.no_grad():
        plain, count, _ = masked_lm_loss(model, *args)
        ones, count_w, _ = row_weighted_lm_loss(model, *args, torch.tensor([1.0, 1.0]))
        first_only, _, _ = row_weighted_lm_loss(model, *args, torch.tensor([1.0, 0.0]))
        second_only, _, _ = row_weighted_lm_loss(model, *args, torch.tensor([0.0, 3.0]))
    assert int(count) == int(count_w) == 4
    assert float(ones) == pytest.approx(float(plain), rel=1e-4)
    assert float(first_only) + float(second_only) / 3 == pytest.approx(float(plain), rel=1e-4)


def test_the_instruction_asks_for_empty_lists_when_the_targets_use_them() -> None:
    examples = [Example(where=f"f:{i}", shape="prompt_response",
                        messages=[{"role": "user", "content": text}, {"role": "assistant", "content": target}])
                for i, (text, target) in enumerate([("Ada went to Rome", FULL), ("nothing here", EMPTY)])]
    text = instruction_for(examples)
    assert "person is a list." in text and "Use an empty list for a key the text has nothing for." in text
    assert "null" not in text


def test_entity_list_targets_leave_their_empty_lists_out_by_default() -> None:
    assert compact_entity_lists(FULL) == '{"person": ["Ada"]}'
    assert compact_entity_lists(EMPTY) == "{}"
    assert compact_entity_lists('{"person": ["Ada"]}') is None  # nothing to drop
    assert compact_entity_lists('{"brand": "Lumora", "tags": []}') is None  # not every value a list
    assert compact_entity_lists("not json {") is None and compact_entity_lists("{broken") is None
    rows = [RawRow(where=f"f:{i}", data={"text": text, "entities": json.loads(target)})
            for i, (text, target) in enumerate([("Ada went to Rome", FULL), ("nothing here", EMPTY)])]
    dropped, _ = to_examples(rows, DataConfig())
    assert [e.target for e in dropped] == ['{"person": ["Ada"]}', "{}"]
    kept, _ = to_examples(rows, DataConfig(empty_lists="keep"))
    assert [json.loads(e.target) for e in kept] == [json.loads(FULL), json.loads(EMPTY)]
    text = instruction_for(dropped)
    assert "Leave out a type the text has none of; answer {} when it has none." in text
    assert "among person, each" in text and "is a list." not in text  # one sentence, not one per key
    # (a type no row names, location here, is not offered: nothing would teach it)
    assert get_task("extraction").balance_groups([e.target for e in dropped]) == ["states", "empty"]
    assert get_task("extraction").primary_for([{"response": e.target} for e in dropped]) == "entity_f1"


def test_replay_joins_generative_runs_only_and_never_classifiers_or_pairs() -> None:
    assert DataConfig().replay == 0.0  # opt-in: it kept WNUT16's probe but cost entity-F1, and did not keep the demo's
    data = DataConfig(replay=0.1)
    assert [(s.source, s.weight) for s in mix.with_replay(data, get_task("extraction"))] == [(mix.REPLAY_SOURCE, 0.1)]
    assert [s.source for s in mix.with_replay(data, get_task("chat"))] == [mix.REPLAY_SOURCE]
    assert mix.with_replay(data, get_task("classification")) == []
    assert mix.with_replay(data, get_task("preference")) == []
    assert mix.with_replay(DataConfig(replay=0), get_task("summarization")) == []
    own = DataConfig(mix=[MixSource(source=mix.REPLAY_SOURCE, weight=0.5)])
    assert [(s.source, s.weight) for s in mix.with_replay(own, get_task("chat"))] == [(mix.REPLAY_SOURCE, 0.5)]


def test_the_data_pipeline_mixes_replay_in_when_data_replay_is_set(pipeline_env: dict[str, str], tmp_path):
    """data.replay on its own (no data.mix) brings the mix step into the pipeline: its rows reach training."""
    import subprocess
    import sys

    from test_e2e import ROOT

    out = tmp_path / "data.json"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "--pipeline", "data", "--set", "data.replay=0.1",
                           "--summary", str(out)], cwd=ROOT, env=pipeline_env, text=True, capture_output=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    (replay,) = summary["dataset"]["extras"]
    assert replay["source"] == "builtin:general" and replay["used"] == round(0.1 * summary["dataset"]["rows"]["train"])
