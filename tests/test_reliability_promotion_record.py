"""Issue 24, item 8: a champion move writes its record (who, why, when, the previous holder) before
the alias moves, so @champion never points at a version without the record rollback follows; if the
alias move fails, the record is taken back; if the record cannot be written, the alias does not move.
On a real MLflow registry (sqlite), with failures injected into the registry calls."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from llmft.registry import versions
from llmft.registry.promotion import PREVIOUS, promote_by_hand, rollback

NAME = "recorded-model"


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=str(tmp_path), tags={"task": "chat"})
    return client


def _champion_tags(version: str) -> dict[str, str]:
    return {k: v for k, v in versions.version_tags(NAME, version).items() if k.startswith("champion.")}


def test_the_record_is_on_the_version_before_the_alias_points_at_it(registry: MlflowClient,
                                                                    monkeypatch: pytest.MonkeyPatch):
    promote_by_hand(NAME, "1", "tester", "first")
    seen: list[dict[str, str]] = []
    real = versions.set_alias

    def watching(name: str, version: str, alias: str = versions.CHAMPION) -> None:
        seen.append(_champion_tags(version))
        real(name, version, alias)

    monkeypatch.setattr(versions, "set_alias", watching)
    promote_by_hand(NAME, "2", "tester", "better")
    assert seen and seen[0]["champion.how"] == "manual" and seen[0][PREVIOUS] == "1", seen
    assert seen[0]["champion.reason"] == "better" and seen[0]["champion.by"] == "tester"
    seen.clear()
    rollback(NAME, "tester", "worse in production")
    assert seen[0]["champion.how"] == "rollback" and "from v2" in seen[0]["champion.reason"], seen
    assert versions.current_alias_version(NAME) == "1"


def test_a_failed_alias_move_leaves_no_record_behind(registry: MlflowClient, monkeypatch: pytest.MonkeyPatch):
    promote_by_hand(NAME, "1", "tester", "first")

    def refused(*args: object, **kwargs: object) -> None:
        raise ConnectionError("tracking server unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(versions, "set_alias", refused)
        with pytest.raises(ConnectionError):
            promote_by_hand(NAME, "2", "tester", "better")
    assert _champion_tags("2") == {}
    assert versions.current_alias_version(NAME) == "1"
    promote_by_hand(NAME, "3", "tester", "third")
    with monkeypatch.context() as patched:
        patched.setattr(versions, "set_alias", refused)
        with pytest.raises(ConnectionError):
            rollback(NAME, "tester", "back")
    tags = versions.version_tags(NAME, "3")
    assert not any(k.startswith("rolled_back.") for k in tags) and versions.current_alias_version(NAME) == "3"
    assert _champion_tags("1")["champion.reason"] == "first"  # the target's own record is as it was


def test_a_record_that_cannot_be_written_does_not_move_the_alias(registry: MlflowClient,
                                                                 monkeypatch: pytest.MonkeyPatch):
    promote_by_hand(NAME, "1", "tester", "first")

    def refused(*args: object, **kwargs: object) -> None:
        raise ConnectionError("tracking server unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(versions, "set_version_tags", refused)
        with pytest.raises(ConnectionError):
            promote_by_hand(NAME, "2", "tester", "better")
    assert versions.current_alias_version(NAME) == "1"
