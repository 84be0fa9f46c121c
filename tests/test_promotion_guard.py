"""Moves of @champion on a real MLflow registry (sqlite): one at a time per registered model, and a
manual promotion never crosses tasks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from llmft.registry import versions
from llmft.registry.promotion import PromotionError, promote_by_hand, registry_lock, rollback

NAME = "guarded-model"


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model(NAME)
    # versions need no weights for alias moves: the registry records, it does not load
    for task in ("chat", "classification", "chat"):
        client.create_model_version(NAME, source=str(tmp_path), tags={"task": task})
    return client


def test_manual_promotion_refuses_another_task(registry: MlflowClient) -> None:
    promote_by_hand(NAME, "1", "tester", "first")
    with pytest.raises(PromotionError) as err:
        promote_by_hand(NAME, "2", "tester", "slip of the finger")
    assert "classification" in str(err.value) and "registry.model_name" in str(err.value)
    assert versions.current_alias_version(NAME) == "1"
    moved = promote_by_hand(NAME, "3", "tester", "same task")
    assert (moved.champion, moved.previous_champion) == ("3", "1")
    assert rollback(NAME, "tester", "back").champion == "1"


def test_unknown_version_is_a_one_line_error(registry: MlflowClient) -> None:
    with pytest.raises(PromotionError, match=f"registered model '{NAME}' has no version 9"):
        promote_by_hand(NAME, "9", None, "")


def test_the_registry_lock_is_exclusive_across_processes(registry: MlflowClient, tmp_path: Path) -> None:
    code = ("import sys, time; from llmft.registry.promotion import registry_lock\n"
            f"with registry_lock({NAME!r}):\n    print('held', flush=True)\n    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**__import__("os").environ, "LLMFT_HOME": str(tmp_path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PromotionError, match="held by another promotion"), registry_lock(NAME, timeout_s=0.5):
            pass
        with registry_lock("another-model", timeout_s=0.5):  # scoped to one registered model
            pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the holder died: its lock went with it
        try:
            with registry_lock(NAME, timeout_s=0.5):
                break
        except PromotionError:
            assert time.monotonic() < deadline
