"""Issue 24, item 8 (shipped infra): the systemd unit runs a command that exists with flags the server
takes, and the team compose file refuses placeholder secrets and keeps MinIO's port on this host."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmft.config_serving import ServerLimits

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "infra" / "systemd" / "llmft-serve.service"
COMPOSE = ROOT / "infra" / "team" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "infra" / "team" / ".env.example"
SECRETS = ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "ZENML_S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD",
           "MLFLOW_FLASK_SERVER_SECRET_KEY")


def _exec_start(unit: Path) -> list[str]:
    """ExecStart of a unit file, continuation lines joined, split as systemd splits it (quotes)."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def _interpolate(text: str, values: dict[str, str]) -> str:
    """docker compose's interpolation: ${VAR}, ${VAR:?msg} (unset or empty: error), ${VAR:-default}; $$ -> $."""
    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        value = values.get(name, "")
        if op == ":?" and not value:
            raise ValueError(f"required variable {name} is missing a value: {rest}")
        return value or (rest if op == ":-" else "")

    text = re.sub(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[?-])([^}]*))?\}", one, text)
    return text.replace("$$", "$")


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _needs(services: dict, name: str) -> set[str]:
    """Every service `name` waits for, directly or through others."""
    direct = set(services[name].get("depends_on") or [])
    return direct.union(*(_needs(services, d) for d in direct))


def test_the_serve_units_command_exists_and_takes_its_flags():
    args = _exec_start(UNIT)
    assert args[0].endswith("/python") and args[1] == "-m"
    command = [sys.executable, *args[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert helped.returncode == 0, helped.stderr[-2000:]
    flags = [a.split("=", 1)[0] for a in args[3:] if a.startswith("--")]
    assert flags, args
    for flag in flags:
        assert flag in helped.stdout, f"{flag} is not a flag of {args[2]}"
    values = dict(zip(args[3::2], args[4::2], strict=False))
    ServerLimits.checked(json.loads(values.get("--limits", "{}")))  # the limits are valid deploy.* keys
    # and the server's own parser accepts every flag with its value (it stops at the model: nothing loads)
    from llmft.serve import app

    seen: dict[str, object] = {}

    def stop(model_uri: str, trust_remote_code: bool = False, precision: str = "auto") -> None:
        seen["model_uri"] = model_uri
        raise SystemExit(0)

    real = app.load_served
    app.load_served = stop
    try:
        with pytest.raises(SystemExit) as ended:
            app.main(args[3:])
    finally:
        app.load_served = real
    assert ended.value.code == 0 and seen["model_uri"] == values["--model-uri"]


def test_compose_refuses_empty_secrets_and_env_example_ships_none():
    text = COMPOSE.read_text()
    example = _env_file(ENV_EXAMPLE)
    for name in SECRETS:
        assert f"${{{name}:?" in text, f"{name} is not required in {COMPOSE.name}"
        assert example.get(name) == "", f".env.example ships a value for {name}: {example.get(name)!r}"
    with pytest.raises(ValueError, match="required variable"):
        _interpolate(text, example)  # `cp .env.example .env` unedited: compose refuses to start


@pytest.mark.parametrize("value, ok", [("change-me-postgres", False), ("CHANGE-ME-please-now", False),
                                        ("sh0rt!", False), ("Qm9vdHN0cmFwIGEgcmVhbCBzZWNyZXQ", True)])
def test_the_check_secrets_job_refuses_placeholders(value: str, ok: bool):
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    check = services["check-secrets"]
    for name in set(services) - {"check-secrets"}:  # every service starts only after the check passed
        assert "check-secrets" in _needs(services, name), name
    assert services["postgres"]["depends_on"]["check-secrets"] == {"condition": "service_completed_successfully"}
    values = {name: "R3al-secret-value-" + name.lower() for name in SECRETS}
    values["POSTGRES_PASSWORD"] = value
    environment = {k: _interpolate(str(v), values) for k, v in check["environment"].items()}
    script = _interpolate(check["entrypoint"][2], values)
    assert check["entrypoint"][:2] == ["sh", "-c"]
    done = subprocess.run(["sh", "-c", script], env={"PATH": os.environ["PATH"], **environment},
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert "POSTGRES_PASSWORD" in done.stderr and value not in done.stderr  # names the variable, not the value


def test_minio_is_published_on_this_host_only():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    ports = [str(p) for p in services["minio"].get("ports", [])]
    assert any(p.endswith(":9000") for p in ports), ports
    for port in ports:
        host = port.rsplit(":", 2)[0] if port.count(":") == 2 else None
        assert host == "127.0.0.1", f"minio publishes {port} on every interface"
