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


def model_cache() -> Path:
    root = Path(os.environ.get("LLMFT_CACHE", Path.home() / ".cache" / "llmft")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def local_tracking_uri() -> str:
    return f"sqlite:///{project_home() / 'mlflow.db'}"


def local_artifact_root() -> str:
    path = project_home() / "mlartifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a server), else the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def ui_args(uri: str, port: int = 5000) -> list[str] | None:
    """`mlflow ui` arguments for a local store; None when the URI is a server (open it instead)."""
    if not uri.startswith("sqlite:"):
        return None
    return ["mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", local_artifact_root(),
            "--host", "127.0.0.1", "--port", str(port)]


def ui_command(uri: str, port: int = 5000) -> str:
    args = ui_args(uri, port)
    return shlex.join(args) if args else f"open {mask(uri)} in a browser"
