"""Credentials are read from the standard places and masked wherever they could be printed."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from llmft.credentials import MaskSecrets, mask, mlflow_credentials
from llmft.locations import ui_command


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_CREDENTIALS_FILE", str(tmp_path / "none"))


def test_uri_passwords_and_secret_query_values_are_masked() -> None:
    assert mask("tracking at https://alice:hunter2@mlflow.example.com/x") == \
        "tracking at https://alice:***@mlflow.example.com/x"
    assert mask("s3://bucket/key?X-Amz-Signature=abc&token=T0KEN123&page=2") == \
        "s3://bucket/key?X-Amz-Signature=***&token=***&page=2"
    assert mask("postgresql://mlflow:pw@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert mask("no secrets here: a:b@c is not a url") == "no secrets here: a:b@c is not a url"


def test_known_secret_values_are_masked_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "Zq9-very-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abc")  # too short to mask safely: left alone
    assert mask("auth failed for password Zq9-very-secret (abc)") == "auth failed for password *** (abc)"


def test_the_ui_hint_never_shows_a_password() -> None:
    assert "hunter2" not in ui_command("https://alice:hunter2@mlflow.example.com")


def test_log_records_from_any_library_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-1234567890")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecrets())
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    try:
        logger.warning("retrying %s with token %s", "https://u:p4ss@host/api", "tok-1234567890")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip() == "retrying https://u:***@host/api with token ***"


def test_credentials_come_from_the_environment_first_then_mlflows_file(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    assert mlflow_credentials() == {}
    file = tmp_path / "credentials"
    file.write_text("[mlflow]\nmlflow_tracking_username = carol\nmlflow_tracking_password = from-file\n")
    monkeypatch.setenv("MLFLOW_CREDENTIALS_FILE", str(file))
    # the file is used, not shadowed by placeholders
    assert mlflow_credentials() == {"username": "carol", "password": "from-file"}
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "dave")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-env")
    assert mlflow_credentials() == {"username": "dave", "password": "from-env"}
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    assert mlflow_credentials() == {"token": "tok"}
