"""Issue 24, item 7: a registered version used as a base (`models:/NAME/VERSION`, `models:/NAME@ALIAS`)
is cached as a plain model folder per tracking store and per what the version is (run id, source), not
under `registered/NAME/VERSION` alone: names come from file name + task, so two projects' or two stores'
`v1` used to share one folder, and the second silently started from the first one's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from llmft import base_model
from llmft.registry import versions


class _Saved:
    """Stands in for a registered model's (model, tokenizer): saves the version's own weights file."""

    def __init__(self, source: Path):
        self.source = source

    def save_pretrained(self, dest: str | Path) -> None:
        dest = Path(dest)
        (dest / "config.json").write_text((self.source / "config.json").read_text())
        (dest / "weights.json").write_text((self.source / "weights.json").read_text())


def _fake_load_components(name: str, version: str, trust_remote_code: bool = False):
    """What the real loader would download: the files at the version's source, in the current store."""
    found = versions._client().get_model_version(name, version)
    source = Path(found.source.removeprefix("file://"))
    return _Saved(source), _Saved(source)


def _register(store: Path, weights: list[float], tmp_path: Path, run_tag: str) -> str:
    uri = f"sqlite:///{store}"
    source = tmp_path / f"weights-{run_tag}"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (source / "weights.json").write_text(json.dumps(weights))
    client = MlflowClient(tracking_uri=uri)
    if not client.search_registered_models("name='same-name'"):
        client.create_registered_model("same-name")
    version = client.create_model_version("same-name", source=source.as_uri())
    client.set_registered_model_alias("same-name", "champion", version.version)
    return uri


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LLMFT_CACHE", str(root))
    monkeypatch.setattr(versions, "load_components", _fake_load_components)
    return root


def _weights(folder: str) -> list[float]:
    return json.loads((Path(folder) / "weights.json").read_text())


def test_two_stores_v1_of_the_same_name_resolve_to_their_own_weights(tmp_path: Path, cache: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    store_a = _register(tmp_path / "a.db", [0.25, -1.0], tmp_path, "a")
    store_b = _register(tmp_path / "b.db", [7.5, 3.0], tmp_path, "b")
    resolved = {}
    for uri in (store_a, store_b, store_a):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        for spec in ("models:/same-name/1", "models:/same-name@champion"):
            folder = base_model.registered_model_dir(spec)
            assert _weights(folder) == ([0.25, -1.0] if uri == store_a else [7.5, 3.0]), (uri, spec)
            resolved.setdefault(uri, set()).add(folder)
    assert len(resolved[store_a]) == 1 and len(resolved[store_b]) == 1
    assert resolved[store_a] != resolved[store_b]
    assert all(Path(f).is_relative_to(cache / "registered") for fs in resolved.values() for f in fs)


def test_a_version_number_reused_after_a_delete_is_not_served_from_the_old_copy(tmp_path: Path, cache: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    uri = _register(tmp_path / "mlflow.db", [1.0], tmp_path, "first")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    first = base_model.registered_model_dir("models:/same-name/1")
    assert _weights(first) == [1.0]
    MlflowClient(tracking_uri=uri).delete_registered_model("same-name")
    _register(tmp_path / "mlflow.db", [2.0], tmp_path, "second")  # v1 again, other weights
    second = base_model.registered_model_dir("models:/same-name/1")
    assert _weights(second) == [2.0] and second != first


def test_a_store_key_ignores_credentials_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from llmft.locations import store_key

    monkeypatch.chdir(tmp_path)
    assert store_key("sqlite:///mlflow.db") == store_key(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert store_key("https://u:pw@mlflow.example/") == store_key("https://mlflow.example/")
    assert store_key("https://mlflow.example/") != store_key("https://other.example/")


def test_a_registered_base_identity_is_keyed_by_its_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Cached base evaluations of `models:/X@champion` must not cross stores: each store has its own v1."""
    from llmft import base_model

    monkeypatch.setattr(base_model, "registered_version", lambda spec: ("X", "1"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a.db'}")
    first = base_model.base_identity("models:/X@champion")
    assert base_model.base_identity("models:/X@champion") == first and first.startswith("models:/X/1@store-")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@mlflow.team:5000")
    other = base_model.base_identity("models:/X@champion")
    assert other != first and "secret" not in other
