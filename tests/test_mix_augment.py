"""Training-only extra rows: data.mix sources (replay, weighted mixing) and augmentation's paraphrases.
Stage functions called directly with the real tokenizer (and, for paraphrasing, the real model)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llmft.config import ConfigError
from llmft.config_files import load_config
from llmft.data import augment, mix, stages
from llmft.data.shapes import Example
from llmft.resolve import resolve_run

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"


def _prepared(*overrides: str):
    cfg = load_config(ROOT / "configs" / "finetune.yaml", ["train.max_seq_length=160", *overrides])
    run = resolve_run(cfg)
    examples, rejections = stages.ingest_frames(run.cfg.data, run.cfg.validation)
    clean, _, _ = stages.gate_and_tokenize(examples, rejections, run.spec, run.cfg.model, run.cfg.data,
                                           run.cfg.validation, run.cfg.train.max_seq_length)
    train, validation, test, split = stages.split_dataset(clean, run.spec, run.cfg.data)
    return run, train, validation, test, split


@pytest.fixture(scope="module")
def products():
    return _prepared("data.max_rows=60")


def test_a_mix_source_joins_training_only_weighted_and_located(products, tmp_path: Path):
    run, train, validation, test, split = products
    dialog = REAL / "dialog.jsonl"
    cfg = run.cfg.data.model_copy(update={"mix": [{"source": str(dialog), "weight": 0.5}], "replay": 0})
    cfg = type(run.cfg.data).model_validate(cfg.model_dump())
    mixed, reports = stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, cfg,
                                         run.cfg.validation, run.cfg.train.max_seq_length)
    added = mixed[mixed["origin"] == "mix"]
    assert len(added) == round(0.5 * len(train)) == reports[0].used
    assert (mixed[mixed["origin"] == "data"]["where"].tolist() == train["where"].tolist())  # the user's rows kept
    assert all(w.startswith(str(dialog)) for w in added["where"])
    assert reports[0].read >= reports[0].kept >= reports[0].used and reports[0].weight == 0.5
    # replayed chat is encoded as chat: no task instruction, loss on the reply only
    first = json.loads(added.iloc[0]["messages"])
    assert first[0]["role"] == "user" and all(len(ids) <= 160 for ids in added["input_ids"])
    again, _ = stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, cfg, run.cfg.validation,
                                   run.cfg.train.max_seq_length)
    assert again["where"].tolist() == mixed["where"].tolist()  # seeded


def test_a_mix_row_with_a_test_prompt_never_trains(products, tmp_path: Path):
    run, train, validation, test, split = products
    leak = tmp_path / "leak.jsonl"
    leak.write_text("".join(json.dumps({"prompt": p, "response": "anything"}) + "\n" for p in test["prompt"]))
    cfg = type(run.cfg.data).model_validate({**run.cfg.data.model_dump(),
                                             "mix": [{"source": str(leak), "weight": 1.0}], "replay": 0})
    mixed, reports = stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, cfg,
                                         run.cfg.validation, run.cfg.train.max_seq_length)
    assert reports[0].used == 0 and reports[0].dropped_by_reason == {"duplicate_of_a_split_row": len(test)}
    assert "asked for" in reports[0].note and len(mixed) == len(train)


def test_mix_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"data.mix\[0\].source: unknown built-in source 'builtin:nope'"):
        mix.resolve_source("builtin:nope", "data.mix[0]")
    labelled = [Example("f, line 1", "text_label", text="t", label="a")]
    assert "data.mix[0].source" in mix.mix_kind_error(labelled, False, "data.mix[0]", "f")
    chats = [Example("f, line 1", "messages", messages=[{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a"}])]
    assert "classification run can only mix in text/label" in mix.mix_kind_error(chats, True, "data.mix[0]", "f")
    assert mix.mix_kind_error(chats, False, "data.mix[0]", "f") is None
    chosen, note = mix.draw(list(range(10)), 2.0, 20, "0:x")
    assert len(chosen) == 10 and note == "asked for 40 rows, the source has 10 usable"


def test_the_builtin_replay_set_mixes_into_a_chat_run(products):
    run, train, validation, test, split = products
    if "builtin:general" not in mix.builtin_sources():
        pytest.skip("replay set not built")
    cfg = type(run.cfg.data).model_validate({**run.cfg.data.model_dump(),
                                             "mix": [{"source": "builtin:general", "weight": 0.25}]})
    mixed, _ = stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, cfg,
                                   run.cfg.validation, run.cfg.train.max_seq_length)
    added = mixed[mixed["origin"] == "mix"]
    assert len(added) == round(0.25 * len(train)) and added["where"].str.startswith("builtin:general, line").all()


def test_extra_rows_are_their_own_mlflow_inputs_and_marked_in_the_export(products, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    import mlflow

    from llmft.contracts import ExtraRows, GateReport

    run, train, validation, test, split = products
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    cfg = type(run.cfg.data).model_validate({**run.cfg.data.model_dump(),
                                             "mix": [{"source": "builtin:general", "weight": 0.25}]})
    mixed, reports = stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, cfg,
                                         run.cfg.validation, run.cfg.train.max_seq_length)
    synthetic = train.iloc[:2].assign(origin="synthetic", where=lambda f: f["where"] + ", paraphrase 1")
    mixed = pd.concat([mixed, synthetic], ignore_index=True)
    extras = [ExtraRows(origin="synthetic", source="embedded:smollm2-135m-instruct", read=3, kept=2, used=2,
                        dropped_by_reason={"unchanged": 1}), *reports]
    report = GateReport(success=True, verdict="ok", rows_in=len(train), kept=len(train), duplicates_removed=0,
                        rejected=0, checks=[], ge_result={})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("extras")
    with mlflow.start_run() as active:
        info = stages.export_dataset(mixed, validation, test, pd.DataFrame(columns=stages.REJECTION_COLUMNS), report,
                                     split, run.spec, "abc", run.cfg.data.source, 160, "extras-run", extras)
    inputs = mlflow.get_run(active.info.run_id).inputs.dataset_inputs
    contexts = sorted(next(t.value for t in i.tags if t.key == "mlflow.data.context") for i in inputs)
    assert contexts == ["training", "training-mix", "training-synthetic"]
    assert info.extras == extras
    exported = [json.loads(line) for line in (Path(info.export_dir) / "train.jsonl").read_text().splitlines()]
    assert sum(r.get("origin") == "mix" for r in exported) == reports[0].used
    assert sum(r.get("origin") == "synthetic" for r in exported) == 2
    assert all("origin" not in r for r in exported[:len(train)])  # the user's rows stay as they were
    mlflow.set_tracking_uri("")


def test_paraphrase_checks():
    ex = Example("f, line 3", "messages", messages=[{"role": "system", "content": "Extract."},
                                                    {"role": "user", "content": "Order 42 from Acme Corp, 3 units."},
                                                    {"role": "assistant", "content": '{"company": "Acme Corp"}'}])
    src = augment.input_of(ex)
    assert augment.problem(src, "Acme Corp ordered 3 units, order 42.", ex, True) is None
    assert augment.problem(src, "Acme Corp ordered three units, order 42.", ex, True) == "lost_number"
    assert augment.problem(src, "The firm ordered 3 units, order 42.", ex, True) == "lost_field_value"
    assert augment.problem(src, "order 42 from acme corp,  3 units.", ex, True) == "unchanged"
    assert augment.problem(src, "42 3", ex, False) == "length"
    assert augment.clean('Sure, here is the rewritten text: "Acme Corp ordered 3."') == "Acme Corp ordered 3."
    new = augment.with_input(ex, "Acme Corp ordered 3 units, order 42.", 0)
    assert new.origin == "synthetic" and new.where == "f, line 3, paraphrase 1"
    assert new.messages[1]["content"].startswith("Acme") and new.target == ex.target
    assert ex.messages[1]["content"].startswith("Order")  # the original is untouched


def test_augmentation_adds_gated_synthetic_rows_to_training_only(products):
    run, train, validation, test, split = products
    assert run.spec.name == "extraction"
    # greedy: the embedded model keeps 3 of its 8 paraphrases (the others lose a number or a field value)
    augment_cfg = run.cfg.augment.model_copy(update={"enabled": True, "max_rows": 8, "per_row": 1,
                                                     "temperature": 0.0, "max_new_tokens": 96})
    out, report = stages.augment_training(train, validation, test, split, run.spec, run.cfg.model, augment_cfg,
                                          run.cfg.data, run.cfg.validation, run.cfg.train.max_seq_length, 8)
    synthetic = out[out["origin"] == "synthetic"]
    assert report is not None and report.read == 8  # 8 rows x 1 greedy paraphrase
    assert report.kept == report.used == len(synthetic)
    assert report.read == report.kept + sum(report.dropped_by_reason.values())
    assert report.kept >= 1, report.dropped_by_reason  # the checks below look at kept rows
    assert out.iloc[:len(train)]["where"].tolist() == train["where"].tolist()
    originals = set(train["where"])
    responses = dict(zip(train["where"], train["response"], strict=True))
    for row in synthetic.itertuples():
        source = row.where.rsplit(", paraphrase", 1)[0]
        assert source in originals and row.response == responses[source]  # the target is kept
    seen = set(pd.concat([train, validation, test])["prompt"].str.lower())
    assert not any(p.lower() in seen for p in synthetic["prompt"])
    with pytest.raises(ConfigError, match=r"augment\.enabled"):
        stages.augment_training(train, validation, test, split, run.spec.model_copy(update={"name": "preference"}),
                                run.cfg.model, augment_cfg, run.cfg.data, run.cfg.validation, 160, 8)


def test_replay_joins_a_generative_run_at_its_share(products):
    """data.replay: builtin:general rows against forgetting, reported like any mix source; off by default."""
    run, train, validation, test, split = products
    assert stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, run.cfg.data,
                               run.cfg.validation, run.cfg.train.max_seq_length)[1] == []
    replaying = run.cfg.data.model_copy(update={"replay": 0.1})
    mixed, reports = stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, replaying,
                                         run.cfg.validation, run.cfg.train.max_seq_length)
    (report,) = reports
    assert report.source == "builtin:general" and report.weight == 0.1 and report.used == round(0.1 * len(train))
    assert len(mixed) == len(train) + report.used
    off = run.cfg.data.model_copy(update={"replay": 0.0})
    assert stages.mix_training(train, validation, test, split, run.spec, run.cfg.model, off, run.cfg.validation,
                               run.cfg.train.max_seq_length)[1] == []
