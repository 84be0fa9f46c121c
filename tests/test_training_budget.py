"""All the data, sized to a budget: `train.max_steps: auto` from `train.epochs` and the row count, cut to
`train.max_minutes` at the measured speed; the plan line; `epochs_seen` in the result and the summary."""

import json
import time
from pathlib import Path

import pytest

from llmft.chat_format import build_messages, encode_messages
from llmft.config import ConfigError
from llmft.config_files import load_config
from llmft.report import TRAIN_KEYS, training_lines
from llmft.train.budget import (
    FILL,
    STEP_OVERHEAD,
    budget_note,
    budget_steps,
    checkpoint_max_steps,
    epoch_steps,
    example_tokens,
    measure_tokens_per_second,
    plan_training,
    time_passes,
    timing_batch,
)
from llmft.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def _train_cfg(*overrides: str):
    return load_config(None, list(overrides)).train


# ---- the schema ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("precision", "autocast"), [("fp32", False), ("bf16", True)])
def test_the_speed_is_timed_in_the_arithmetic_training_will_use(precision: str, autocast: bool):
    """On a CPU the Trainer trains bf16 under autocast; the timing passes must too, or a bf16 run plans
    fp32's slower speed and stops at a fraction of its budget."""
    import contextlib

    import torch

    seen = []

    class Timed:  # the parts of a Trainer the measurement uses
        model = torch.nn.Linear(4, 1)

        def _prepare_inputs(self, batch):
            return batch

        def compute_loss_context_manager(self):
            return contextlib.nullcontext()

        def compute_loss(self, model, inputs):
            seen.append(torch.is_autocast_enabled("cpu"))
            return model(torch.ones(len(inputs), 4)).sum()

    examples = [{"input_ids": [0] * 8} for _ in range(4)]
    cfg = _train_cfg(f"train.precision={precision}")
    speed = measure_tokens_per_second(Timed(), lambda batch: batch, examples, cfg)
    assert speed > 0 and seen == [autocast, autocast]


def test_all_rows_by_default_and_auto_steps_accepted():
    cfg = load_config(None)
    assert cfg.data.max_train_rows is None  # every kept training row unless capped
    assert (cfg.train.epochs, cfg.train.max_minutes) == (1.0, 20.0)
    assert load_config(None, ["train.max_steps=auto"]).train.max_steps == "auto"
    assert load_config(None, ["train.max_steps=7"]).train.max_steps == 7  # ints keep working
    for bad in ("0", "-3", "2.5", "autox", "true"):
        with pytest.raises(ConfigError, match=r"--set train.max_steps: .*whole number of steps.*or auto"):
            load_config(None, [f"train.max_steps={bad}"])
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(None, ["train.epochs=0"])
    assert load_config(None, ["train.max_minutes=null"]).train.max_minutes is None


def test_the_default_config_uses_every_row_for_one_epoch_and_the_classify_demo_keeps_its_cap():
    own = load_config(ROOT / "configs" / "finetune.yaml")
    assert own.data.max_train_rows is None
    assert (own.train.max_steps, own.train.epochs, own.train.max_minutes) == ("auto", 1.0, 20.0)
    demo = load_config(ROOT / "configs" / "classify.yaml")
    assert demo.data.max_train_rows == 300 and demo.train.max_steps == 40


# ---- the arithmetic -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("epochs", "rows", "batch", "accumulation", "processes", "steps"), [
    (1.0, 2345, 4, 1, 1, 587),  # ceil(2345 / 4)
    (1.0, 2344, 4, 1, 1, 586),
    (2.0, 300, 8, 1, 1, 75),
    (0.5, 1000, 4, 2, 1, 63),  # ceil(500 / 8)
    (1.0, 1000, 4, 1, 2, 125),  # two processes share each step
    (1.0, 3, 8, 1, 1, 1),  # never zero
])
def test_epoch_steps(epochs, rows, batch, accumulation, processes, steps):
    assert epoch_steps(epochs, rows, batch, accumulation, processes) == steps


def test_budget_steps_fill_the_budget_with_training_and_validation():
    # 20 min at 2 s a step: 90% of 1200 s -> 540 steps
    assert budget_steps(1200, 2.0) == int(FILL * 1200 / 2.0) == 540
    # a 10 s validation every 20 steps adds 0.5 s a step
    assert budget_steps(1200, 2.0, eval_seconds=10.0, eval_every=20) == int(FILL * 1200 / 2.5) == 432
    assert budget_steps(1, 100.0) == 1  # at least one step


def test_auto_plan_steps_tokens_minutes():
    cfg = _train_cfg("train.max_steps=auto", "train.batch_size=4", "train.eval_steps=null")
    tokens = [100] * 2000  # 2000 rows of 100 tokens
    plan = plan_training(cfg, tokens, validation_rows=0, tokens_per_second=1000.0)
    assert (plan.wanted_steps, plan.steps, plan.capped) == (500, 500, False)
    assert plan.tokens == 500 * 4 * 100
    # a step is 400 tokens at 1000 tokens/s = 0.4 s of passes, 0.5 s with the step's overhead; 500 steps = 250 s
    assert STEP_OVERHEAD == 1.25
    assert plan.minutes == pytest.approx(500 * 0.4 * STEP_OVERHEAD / 60)
    assert plan.epochs == pytest.approx(1.0)
    assert plan.budget_seconds == 1200


def test_time_budget_cuts_auto_steps_and_says_why():
    cfg = _train_cfg("train.max_steps=auto", "train.batch_size=4", "train.eval_steps=null", "train.max_minutes=1",
                     "train.epochs=2")
    plan = plan_training(cfg, [100] * 2000, validation_rows=0, tokens_per_second=1000.0)
    # 0.5 s a step; 90% of 60 s -> 108 of the 1000 steps two epochs want
    assert (plan.wanted_steps, plan.steps, plan.capped) == (1000, 108, True)
    assert plan.epochs == pytest.approx(108 * 4 / 2000)
    assert plan.minutes <= 1.0
    lines = plan.lines()
    assert len(lines) == 2
    assert lines[0].startswith("training plan: 2,000 rows x 2 epochs = 1000 steps of 4 x 1 accumulation; 108 steps "
                               "fit the budget (0.22 epochs)")
    assert "1,000 tokens/s measured here" in lines[0] and "budget 1 min, train.max_minutes" in lines[0]
    assert "fits 108 of the 1000 steps of train.epochs=2" in lines[1] and "raise train.max_minutes" in lines[1]
    assert budget_note(plan, None, 50.0, 0.22) == plan.cap_reason()


def test_validation_counts_against_the_budget():
    base = ["train.max_steps=auto", "train.batch_size=4", "train.max_minutes=1"]
    quiet = plan_training(_train_cfg(*base, "train.eval_steps=null"), [100] * 2000, 400, 1000.0)
    checked = plan_training(_train_cfg(*base, "train.eval_steps=10"), [100] * 2000, 400, 1000.0)
    # a validation: 400 rows x 100 tokens / 1000 tokens/s x 1/3 = 13.3 s every 10 steps -> 1.83 s a step
    assert checked.steps == int(FILL * 60 / (0.5 + 40 / 3 / 10)) < quiet.steps


def test_explicit_steps_are_never_cut_by_the_budget():
    cfg = _train_cfg("train.max_steps=60", "train.batch_size=4", "train.max_minutes=1", "train.eval_steps=null")
    plan = plan_training(cfg, [100] * 300, 0, tokens_per_second=10.0)  # 60 steps would take 50 min
    assert (plan.steps, plan.capped, plan.budget_minutes) == (60, False, None)
    assert plan.lines() == ["training plan: 300 rows, 60 steps of 4 x 1 accumulation (train.max_steps) = 0.80 "
                            "epochs, ~24k tokens, ~50.0 min at 10 tokens/s measured here"]


def test_a_resumed_auto_run_keeps_its_plan(tmp_path: Path):
    checkpoint = tmp_path / "checkpoint-20"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"max_steps": 77, "global_step": 20}))
    assert checkpoint_max_steps(str(checkpoint)) == 77
    assert checkpoint_max_steps(None) is None and checkpoint_max_steps(str(tmp_path / "nothing")) is None
    cfg = _train_cfg("train.max_steps=auto", "train.eval_steps=null")
    plan = plan_training(cfg, [10] * 1000, 0, tokens_per_second=5.0, resumed_steps=77)  # slower now: kept
    assert plan.steps == 77 and "resuming a run planned for 77 steps" in plan.lines()[0]


def test_timing_batch_and_passes():
    examples = [{"input_ids": [0] * n} for n in (5, 1, 9, 3, 7, 2, 8)]
    assert [example_tokens(e) for e in timing_batch(examples, 3)] == [3, 5, 7]  # around the median
    assert len(timing_batch(examples[:2], 4)) == 2
    assert example_tokens({"input_ids": [1, 2], "rejected_input_ids": [3, 4, 5]}) == 5  # both answers of a pair
    calls = []

    def slow_first():
        time.sleep(0.05 if not calls else 0.0)
        calls.append(1)

    assert time_passes(slow_first) < 0.04 and len(calls) == 2  # the faster pass: the first pays one-off costs


def test_summary_records_epochs_seen_and_budget():
    assert {"epochs_seen", "budget_note", "planned_steps", "plan", "class_weights"} <= set(TRAIN_KEYS)
    assert training_lines({}) == []  # a summary from before
    lines = training_lines({"steps": 135, "epochs_seen": 0.27, "budget_note": "the 1-min budget ...",
                            "class_weights": {"ham": 0.57, "spam": 3.9}})
    assert lines == ["training: 135 steps, 0.27 epochs of the training rows; the 1-min budget ...",
                     "class weights (train.class_weights): ham 0.57, spam 3.9"]
    kept = training_lines({"steps": 945, "epochs_seen": 1.0, "kept_step": 720})
    assert kept == ["training: 945 steps, 1.00 epochs of the training rows; the weights of step 720 kept (lowest "
                    "validation loss, train.keep_best)"]
    assert "kept_step" in TRAIN_KEYS and training_lines({"steps": 9, "epochs_seen": 1.0, "kept_step": 9}) == [
        "training: 9 steps, 1.00 epochs of the training rows"]


# ---- real training on the tiny model ------------------------------------------------------------------------

LISTINGS = [("Lumora rain jacket | navy blue | nylon | Size M | $79.99", '{"brand": "Lumora", "color": "navy blue"}'),
            ("Halden table lamp, teal, ceramic, only $34.00", '{"brand": "Halden", "color": "teal"}'),
            ("Corvo desk chair, black mesh", '{"brand": "Corvo", "color": "black"}')]


def _examples(tokenizer, n: int):
    return [encode_messages(tokenizer, build_messages("Extract brand and color as JSON.", p, r))
            for p, r in (LISTINGS * n)[:n]]


def test_auto_trains_the_computed_steps(tiny_model_path: str, tokenizer, tmp_path: Path, caplog):
    examples = _examples(tokenizer, 10)
    cfg = _train_cfg("train.max_steps=auto", "train.epochs=1.5", "train.batch_size=4", "train.eval_steps=null",
                     "train.warmup_ratio=0")
    with caplog.at_level("INFO", logger="llmft"):
        result = train(tiny_model_path, examples, [], cfg, tmp_path, log_to_mlflow=False)
    assert result.planned_steps == result.steps == 4  # ceil(1.5 x 10 / 4)
    assert result.epochs_seen == pytest.approx(1.5, abs=0.11)  # 4 steps of 4 from 10 rows (a short last batch)
    assert result.budget_note is None and result.class_weights is None
    plan = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training plan:")]
    assert len(plan) == 1 and plan[0] == result.plan
    assert plan[0].startswith("training plan: 10 rows x 1.5 epochs = 4 steps of 4 x 1 accumulation, ~")
    assert "tokens/s measured here (budget 20 min, train.max_minutes)" in plan[0]


def test_budget_stop_during_training_is_reported(tiny_model_path: str, tokenizer, tmp_path: Path):
    examples = _examples(tokenizer, 8)
    # a budget far below one step: the plan keeps at least one step, the stop then says the budget ran out
    cfg = _train_cfg("train.max_steps=auto", "train.epochs=4", "train.batch_size=4", "train.eval_steps=null",
                     "train.max_minutes=0.000001")
    result = train(tiny_model_path, examples, [], cfg, tmp_path, log_to_mlflow=False)
    assert result.planned_steps == 1 and result.steps == 1
    assert result.epochs_seen == pytest.approx(0.5)
    assert "fits 1 of the 8 steps of train.epochs=4" in result.budget_note


def test_time_stop_inside_training_when_the_machine_is_slower_than_measured(tiny_model_path: str, tokenizer,
                                                                            tmp_path: Path, monkeypatch):
    import llmft.train.loop as loop

    # the measurement says the whole epoch fits; the run then finds the budget spent after its first step
    monkeypatch.setattr(loop, "measure_tokens_per_second", lambda *args: 1e12)
    cfg = _train_cfg("train.max_steps=auto", "train.batch_size=4", "train.eval_steps=null",
                     "train.max_minutes=0.000001")
    result = train(tiny_model_path, _examples(tokenizer, 12), [], cfg, tmp_path, log_to_mlflow=False)
    assert result.planned_steps == 3 and result.steps == 1
    assert result.epochs_seen == pytest.approx(4 / 12, abs=1e-3)
    assert result.budget_note.startswith("stopped for the time budget: ")
    assert "train.max_minutes=1e-06 used at step 1 of 3 (0.33 epochs)" in result.budget_note


def test_time_budget_callback_stops_at_the_budget():
    from types import SimpleNamespace

    from llmft.train.budget import time_budget_callback

    control = SimpleNamespace(should_training_stop=False)
    state = SimpleNamespace(global_step=3, max_steps=10)
    roomy = time_budget_callback(3600.0)
    roomy.on_train_begin(None, state, control)
    roomy.on_step_end(None, state, control)
    assert not control.should_training_stop and roomy.stopped_at is None
    spent = time_budget_callback(0.0)
    spent.on_train_begin(None, state, control)
    spent.on_step_end(None, state, control)
    assert control.should_training_stop and spent.stopped_at == 3
