"""No code from a model folder or the registry runs unless the user allowed it; `model.revision` is honoured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmft.base_model import _TRUSTED, BaseModelError, resolve_base_model
from llmft.config import ModelConfig
from llmft.registry.versions import RegistryLoadError, load_registered, remote_code_reason

LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8}


def _model_dir(root: Path, config: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    return root


def _evil_code(folder: Path, marker: Path) -> None:
    # importing this file would leave a marker: the tests prove it is never imported
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


def test_base_model_with_auto_map_is_refused_unless_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = _model_dir(tmp_path / "evil", {**LLAMA_CONFIG, "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}})
    _evil_code(folder, marker)
    with pytest.raises(BaseModelError) as err:
        resolve_base_model(ModelConfig(base=str(folder)))
    message = str(err.value)
    assert "\n" not in message and "model.trust_remote_code=true" in message and "AutoModelForCausalLM" in message
    assert not marker.exists()
    path = resolve_base_model(ModelConfig(base=str(folder), trust_remote_code=True))
    assert path in _TRUSTED  # load_model/load_tokenizer pass trust_remote_code only for this folder


def test_unknown_model_type_is_refused(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "custom", {"model_type": "not_a_transformers_type"})
    with pytest.raises(BaseModelError, match="not built into transformers"):
        resolve_base_model(ModelConfig(base=str(folder)))


def test_plain_local_model_resolves_and_is_not_trusted(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "plain", LLAMA_CONFIG)
    assert resolve_base_model(ModelConfig(base=str(folder))) == str(folder.resolve())
    assert str(folder.resolve()) not in _TRUSTED


def test_revision_on_a_local_folder_is_an_error_naming_the_key(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "plain", LLAMA_CONFIG)
    with pytest.raises(BaseModelError, match=r"model.revision=v2 applies to hub ids only.*model.revision=null"):
        resolve_base_model(ModelConfig(base=str(folder), revision="v2"))


def test_revision_selects_that_snapshot_of_a_hub_model(tmp_path: Path) -> None:
    """A hub cache with two revisions (offline): `model.revision` picks the pinned one."""
    repo = tmp_path / "hub" / "models--acme--tiny"
    for ref, commit in (("main", "a" * 40), ("v1", "b" * 40)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        _model_dir(repo / "snapshots" / commit, {**LLAMA_CONFIG, "note": ref})
    code = ("import sys; from llmft.base_model import resolve_base_model; from llmft.config import ModelConfig;"
            "print(resolve_base_model(ModelConfig(base='acme/tiny', revision=sys.argv[1] or None)))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    got = {}
    for revision in ("v1", ""):
        out = subprocess.run([sys.executable, "-c", code, revision], env=env, capture_output=True, text=True,
                             check=True)
        got[revision] = json.loads((Path(out.stdout.strip()) / "config.json").read_text())["note"]
    assert got == {"v1": "v1", "": "main"}
    missing = subprocess.run([sys.executable, "-c", code, "v9"], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "model.revision=v9" in missing.stderr and "cannot download" in missing.stderr


def _mlflow_model(root: Path, flavor: dict, config: dict) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "MLmodel").write_text(yaml.safe_dump({"flavors": {"transformers": flavor}}))
    (root / "model" / "config.json").write_text(json.dumps(config))
    return root


CLEAN_FLAVOR = {"pipeline_model_type": "LlamaForCausalLM", "instance_type": "TextGenerationPipeline",
                "components": ["tokenizer"], "tokenizer_type": "TokenizersBackend", "code": None}


def test_registered_model_with_custom_classes_is_refused_before_anything_is_imported(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    local = _mlflow_model(tmp_path / "evil", {**CLEAN_FLAVOR, "pipeline_model_type": "EvilForCausalLM"},
                          {**LLAMA_CONFIG, "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}})
    _evil_code(local / "model", marker)
    with pytest.raises(RegistryLoadError) as err:
        load_registered(str(local))
    assert "EvilForCausalLM" in str(err.value) and "model.trust_remote_code=true" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(("flavor", "config", "expected"), [
    (CLEAN_FLAVOR, LLAMA_CONFIG, None),
    ({**CLEAN_FLAVOR, "tokenizer_type": "EvilTokenizer"}, LLAMA_CONFIG, "EvilTokenizer"),
    ({**CLEAN_FLAVOR, "code": "code"}, LLAMA_CONFIG, "ships code"),
    (CLEAN_FLAVOR, {**LLAMA_CONFIG, "auto_map": {"AutoConfig": "x.Y"}}, "AutoConfig"),
])
def test_remote_code_reason(tmp_path: Path, flavor: dict, config: dict, expected: str | None) -> None:
    reason = remote_code_reason(_mlflow_model(tmp_path / "m", flavor, config))
    assert reason is None if expected is None else expected in reason
