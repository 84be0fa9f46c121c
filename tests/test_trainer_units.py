"""The training method registry, the module-level trainer and callbacks, and the steps of `train()`,
each on its own (the tiny model where a model is needed; no training runs here)."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import pytest
import torch

from llmft.chat_format import PadToLongest, build_messages, encode_messages
from llmft.config import TrainConfig
from llmft.config_files import load_config
from llmft.loss import class_weighted_loss, masked_lm_loss, row_weighted_lm_loss
from llmft.tasks import get_task
from llmft.train import loop
from llmft.train.budget import plan_training
from llmft.train.methods import (
    METHOD_NAMES,
    METHODS,
    ClassificationBatches,
    get_method,
)
from llmft.train.preference import PreferenceBatches
from llmft.train.trainer import (
    VALIDATION_MACRO_F1,
    EarlyStopping,
    LLMTrainer,
    Metrics,
    Progress,
    TokenCounter,
    classifier_validation_metrics,
)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*sets: str) -> TrainConfig:
    return load_config(None, list(sets)).train


# --- the registry --------------------------------------------------------------------------------------


def test_the_config_literal_lists_the_registry_names_in_order() -> None:
    # config.py's `train.method` literal and the registry cannot drift apart
    assert get_args(TrainConfig.model_fields["method"].annotation) == METHOD_NAMES == tuple(METHODS)
    assert all(get_method(name).name == name for name in METHOD_NAMES)


def test_unknown_method_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"train.method='sft' is not a training method; choose one of full, lora"):
        get_method("sft")


def test_each_entry_says_what_the_loop_asks() -> None:
    pairs = {name for name, m in METHODS.items() if m.needs_pairs}
    assert pairs == {"dpo", "orpo"} and all(METHODS[n].rows_per_example == 2 for n in pairs)
    assert {name for name, m in METHODS.items() if not m.selective_logits} == {"prompt_tuning"}
    assert {name for name, m in METHODS.items() if m.loads_four_bit(_cfg())} == {"qlora"}
    assert get_method("dpo").loads_four_bit(_cfg("train.preference_adapter=qlora"))  # follows its adapter
    assert not get_method("orpo").loads_four_bit(_cfg("train.preference_adapter=lora"))


def test_collators_follow_the_method_and_the_head() -> None:
    assert isinstance(get_method("lora").collator(0, classifier=False), PadToLongest)
    assert isinstance(get_method("full").collator(0, classifier=True), ClassificationBatches)
    assert isinstance(get_method("dpo").collator(0, classifier=False), PreferenceBatches)
    batch = ClassificationBatches(0)([{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": [8], "label": 0}])
    assert batch["labels"].tolist() == [1, 0] and batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]


def test_refusals_come_from_the_method() -> None:
    classification, chat = get_task("classification"), get_task("chat")
    assert "would not prepend the learned tokens" in get_method("prompt_tuning").refusal(classification)
    assert get_method("prompt_tuning").refusal(chat) is None
    assert all(get_method(n).refusal(classification) is None for n in METHOD_NAMES if n != "prompt_tuning")
    with pytest.raises(TypeError, match="does not train on pairs"):
        get_method("lora").pair_loss(None, {}, _cfg())


def test_the_registry_imports_neither_config_nor_torch() -> None:
    # so config.py can take its literal from METHOD_NAMES without an import cycle
    import subprocess
    import sys

    code = ("import sys, llmft.train.methods as m; assert 'torch' not in sys.modules; "
            "assert 'llmft.config' not in sys.modules, 'config imported'; print(m.METHOD_NAMES)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


def _method_branches(path: Path) -> list[int]:
    """Lines comparing something with a method name (`x == "dpo"`, `x in ("dpo", "orpo")`)."""
    names = set(METHOD_NAMES)

    def named(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(named(e) for e in node.elts)

    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Compare) and any(named(n) for n in (node.left, *node.comparators))]


def test_nothing_outside_the_registry_branches_on_method_names() -> None:
    found = {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / "llmft").rglob("*.py"))
             if p.name != "methods.py" and (lines := _method_branches(p))}
    assert found == {}, found


# --- the callbacks ----------------------------------------------------------------------------------


def test_token_counter_counts_real_and_padded_tokens() -> None:
    counter = TokenCounter()
    counter.add(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    counter.add(torch.tensor([[1, 0]]))
    assert (counter.tokens, counter.slots, counter.rows) == (6, 8, 3)


def test_metrics_keep_finite_numbers_with_throughput_on_rank_zero() -> None:
    counter = TokenCounter()
    metrics = Metrics(counter, log_to_mlflow=False)
    state = SimpleNamespace(global_step=3, is_world_process_zero=True)
    metrics.on_train_begin(None, state, None)
    counter.tokens = 120
    metrics.on_log(None, state, None, logs={"loss": 1.5, "grad_norm": float("nan"), "note": "x"})
    metrics.on_log(None, state, None, logs={"eval_loss": 2.0})
    assert [set(h) for h in metrics.history] == [{"step", "loss", "tokens_per_second", "tokens_seen", "train_seconds"},
                                                 {"step", "eval_loss"}]
    assert metrics.history[0]["tokens_seen"] == 120 and metrics.history[0]["tokens_per_second"] > 0
    metrics.on_log(None, SimpleNamespace(global_step=4, is_world_process_zero=False), None, logs={"loss": 1.0})
    assert len(metrics.history) == 2  # other ranks keep no history


def test_early_stopping_stops_after_patience_and_restores_the_best() -> None:
    model = torch.nn.Linear(2, 1)
    early = EarlyStopping(patience=2, min_delta=0.01)
    control = SimpleNamespace(should_training_stop=False)
    for step, loss in enumerate([1.0, 0.8, 0.795, 0.9], start=1):
        with torch.no_grad():
            model.weight.fill_(float(step))
        early.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={"eval_loss": loss}, model=model)
        assert control.should_training_stop == (step == 4)  # 0.795 is not better by more than min_delta
    assert early.stopped and early.best_step == 2 and early.kept(4) == (
        2, "lowest validation loss 0.8000 (restored when training ended)")
    early.restore_best(model)
    assert model.weight.tolist() == [[2.0, 2.0]]
    never = EarlyStopping(patience=None)
    never.on_evaluate(None, SimpleNamespace(global_step=1), control, metrics={"eval_loss": 1.0}, model=model)
    assert never.kept(7) == (7, "the final step") and not never.stopped


def test_a_classifier_keeps_its_highest_validation_macro_f1_not_its_lowest_loss() -> None:
    """Drug reviews: the lowest validation loss was a checkpoint answering one class for every row. A
    classifier's kept weights are those of its best validation macro-F1, whatever its loss did."""
    model = torch.nn.Linear(2, 1)
    keep = EarlyStopping(patience=None, keep_best=True, watched=VALIDATION_MACRO_F1)
    control = SimpleNamespace(should_training_stop=False)
    for step, (loss, f1) in enumerate([(1.3, 0.2), (1.2, 0.12), (1.4, 0.55), (1.5, 0.50)], start=1):
        with torch.no_grad():
            model.weight.fill_(float(step))
        keep.on_evaluate(None, SimpleNamespace(global_step=step), control,
                         metrics={"eval_loss": loss, "eval_macro_f1": f1}, model=model)
    assert keep.kept(4) == (3, "highest validation macro-F1 0.5500 (restored when training ended)")
    assert keep.kept_by() == "highest validation macro-F1 0.5500"
    keep.restore_best(model)
    assert model.weight.tolist() == [[3.0, 3.0]]
    patient = EarlyStopping(patience=1, min_delta=0.01, watched=VALIDATION_MACRO_F1)
    for step, f1 in enumerate([0.5, 0.505], start=1):  # not better by more than min_delta: stop
        patient.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={"eval_macro_f1": f1},
                            model=model)
    assert patient.stopped and patient.best_step == 1


def test_classifier_validation_metrics_score_the_logits_as_the_evaluation_does() -> None:
    import numpy as np

    from llmft.tasks.classification import score

    logits = np.array([[2.0, 0.1, 0.0], [0.0, 1.0, 0.2], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    gold = np.array([0, 1, 1, 2])
    got = classifier_validation_metrics(SimpleNamespace(predictions=(logits,), label_ids=gold))
    expected = score(["a", "b", "a", "c"], ["a", "b", "b", "c"], ["a", "b", "c"])
    assert got == pytest.approx({"macro_f1": expected["macro_f1"], "accuracy": 0.75})
    collapsed = classifier_validation_metrics(SimpleNamespace(predictions=np.tile([1.0, 0.0, 0.0], (4, 1)),
                                                              label_ids=gold))
    assert collapsed["macro_f1"] == pytest.approx((2 * 0.25 / 1.25) / 3)  # one class: its F1 only, over 3


def test_keep_best_restores_the_lowest_validation_loss_without_stopping() -> None:
    """train.keep_best (the default): an overfitting run ends on its best validation weights, not its last."""
    model = torch.nn.Linear(2, 1)
    keep = EarlyStopping(patience=None, keep_best=True)
    control = SimpleNamespace(should_training_stop=False)
    for step, loss in enumerate([1.0, 0.7, 0.9, 1.2, 1.5], start=1):
        with torch.no_grad():
            model.weight.fill_(float(step))
        keep.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={"eval_loss": loss}, model=model)
    assert not control.should_training_stop and not keep.stopped
    assert keep.kept(5) == (2, "lowest validation loss 0.7000 (restored when training ended)")
    assert all(v.device.type == "cpu" for v in keep.best_state.values())
    keep.restore_best(model)
    assert model.weight.tolist() == [[2.0, 2.0]]
    assert TrainConfig().keep_best


def test_progress_shows_the_latest_losses_on_rank_zero_only() -> None:
    bar = Progress()
    bar.on_train_begin(None, SimpleNamespace(is_world_process_zero=False, max_steps=4, global_step=0), None)
    assert bar.bar is None
    bar.on_train_begin(None, SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0), None)
    bar.on_step_end(None, SimpleNamespace(global_step=2), None)
    bar.on_log(None, None, None, logs={"loss": 1.23456, "learning_rate": 0.00012345, "eval_loss": 2.0})
    assert bar.bar.n == 2 and bar.shown == {"loss": "1.2346", "lr": "0.000123", "val_loss": "2.0000"}
    bar.on_train_end(None, None, None)
    assert bar.bar is None


# --- the trainer's losses ---------------------------------------------------------------------------------


def _trainer(model: Any, tmp_path: Path, method: str = "lora", **kwargs: Any) -> LLMTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True)
    return LLMTrainer(model=model, args=args, counter=TokenCounter(), method=get_method(method),
                      cfg=_cfg(f"train.method={method}"), **kwargs)


@pytest.fixture(scope="module")
def sft_batch(tokenizer) -> dict[str, Any]:
    rows = [encode_messages(tokenizer, build_messages("Answer.", p, r))
            for p, r in [("Capital of France?", "Paris."), ("2+2?", "The answer is 4.")]]
    return PadToLongest(tokenizer.pad_token_id)(rows)


def test_selective_and_row_weighted_losses(tiny_lm, sft_batch: dict[str, Any], tmp_path: Path) -> None:
    model, _ = tiny_lm
    trainer = _trainer(model, tmp_path)
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(sft_batch))
        total, count, _ = masked_lm_loss(model, **sft_batch)
        assert loss.item() == pytest.approx((total / count).item(), rel=1e-6)
        weighted = {**sft_batch, "weight": torch.tensor([0.5, 1.5])}
        expected, count, _ = row_weighted_lm_loss(model, sft_batch["input_ids"], sft_batch["attention_mask"],
                                                  sft_batch["labels"], weighted["weight"])
        assert trainer.compute_loss(model, weighted).item() == pytest.approx((expected / count).item(), rel=1e-6)
        assert trainer.compute_loss(model, dict(sft_batch), num_items_in_batch=torch.tensor(4)).item() == \
            pytest.approx(total.item() / 4, rel=1e-6)


def test_without_selective_logits_the_trainers_own_loss_drops_weights(tiny_lm, sft_batch, tmp_path: Path) -> None:
    model, _ = tiny_lm
    trainer = _trainer(model, tmp_path, "prompt_tuning", selective_logits=False)
    with torch.no_grad():
        plain = model(**sft_batch).loss
        weighted = trainer.compute_loss(model, {**sft_batch, "weight": torch.tensor([0.5, 1.5])})
    assert weighted.item() == pytest.approx(plain.item(), rel=1e-6)


def test_class_weighted_loss_for_a_classifier(tiny_model_path: str, tmp_path: Path) -> None:
    from llmft.base_model import load_model

    model = load_model(tiny_model_path, ["a", "b"]).eval()
    trainer = _trainer(model, tmp_path, "full", class_weights=[0.5, 2.0], selective_logits=False)
    batch = ClassificationBatches(0)([{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": [8, 9], "label": 0}])
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert loss.item() == pytest.approx(class_weighted_loss(logits, batch["labels"], [0.5, 2.0]).item(), rel=1e-6)
    assert outputs.logits.shape == (2, 2)


def test_pair_statistics_join_the_next_loss_log(tiny_lm, tokenizer, tmp_path: Path) -> None:
    model, _ = tiny_lm
    trainer = _trainer(model, tmp_path, "orpo")  # orpo needs no reference: the plain model will do
    pair = {"input_ids": [1, 5, 6, 2], "labels": [-100, -100, 6, 2], "rejected_input_ids": [1, 5, 7, 8, 2],
            "rejected_labels": [-100, -100, 7, 8, 2]}
    batch = PreferenceBatches(tokenizer.pad_token_id)([pair, pair])
    model.train()
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(model, batch)
    finally:
        model.eval()
    assert math.isfinite(loss.item()) and len(trainer.pending["train"]) == 1
    logs = {"loss": loss.item()}
    trainer.log(logs)
    assert {"rewards/margin", "rewards/accuracy", "logps/chosen"} <= set(logs) and not trainer.pending.get("train")
    with torch.no_grad():
        trainer.compute_loss(model, batch)  # an evaluation batch (the model is in eval mode)
    logs = {"eval_loss": 1.0}
    trainer.log(logs)
    assert "eval_rewards/margin" in logs and "rewards/margin" not in logs
    with torch.no_grad():
        trainer.compute_loss(model, batch)
    trainer.discard_statistics()
    assert trainer.pending == {}


# --- the steps of train() ---------------------------------------------------------------------------------


def test_class_weights_only_for_a_balanced_classifier() -> None:
    examples = [{"input_ids": [1], "label": int(i >= 8)} for i in range(10)]
    assert loop.class_weights_for(examples, ["ham", "spam"], _cfg()) == pytest.approx([0.625, 2.5])
    assert loop.class_weights_for(examples, ["ham", "spam"], _cfg("train.class_weights=none")) is None
    assert loop.class_weights_for(examples, None, _cfg()) is None


def test_build_model_marks_what_trains(tiny_model_path: str) -> None:
    model, trainable, total = loop.build_model(tiny_model_path, _cfg("train.method=lora"), get_method("lora"),
                                               None, None)
    assert 0 < trainable < 0.05 * total and not model.config.use_cache and hasattr(model, "peft_config")


def test_checkpoint_folder_resumes_or_starts_clean(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    for step, complete in ((2, True), (4, True), (6, False)):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert loop.checkpoint_folder(_cfg(), tmp_path, folder) == (folder, str(folder / "checkpoint-4"))
    assert loop.checkpoint_folder(_cfg(), tmp_path, None) == (tmp_path / "checkpoints", None)
    assert loop.checkpoint_folder(_cfg("train.resume=false"), tmp_path, folder) == (folder, None)
    assert not folder.exists()


def test_training_arguments() -> None:
    cfg = _cfg("train.batch_size=3", "train.warmup_ratio=0.1", "train.eval_steps=5")
    args = loop.training_arguments(cfg, Path("/tmp/x"), 40, evaluating=True, saving=False)
    assert (args.max_steps, args.warmup_steps, args.per_device_eval_batch_size) == (40, 4, 6)
    assert args.eval_strategy == "steps" and args.eval_steps == 5 and args.save_strategy == "no"
    args = loop.training_arguments(cfg, Path("/tmp/x"), 40, evaluating=False, saving=True)
    assert args.eval_strategy == "no" and args.save_strategy == "steps" and args.train_sampling_strategy == \
        "group_by_length"


def test_build_trainer_wires_the_callbacks(tiny_lm, tmp_path: Path) -> None:
    from transformers.trainer_callback import ProgressCallback

    from llmft.train.checkpoint_models import CheckpointModels

    model, _ = tiny_lm
    cfg = _cfg("train.method=prompt_tuning")
    args = loop.training_arguments(cfg, tmp_path, 2, evaluating=False, saving=False)
    rows = [{"input_ids": [1, 2], "labels": [1, 2]}]
    trainer, metrics, early = loop.build_trainer(model, args, cfg, get_method("prompt_tuning"), PadToLongest(0),
                                                 rows, [], classifier=False, class_weights=None, log_to_mlflow=True)
    kinds = {type(c) for c in trainer.callback_handler.callbacks}
    assert {Metrics, EarlyStopping, Progress, CheckpointModels} <= kinds and ProgressCallback not in kinds
    assert not trainer.selective_logits and trainer.eval_dataset is None and trainer.counter is metrics.counter
    assert early.patience is None and early in trainer.callback_handler.callbacks
    trainer, _, _ = loop.build_trainer(model, args, _cfg(), get_method("lora"), PadToLongest(0), rows, [],
                                       classifier=False, class_weights=None, log_to_mlflow=False)
    assert trainer.selective_logits and CheckpointModels not in {type(c) for c in trainer.callback_handler.callbacks}


def test_plan_steps_sets_the_measured_plan(tiny_lm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_lm
    monkeypatch.setattr(loop, "measure_tokens_per_second", lambda *args: 1e9)
    cfg = _cfg("train.max_steps=auto", "train.epochs=2", "train.batch_size=2", "train.warmup_ratio=0.25")
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}] * 8
    args = loop.training_arguments(cfg, tmp_path, 1, evaluating=False, saving=False)
    trainer, _, _ = loop.build_trainer(model, args, cfg, get_method("lora"), PadToLongest(0), rows, [],
                                       classifier=False, class_weights=None, log_to_mlflow=False)
    plan, budget = loop.plan_steps(trainer, PadToLongest(0), rows, 0, cfg, None)
    assert plan.steps == trainer.args.max_steps == 8 and trainer.args.warmup_steps == 2
    assert budget is not None and budget in trainer.callback_handler.callbacks


def _ran(history: list[dict[str, float]], *, stopped: bool = False, rows: int = 8, step: int = 4,
         method_cfg: TrainConfig | None = None, resumed: int | None = None) -> loop.Ran:
    counter = TokenCounter()
    counter.tokens, counter.slots, counter.rows, counter.eval_seconds = 300, 400, rows, 1.0
    metrics = Metrics(counter, log_to_mlflow=False)
    metrics.history = history
    early = EarlyStopping(None)
    early.stopped = stopped
    cfg = method_cfg or _cfg("train.max_steps=4")
    trainer = SimpleNamespace(evaluate=lambda: {"eval_loss": 0.5})
    return loop.Ran(trainer=trainer, counter=counter, metrics=metrics, early=early,
                    plan=plan_training(cfg, [10] * 8, 0, None), budget=None,
                    output=SimpleNamespace(global_step=step, training_loss=1.25), wall_seconds=3.0,
                    resumed_from_step=resumed)


def test_final_validation_loss_reuses_the_last_evaluation_of_the_final_weights() -> None:
    history = [{"step": 2, "eval_loss": 0.9}, {"step": 4, "loss": 1.0}, {"step": 4, "eval_loss": 0.7}]
    assert loop.final_validation_loss(_ran(history), True) == 0.7
    assert loop.final_validation_loss(_ran(history, stopped=True), True) == 0.5  # the restored weights: again
    assert loop.final_validation_loss(_ran(history[:2]), True) == 0.5
    assert loop.final_validation_loss(_ran(history), False) is None


def test_run_trains_from_the_checkpoint_and_restores_the_best() -> None:
    restored = []
    trainer = SimpleNamespace(counter=TokenCounter(), model="m",
                              train=lambda resume_from_checkpoint: SimpleNamespace(global_step=9, resumed=True))
    early = EarlyStopping(None)
    early.restore_best = restored.append
    ran = loop.run(trainer, Metrics(trainer.counter, False), early, None, None, "/x/checkpoint-7")
    assert ran.resumed_from_step == 7 and ran.output.global_step == 9 and restored == ["m"]
    assert ran.wall_seconds >= 0 and ran.counter is trainer.counter


def test_summarise_counts_pairs_once_and_reports_the_run() -> None:
    history = [{"step": 1, "loss": 2.0}, {"step": 4, "loss": 1.0}, {"step": 4, "eval_loss": 0.7}]
    cfg = _cfg("train.method=dpo", "train.max_steps=4")
    result = loop.summarise(_ran(history, method_cfg=cfg), cfg, get_method("dpo"), 8, None, None, 0.7, (10, 100),
                            Path("/out/trained"))
    assert result.epochs_seen == 0.5  # 8 rows in pair batches are 4 pairs of 8
    assert (result.first_loss, result.last_loss, result.best_validation_loss) == (2.0, 1.0, 0.7)
    assert result.padding_fraction == 0.25 and result.tokens_per_second == 150.0 and result.steps == 4
    assert result.method == "dpo" and result.output_dir == "/out/trained" and result.trainable_parameters == 10
    weights = loop.summarise(_ran(history, resumed=1), _cfg(), get_method("lora"), 16, ["a", "b"], [0.75, 1.5],
                             None, (1, 2), Path("t"))
    assert weights.class_weights == {"a": 0.75, "b": 1.5} and weights.epochs_seen == 0.75  # 8 + 1 x 4 of 16
