"""Issue 24, item 5: secrets in environment-variable and header form are redacted at ingest (kept rows,
rejection reasons and `rejected.jsonl`), and `credentials.mask` covers token-only URLs, passwords with
an "@", Bearer/Basic headers, and the tracebacks of logged exceptions. The detector cases themselves are
in tests/data/pii_cases.jsonl (read by tests/test_pii.py)."""

from __future__ import annotations

import io
import json
import logging
import traceback
from pathlib import Path

import pytest

from llmft.config_files import load_config
from llmft.credentials import MaskSecrets, mask
from llmft.data import pii, stages
from llmft.data.gate import run_gate
from llmft.data.shapes import Example, Rejection
from llmft.tasks.base import Encoded

RAW = {
    "aws": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY8k2QLmKEY",
    "db": "s3cr3t-Pa55",
    "hf": "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345",
    "basic": "dXNlcjpwYXNzd29yZA==",
    "bearer": "9f8e7d6c5b4a3210",
    "url": "Sup3rS3cret",
}


def _source(tmp_path: Path) -> Path:
    rows = [{"prompt": f"question number {i}", "response": f"answer number {i}"} for i in range(12)]
    rows += [
        {"prompt": "why does boto fail?", "response": f"set AWS_SECRET_ACCESS_KEY={RAW['aws']} and retry"},
        {"prompt": f"my .env has DB_PASSWORD={RAW['db']}", "response": "rotate it"},
        {"prompt": f"export HF_TOKEN={RAW['hf']}", "response": "then log in"},
        {"prompt": f"curl -H 'Authorization: Basic {RAW['basic']}' https://api.internal", "response": "401?"},
        # the same row twice: the duplicate goes to rejected.jsonl with its data
        {"prompt": f"curl -H 'Authorization: Bearer {RAW['bearer']}' https://x.internal", "response": "ok"},
        {"prompt": f"curl -H 'Authorization: Bearer {RAW['bearer']}' https://x.internal", "response": "ok"},
        # no known shape: rejected, and its reason lists the field names (one of them a secret)
        {f"DATABASE_URL=postgres://admin:{RAW['url']}@db.internal/app": 1, f"HF_TOKEN={RAW['hf']}": 2},
    ]
    path = tmp_path / "env.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_env_style_secrets_reach_neither_the_examples_nor_rejected_jsonl(tmp_path: Path):
    cfg = load_config(None, [f"data.source={_source(tmp_path)}", "validation.pii_action=redact"])
    examples, rejections = stages.ingest_frames(cfg.data, cfg.validation)

    def encode(ex: Example) -> Encoded:
        return Encoded(list(range(len(ex.prompt_key.split()) + len(ex.target.split()) + 5)), [], truncated=False)

    rejected = [Rejection(r["where"], r["reason"], json.loads(r["data"]), r["kind"])
                for r in rejections.to_dict("records")]
    result = run_gate([Example.from_row(r) for r in examples.to_dict("records")], rejected, cfg.data,
                      cfg.validation, encode, 64, pii_found=stages.pii_found(examples))
    out = tmp_path / "gate"
    out.mkdir()
    stages.write_gate_files(out, stages._rejected_frame(result), result.report)
    written = (out / "rejected.jsonl").read_text()
    kinds = {json.loads(line)["kind"] for line in written.splitlines()}
    assert {"shape", "duplicate"} <= kinds
    everything = examples.to_json() + rejections.to_json(force_ascii=False) + written
    for name, raw in RAW.items():
        assert raw not in everything, name
    assert "[SECRET]" in written and "AWS_SECRET_ACCESS_KEY=[SECRET]" in examples.to_json()


def test_rejection_reasons_built_from_a_row_are_scrubbed_with_it():
    """A reason quotes field names or values: whatever it quotes was redacted first."""
    record = {f"HF_TOKEN={RAW['hf']}": "x", "note": f"DB_PASSWORD={RAW['db']}"}
    redacted, findings = pii.scrub(record)
    reason = f"unrecognised shape (fields: {', '.join(map(str, redacted))})"
    assert RAW["hf"] not in reason and "[SECRET]" in reason
    assert {f.kind for f in findings} == {"secret"} and RAW["db"] not in json.dumps(redacted)


@pytest.mark.parametrize("text, hidden, kept", [
    ("git remote https://ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789@github.com/o/r.git",
     "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "@github.com/o/r.git"),
    ("postgresql://mlflow:p@ss-w0rd@db:5432/mlflow", "ss-w0rd", "postgresql://mlflow:***@db:5432/mlflow"),
    ("headers={'Authorization': 'Bearer tok-1234567890abcdef'}", "tok-1234567890abcdef", "Bearer ***"),
    ('curl -H "Authorization: Basic dXNlcjpwYXNzd29yZA=="', "dXNlcjpwYXNzd29yZA==", "Basic ***"),
    ("retrying with bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc123def456", "eyJhbGciOiJIUzI1NiJ9", "bearer ***"),
])
def test_mask_covers_token_urls_at_signs_in_passwords_and_auth_headers(text: str, hidden: str, kept: str):
    masked = mask(text)
    assert hidden not in masked and kept in masked, masked


@pytest.mark.parametrize("text", ["ssh://git@github.com/o/r.git", "https://alice@example.com/x",
                                  "uses Bearer authentication", "Authorization: Bearer <token>",
                                  "no secrets here: a:b@c is not a url"])
def test_mask_leaves_plain_user_names_and_prose_alone(text: str):
    assert mask(text) == text


class ExcInfoFormatter(logging.Formatter):
    """Formats the exception from `exc_info` itself, ignoring `exc_text` (as ZenML's console formatter does)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        return text


@pytest.mark.parametrize("formatter", [logging.Formatter("%(levelname)s %(message)s"), ExcInfoFormatter()],
                         ids=["standard", "exc_info"])
def test_a_logged_exceptions_traceback_is_masked(monkeypatch: pytest.MonkeyPatch, formatter: logging.Formatter):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-1234567890")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(MaskSecrets())
    logger = logging.getLogger("some.library.reliability")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ConnectionError("POST https://u:hunter2@mlflow.internal/api failed with token tok-1234567890 "
                                  "(Authorization: Bearer tok-1234567890)")
        except ConnectionError:
            logger.exception("upload failed")
        try:
            raise RuntimeError("https://ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789@github.com refused")
        except RuntimeError:
            logger.error("clone failed", exc_info=True, stack_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out = stream.getvalue()
    assert "Traceback" in out and "ConnectionError" in out and "RuntimeError" in out
    for raw in ("hunter2", "tok-1234567890", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"):
        assert raw not in out, out
