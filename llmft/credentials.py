"""Credentials: where they come from, where they are kept, and how they are kept out of output.

MLflow credentials are read from the standard places (MLFLOW_TRACKING_TOKEN, or
MLFLOW_TRACKING_USERNAME/PASSWORD, else `~/.mlflow/credentials`) and stored in a ZenML secret;
the stack component holds only `{{secret.key}}` references. Every console line and every summary
passes through `mask`: passwords in URIs and the values of known secret variables become `***`.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
from pathlib import Path

MLFLOW_SECRET = "llmft_mlflow_credentials"

# variables whose values must never be shown, wherever they turn up
SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ZENML_STORE_API_KEY", "ZENML_STORE_PASSWORD", "DATABRICKS_TOKEN",
    "AZURE_STORAGE_KEY", "GOOGLE_APPLICATION_CREDENTIALS_JSON",
)
_MIN_SECRET_LEN = 6  # shorter values would mask ordinary words
# user:password@ in a URL; the password runs to the last "@" before the host (people write "p@ss"
# unescaped); bounded classes so a long line cannot make it backtrack
_URI_USERINFO = re.compile(r"([a-z][a-z0-9+.-]{0,20}://)([^\s/@:]{1,256}):([^\s/?#]{1,512})@(?=[^\s@/?#]{1,256})",
                           re.IGNORECASE)
# a token alone as the userinfo (https://TOKEN@host, as git remotes carry it); a short plain user name
# (git@, alice@) is left alone
_URI_TOKEN = re.compile(r"([a-z][a-z0-9+.-]{0,20}://)([^\s/@:?#]{12,512})@", re.IGNORECASE)
# credentials in an HTTP Authorization header (any scheme), and after a bare "Bearer"
_AUTH_SCHEME = re.compile(r"(?i)(\bauthorization[\"']?[ \t]{0,3}[:=][ \t]{0,3}[\"']?"
                          r"(?:(?:bearer|basic|token|digest|negotiate)[ \t]{1,3})?|\bbearer[ \t]{1,3})"
                          r"([A-Za-z0-9\-._~+/]{8,4096}=*)")
_SECRET_QUERY = re.compile(r"([?&](?:token|access_token|password|secret|key|api_key|sig|signature|"
                           r"x-amz-signature|x-amz-security-token|x-amz-credential)=)([^&\s]{1,1024})", re.IGNORECASE)


def mask(text: str) -> str:
    """`text` with URI passwords, secret query parameters and known secret values replaced by ***."""
    text = _URI_USERINFO.sub(r"\1\2:***@", text)
    text = _URI_TOKEN.sub(lambda m: m[0] if _plain_name(m[2]) else f"{m[1]}***@", text)
    text = _AUTH_SCHEME.sub(lambda m: m[0] if _plain_word(m[2]) else f"{m[1]}***", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= _MIN_SECRET_LEN and value in text:
            text = text.replace(value, "***")
    return text


def _plain_name(userinfo: str) -> bool:
    """A user name, not a token: letters (and . _ -) only, as in git@ or first.last@."""
    return re.fullmatch(r"[A-Za-z][A-Za-z._\-]{0,40}", userinfo) is not None


def _plain_word(value: str) -> bool:
    """'Bearer authentication', 'authorization: required': a plain word after it is prose, not a credential."""
    return value.isalpha()


_FORMATTER = logging.Formatter()


class MaskSecrets(logging.Filter):
    """Applied to console handlers: whatever any library logs is masked before it is written, the
    traceback and stack of a logged exception included. A traceback that needed masking is moved into
    the message, masked, and the exception dropped from the record: some formatters (ZenML's) format
    `exc_info` themselves and would ignore a masked `exc_text`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info or record.exc_text:
            trace = record.exc_text or _FORMATTER.formatException(record.exc_info)
            masked_trace = mask(trace)
            if masked_trace != trace:
                record.msg, record.args = f"{record.msg}\n{masked_trace}", None
                record.exc_info, record.exc_text = None, None
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def mask_logging() -> None:
    masker = MaskSecrets()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskSecrets) for f in handler.filters):
            handler.addFilter(masker)


def mlflow_credentials(credentials_file: Path | None = None) -> dict[str, str]:
    """{'token': ...} or {'username': ..., 'password': ...} from the environment, else MLflow's own
    credentials file; empty when the server needs none."""
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"token": os.environ["MLFLOW_TRACKING_TOKEN"]}
    if os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return {"username": os.environ["MLFLOW_TRACKING_USERNAME"], "password": os.environ["MLFLOW_TRACKING_PASSWORD"]}
    path = credentials_file or Path(os.environ.get("MLFLOW_CREDENTIALS_FILE", Path.home() / ".mlflow" / "credentials"))
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return {}
    section = parser["mlflow"] if parser.has_section("mlflow") else {}
    if section.get("mlflow_tracking_token"):
        return {"token": section["mlflow_tracking_token"]}
    if section.get("mlflow_tracking_username") and section.get("mlflow_tracking_password"):
        return {"username": section["mlflow_tracking_username"], "password": section["mlflow_tracking_password"]}
    return {}


def tracker_auth_config(client) -> dict[str, str]:
    """The auth part of a remote MLflow tracker's config: references into a ZenML secret that holds the
    credentials. ZenML insists on one auth method for remote servers; when the server needs none, a
    placeholder pair is stored, which an unauthenticated server ignores and which never shadows real
    credentials (those would have been found above)."""
    values = mlflow_credentials() or {"username": "llmft", "password": "unauthenticated"}
    try:
        existing = client.get_secret(MLFLOW_SECRET)
    except KeyError:
        client.create_secret(MLFLOW_SECRET, values=values)
    else:
        if existing.secret_values != values:
            client.update_secret(MLFLOW_SECRET, add_or_update_values=values,
                                 remove_values=[k for k in existing.secret_values if k not in values])
    if "token" in values:
        return {"tracking_token": f"{{{{{MLFLOW_SECRET}.token}}}}"}
    return {"tracking_username": f"{{{{{MLFLOW_SECRET}.username}}}}",
            "tracking_password": f"{{{{{MLFLOW_SECRET}.password}}}}"}
