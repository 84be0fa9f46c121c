"""Where the project keeps its local state.

Everything a run writes locally lives under one project folder (default `.llmft/` in the
current directory, or `$LLMFT_HOME`): the MLflow sqlite store and artifacts, the ZenML config
when none is set, and the deploy server's pid/log. Converted model weights are cached per user
(`$LLMFT_CACHE`, default `~/.cache/llmft`) because they are shared by every project folder.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmft.credentials import mask


def project_home() -> Path:
    home = Path(os.environ.get("LLMFT_HOME", ".llmft")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def checkpoints_root() -> Path:
    """Training checkpoints, one folder per (settings, data) pair, removed when training finishes."""
    path = project_home() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def claim_checkpoint_dir(key: str) -> Iterator[tuple[Path, bool]]:
    """The checkpoint folder for `key`, held exclusively while training: (folder, shared). A hand-run
    and a scheduled tick with the same settings and data share a key; the second one to start gets a
    folder of its own (shared=False: it cannot resume, and it never deletes the first one's
    checkpoints). The lock dies with its process, so a killed run's folder is resumable."""
    root = checkpoints_root()
    lock_path = root / f"{key}.lock"
    with lock_path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            own = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root))
            try:
                yield own, False
            finally:
                shutil.rmtree(own, ignore_errors=True)
            return
        try:
            yield root / key, True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def scratch_dir(prefix: str) -> Path:
    """A folder for a step's file outputs. ZenML copies a returned folder into its artifact store, so
    the scratch copy is removed when the process exits instead of piling up in /tmp."""
    root = project_home() / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    atexit.register(shutil.rmtree, path, True)
    return path


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a part:
    a temporary file beside it (created 0600, so a secret is never readable by others), synced, given
    `mode`, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_cache() -> Path:
    root = Path(os.environ.get("LLMFT_CACHE", Path.home() / ".cache" / "llmft")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def store_key(uri: str) -> str:
    """A short stable key for a tracking store, for caches shared by every project and store: the URI
    without credentials (a sqlite or file store by its absolute path), hashed."""
    import hashlib
    from urllib.parse import urlsplit, urlunsplit

    if uri.startswith("sqlite:///"):
        canonical = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    elif "://" not in uri or uri.startswith("file:"):
        canonical = Path(uri.removeprefix("file://")).expanduser().resolve().as_uri()
    else:
        parts = urlsplit(uri)
        canonical = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def registered_cache_dir(uri: str, name: str, version: str, origin: str) -> Path:
    """Where a registered version is cached as a plain model folder: keyed by the store it is in and by
    what the version is (`origin`: its run id and source), so two stores' (or two projects') `v1` of the
    same name, or a version number reused after a delete, never share files."""
    import hashlib

    digest = hashlib.sha256(origin.encode()).hexdigest()[:12]
    return model_cache() / "registered" / store_key(uri) / name / f"{version}-{digest}"


def local_tracking_uri() -> str:
    return f"sqlite:///{project_home() / 'mlflow.db'}"


def local_artifact_root() -> str:
    path = project_home() / "mlartifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


# MLFLOW_TRACKING_URI as the process started (this module is imported by run.py, the steps and the server
# before any pipeline step runs). ZenML's MLflow experiment tracker ends every tracked step with
# `mlflow.set_tracking_uri("")`, and MLflow mirrors that into os.environ["MLFLOW_TRACKING_URI"] = "": read
# from the environment alone, every later untracked step (evaluate_champion, promote, deploy, export)
# silently fell back to the project's local store.
_STARTED_WITH_URI: str | None = os.environ.get("MLFLOW_TRACKING_URI") or None


def tracking_uri() -> str:
    """The configured store: MLFLOW_TRACKING_URI when set (a server, or a store outside the project), the
    value it had when the process started if something has since emptied or removed it, else the
    project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or _STARTED_WITH_URI or local_tracking_uri()


def use_tracking_uri() -> str:
    """Point MLflow (and the environment subprocesses inherit) at the configured store; returns it."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_tracking_uri() -> None:
    """Before a registry read that relies on MLflow's current store: if nothing has chosen one, or a
    tracked step's clean-up reset it to "", use the configured store rather than MLflow's default."""
    import mlflow

    if not mlflow.is_tracking_uri_set():
        use_tracking_uri()


def ui_args(uri: str, port: int = 5000) -> list[str] | None:
    """`mlflow ui` arguments for a local store; None when the URI is a server (open it instead)."""
    if not uri.startswith("sqlite:"):
        return None
    return ["mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", local_artifact_root(),
            "--host", "127.0.0.1", "--port", str(port)]


def ui_command(uri: str, port: int = 5000) -> str:
    args = ui_args(uri, port)
    return shlex.join(args) if args else f"open {mask(uri)} in a browser"
