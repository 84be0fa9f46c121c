"""The forgetting guard (llmft/evaluate/forgetting_guard.py): the share it keeps, the scaled model it saves
(an adapter stays an adapter and merges to exactly base + share * update), and when it leaves a
candidate alone. On the tiny random model of the real architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from llmft.base_model import load_model, load_tokenizer
from llmft.config import ModelConfig, TrainConfig
from llmft.config_stages import ProbeSettings
from llmft.contracts import ProbeRun, TrainingResult
from llmft.evaluate import forgetting_guard
from llmft.evaluate.forgetting import PROBE_FILE, load_probe
from llmft.evaluate.forgetting_guard import (
    GUARD_FILE,
    SHARES,
    UpdateScaler,
    choose_share,
    guard,
    not_scalable,
    save_scaled,
)
from llmft.registry.stage import forgetting_advice
from llmft.train.methods import load_trained

SETTINGS = ProbeSettings(max_new_tokens=4, batch_size=16, precision="fp32")


def _training() -> TrainingResult:
    return TrainingResult(method="lora", steps=1, train_loss=1.0, first_loss=1.0, last_loss=1.0, validation_loss=None,
                          best_validation_loss=None, stopped_early=False, resumed_from_step=None, tokens=1,
                          padding_fraction=0.0, tokens_per_second=1.0, wall_seconds=1.0, trainable_parameters=1,
                          total_parameters=1)


def _probe(accuracy: float) -> ProbeRun:
    return ProbeRun(applicable=True, accuracy=accuracy)


def _lora_adapter(base: str, out: Path, **config: object) -> Path:
    """A LoRA adapter whose B matrices are not zero (a freshly initialised one changes nothing)."""
    torch.manual_seed(0)
    model = get_peft_model(load_model(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       task_type="CAUSAL_LM", **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    return out


def test_the_guard_set_is_a_parallel_form_of_the_probe_with_none_of_its_questions() -> None:
    guard_rows, probe_rows = load_probe(GUARD_FILE), load_probe(PROBE_FILE)
    questions = [r["question"].lower() for r in guard_rows]
    assert len(guard_rows) >= 2 * len(probe_rows)  # less noisy than the probe it stands beside
    assert len(set(questions)) == len(questions)
    assert not set(questions) & {r["question"].lower() for r in probe_rows}


def test_the_largest_share_within_the_bound_is_kept_and_the_scan_stops_there() -> None:
    accuracy = {0.9: 0.30, 0.8: 0.40, 0.7: 0.52, 0.6: 0.58}
    asked: list[float] = []

    def measure(share: float) -> float:
        asked.append(share)
        return accuracy[share]

    scan = choose_share(0.60, measure, 0.1)
    assert scan.chosen == 0.7 and asked == [0.9, 0.8, 0.7]
    assert "kept 0.7 of the trained update" in scan.line(0.1)


def test_no_share_within_the_bound_keeps_the_whole_update_and_says_so() -> None:
    scan = choose_share(0.9, lambda share: 0.1, 0.1)
    assert scan.chosen is None and list(scan.by_share) == list(SHARES)
    assert "the whole update was kept" in scan.line(0.1)


def test_a_scaled_lora_adapter_merges_to_the_interpolation(tiny_model_path: str, tmp_path: Path) -> None:
    adapter = _lora_adapter(tiny_model_path, tmp_path / "adapter")
    base = dict(load_model(tiny_model_path).named_parameters())
    whole, _ = load_trained(tiny_model_path, adapter)
    half = save_scaled(adapter, 0.5, tmp_path / "half", UpdateScaler(load_model(tiny_model_path), whole))
    assert json.loads((half / "adapter_config.json").read_text())["peft_type"] == "LORA"  # still an adapter
    scaled, _ = load_trained(tiny_model_path, half)
    changed = 0
    for name, param in scaled.named_parameters():
        expected = base[name] + 0.5 * (dict(whole.named_parameters())[name] - base[name])
        torch.testing.assert_close(param, expected, atol=1e-6, rtol=1e-5)
        changed += not torch.equal(param, base[name])
    assert changed  # the adapter did change weights


def test_a_whole_model_is_saved_interpolated(tiny_model_path: str, tmp_path: Path) -> None:
    trained = load_model(tiny_model_path)
    with torch.no_grad():
        trained.model.layers[0].mlp.up_proj.weight.add_(1.0)
    trained.save_pretrained(tmp_path / "full")
    load_tokenizer(tiny_model_path).save_pretrained(tmp_path / "full")
    scaler = UpdateScaler(load_model(tiny_model_path), load_model(str(tmp_path / "full")))
    assert list(scaler.delta) == ["model.layers.0.mlp.up_proj.weight"]  # only what training changed is kept twice
    out = save_scaled(tmp_path / "full", 0.25, tmp_path / "quarter", scaler)
    scaled, _ = load_trained(tiny_model_path, out)
    base = load_model(tiny_model_path)
    torch.testing.assert_close(scaled.model.layers[0].mlp.up_proj.weight,
                               base.model.layers[0].mlp.up_proj.weight + 0.25)
    torch.testing.assert_close(scaled.model.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight)


def test_updates_that_are_not_linear_in_a_share_are_named(tiny_model_path: str, tmp_path: Path) -> None:
    assert not_scalable(_lora_adapter(tiny_model_path, tmp_path / "lora")) is None
    assert "DoRA" in not_scalable(_lora_adapter(tiny_model_path, tmp_path / "dora", use_dora=True))
    (tmp_path / "prompt").mkdir()
    (tmp_path / "prompt" / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    assert "PROMPT_TUNING" in not_scalable(tmp_path / "prompt")


def test_a_candidate_within_the_bound_or_with_the_guard_off_is_left_alone(tmp_path: Path) -> None:
    training, kept = _training(), _probe(0.60)
    model = ModelConfig(base="/nonexistent")  # nothing may be loaded
    assert guard(tmp_path, training, _probe(0.65), kept, model, SETTINGS, 0.1, True) == (tmp_path, training, kept, None)
    forgot = _probe(0.2)
    assert guard(tmp_path, training, _probe(0.65), forgot, model, SETTINGS, 0.1, False) == (
        tmp_path, training, forgot, None)
    not_applicable = ProbeRun(applicable=False, reason="a classifier")
    assert guard(tmp_path, training, not_applicable, not_applicable, model, SETTINGS, 0.1, True)[2] is not_applicable


def test_a_candidate_over_the_bound_is_scaled_saved_and_probed_again(
        tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _lora_adapter(tiny_model_path, tmp_path / "adapter")
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path / "home"))
    # the guard questions, answered by share: the base 0.6, 0.45 at 0.9 and 0.8, 0.55 from 0.7 down
    monkeypatch.setattr(forgetting_guard, "guard_accuracy",
                        lambda model, tok, questions, settings, desc: {"guard 0": 0.6, "guard 0.9": 0.45,
                                                                      "guard 0.8": 0.45}.get(desc, 0.55))
    out, training, probed, scan = guard(adapter, _training(), _probe(0.5), _probe(0.1),
                                        ModelConfig(base=tiny_model_path), SETTINGS, 0.1, True)
    assert scan is not None and scan.chosen == 0.7 and list(scan.by_share) == [0.9, 0.8, 0.7]
    assert out != adapter and training.update_share == 0.7 and "kept 0.7" in training.guard_note
    assert probed.applicable and len(probed.outputs) == len(load_probe())  # the probe asked again, of the new model
    whole, _ = load_trained(tiny_model_path, adapter)
    scaled, _ = load_trained(tiny_model_path, out)
    base = dict(load_model(tiny_model_path).named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(dict(scaled.named_parameters())[name],
                               base[name] + 0.7 * (dict(whole.named_parameters())[name] - base[name]),
                               atol=1e-6, rtol=1e-5)


def test_a_refusal_for_forgetting_says_what_the_guard_did() -> None:
    noted = _training().model_copy(update={"guard_note": "forgetting guard: no share of the update down to 0.2 ..."})
    assert forgetting_advice(TrainConfig(), noted) == "forgetting guard: no share of the update down to 0.2 ..."
    assert forgetting_advice(TrainConfig(), _training()) == ""
    dpo = forgetting_advice(TrainConfig(method="dpo"), noted)
    assert dpo.startswith("or train.method=orpo") and dpo.endswith("down to 0.2 ...")
