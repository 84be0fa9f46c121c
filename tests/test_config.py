from pathlib import Path

import pytest

from llmft.config import ConfigError, valid_keys
from llmft.config_files import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_file_loads_and_has_contract_keys():
    cfg = load_config(ROOT / "configs" / "finetune.yaml")
    flat = cfg.flat()
    for key in ("task", "model.base", "data.source", "data.format", "train.method", "train.max_steps",
                "train.learning_rate", "eval.max_samples", "registry.model_name"):
        assert key in flat
    assert cfg.train.method == "lora"


def test_overrides_are_typed():
    cfg = load_config(None, ["train.max_steps=7", "train.learning_rate=2e-4", "eval.max_samples=null"])
    assert cfg.train.max_steps == 7
    assert cfg.train.learning_rate == pytest.approx(2e-4)
    assert cfg.eval.max_samples is None


def test_learning_rate_auto_is_each_methods_own_and_a_number_overrides_it():
    from llmft.sweep import apply_params
    from llmft.train.methods import METHODS

    cfg = load_config(ROOT / "configs" / "finetune.yaml")
    assert cfg.train.learning_rate == "auto" and cfg.train.rate == pytest.approx(1e-3)
    rates = {m: load_config(None, [f"train.method={m}"]).train.rate for m in METHODS}
    assert rates == {m: method.learning_rate for m, method in METHODS.items()}
    assert rates["dpo"] == pytest.approx(3e-5) and rates["full"] == pytest.approx(5e-5)
    assert rates["lora"] == rates["orpo"] == pytest.approx(1e-3)
    assert load_config(None, ["train.method=dpo", "train.learning_rate=3e-4"]).train.rate == pytest.approx(3e-4)
    # a sweep trial that changes the method gets that method's rate (auto stays auto in the dump)
    assert apply_params(cfg.train, {"train.method": "dpo"}).rate == pytest.approx(3e-5)
    for bad in ("0", "-1e-3", "fast", "inf"):
        with pytest.raises(ConfigError, match=r"train\.learning_rate.*positive learning rate.*or auto") as err:
            load_config(None, [f"train.learning_rate={bad}"])
        assert len(str(err.value).splitlines()) == 1


def test_unknown_override_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.max_stepz=3"])
    assert "train.max_stepz" in str(err.value)
    assert "train.max_steps" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_bad_value_in_file_names_file_line_and_field(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("task: extraction\ntrain:\n  batch_size: 4\n  max_steps: -3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "line 4" in msg and "train.max_steps" in msg


def test_unknown_key_in_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"line 2.*train\.lr.*unknown key.*train\.learning_rate"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_bad_override_value_names_the_override():
    with pytest.raises(ConfigError, match=r"--set train.method"):
        load_config(None, ["train.method=sgd"])
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_config(None, ["train.max_steps"])


def test_valid_keys_are_dotted():
    assert "train.lora.r" in valid_keys()


@pytest.mark.parametrize("name", ["finetune.yaml", "classify.yaml", "gpu.yaml"])
def test_every_shipped_config_loads(name: str):
    load_config(ROOT / "configs" / name)


def test_gpu_profile_sends_only_the_finetune_step_to_a_gpu_operator():
    from zenml.config import ResourceSettings

    cfg = load_config(ROOT / "configs" / "gpu.yaml")
    options = cfg.finetune_step_options()
    assert options["step_operator"] == "gpu"
    resources = ResourceSettings.model_validate(options["settings"]["resources"])  # what ZenML will receive
    assert resources.gpu_count == 4 and resources.memory == "120GB"
    assert load_config(ROOT / "configs" / "finetune.yaml").finetune_step_options() == {}
    assert cfg.finetune_options() == {**options, "enable_cache": True}


def test_train_reuse_off_turns_the_finetune_cache_off_and_never_touches_the_sweep_steps():
    cfg = load_config(ROOT / "configs" / "finetune.yaml", ["train.reuse=false"])
    assert cfg.finetune_options() == {"enable_cache": False}
    assert "enable_cache" not in load_config(ROOT / "configs" / "finetune.yaml").finetune_step_options()


@pytest.mark.parametrize(("raw", "expected"), [
    ("Answer: briefly, please", "Answer: briefly, please"),  # YAML would read a mapping: kept as the text
    ("[unclosed", "[unclosed"),  # not valid YAML: the text itself
    ("null", None), ("0.5", 0.5), ("[a, b]", ["a", "b"]),
])
def test_override_values_are_yaml_scalars_or_the_plain_string(raw, expected):
    assert load_config(None, [f"data.system_prompt={raw}"] if not isinstance(expected, (float, list))
                       else [f"data.labels={raw}"] if isinstance(expected, list)
                       else [f"promotion.min_delta={raw}"]).model_dump(mode="json") is not None
    from llmft.config_files import _override_value

    assert _override_value(raw) == expected


def test_shipped_configs_pin_no_labels_and_no_registry_name():
    """A data.source override must never inherit the demo's labels or model name."""
    for name in ("finetune.yaml", "classify.yaml", "gpu.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.data.labels is None and cfg.registry.model_name is None, name


def test_each_evaluation_step_takes_only_its_stages_frozen_settings():
    """The steps' caches are keyed by what each reads: a setting of one stage leaves the others' settings
    (and so their cache keys) unchanged, and no step takes the whole eval section."""
    import inspect

    from pydantic import ValidationError

    import steps.evaluate as evaluate_steps
    from llmft.config import EvalConfig

    base = EvalConfig()
    changed = {"champion": False, "slice_by": "source", "genai_table_rows": 3, "primary_metric": "rougeL",
               "few_shot_k": 5, "max_samples": 7, "probe_max_new_tokens": 9, "few_shot_max_tokens": 512,
               "precision": "bf16"}
    builders = {"scoring": lambda c: c.scoring(384), "row_draw": EvalConfig.row_draw,
                "shot_draw": EvalConfig.shot_draw, "probing": EvalConfig.probing, "reporting": EvalConfig.reporting}
    reads = {"scoring": {"few_shot_max_tokens", "precision"}, "row_draw": {"max_samples"}, "shot_draw": {"few_shot_k"},
             "probing": {"probe_max_new_tokens", "precision"},
             "reporting": {"slice_by", "genai_table_rows", "primary_metric"}}
    for key, value in changed.items():
        other = base.model_copy(update={key: value})
        for name, build in builders.items():
            assert (build(other) != build(base)) == (key in reads[name]), (key, name)
    with pytest.raises(ValidationError):
        base.scoring(384).max_new_tokens = 1  # frozen
    for name, fn in vars(evaluate_steps).items():
        entry = getattr(fn, "entrypoint", None)
        if entry is not None:
            kinds = {str(p.annotation) for p in inspect.signature(entry).parameters.values()}
            assert not any("EvalConfig" in k for k in kinds), name
