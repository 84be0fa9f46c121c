"""Scheduled retraining: run the finetune pipeline at each cron tick, only when there is new data.

Each tick, in order:
1. take the project's retrain lock (a file lock: two ticks, or a tick and a hand-started run of
   `--tick`, never train at once; a tick that finds it held is skipped);
2. fingerprint the data source; with `retrain.only_if_new_data`, a tick whose fingerprint equals the
   one the current champion was trained on is skipped;
3. otherwise run the pipeline.
Every tick is logged: a line on stdout, a line in `<project home>/retrain/ticks.jsonl`, and an
MLflow run (`retrain-tick`, tags `retrain.decision` and `retrain.reason`) in the experiment, so the
UI shows why each tick ran or skipped.

`run_schedule` is the foreground loop used on orchestrators that ignore schedules (the local one);
cron or a systemd timer can call a single tick instead (infra/).
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from llmft.config import Config
from llmft.data.ingest import source_fingerprint
from llmft.errors import UserFacingError
from llmft.extras import require
from llmft.locations import project_home, tracking_uri
from llmft.registry import versions as registry

log = logging.getLogger(__name__)


class ScheduleError(UserFacingError, ValueError):
    """A cron expression that cannot be used."""


class LockHeld(RuntimeError):
    pass


@dataclass
class Tick:
    at: str
    decision: str  # ran | skipped | failed
    reason: str
    fingerprint: str | None
    champion_version: str | None
    zenml_run_id: str | None = None

    def line(self) -> str:
        return f"[{self.at}] retrain tick {self.decision}: {self.reason}"


@contextmanager
def retrain_lock() -> Iterator[None]:
    path = project_home() / "retrain.lock"
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another retrain run holds {path}") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{datetime.now(UTC).isoformat(timespec='seconds')}\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _champion_fingerprint(cfg: Config) -> tuple[str | None, str | None]:
    name = cfg.registry.model_name
    version = registry.current_alias_version(name)
    if version is None:
        return None, None
    return version, registry.version_tags(name, version).get("dataset_fingerprint")


def _record(cfg: Config, tick: Tick) -> None:
    print(tick.line(), flush=True)
    folder = project_home() / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "ticks.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(tick)) + "\n")
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())  # a pipeline run just now may have reset it
        mlflow.set_experiment(cfg.tracking.experiment_name)
        with mlflow.start_run(run_name=f"retrain-tick-{tick.decision}"):
            mlflow.set_tags({"retrain.decision": tick.decision, "retrain.reason": tick.reason[:4900],
                             "retrain.at": tick.at, "dataset_fingerprint": tick.fingerprint or "",
                             "champion_version": tick.champion_version or "",
                             "zenml_run_id": tick.zenml_run_id or ""})
    except Exception as exc:  # a tracking hiccup must not stop the schedule
        log.warning("could not log the tick to MLflow: %s", exc)


def tick(cfg: Config, run_pipeline: Callable[[], Any]) -> Tick:
    """One tick: lock, compare fingerprints, maybe run. Never raises for a failed run (logged)."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        with retrain_lock():
            fingerprint = source_fingerprint(cfg.data.source)
            version, trained_on = _champion_fingerprint(cfg)
            if cfg.retrain.only_if_new_data and trained_on == fingerprint:
                result = Tick(at, "skipped", f"data {fingerprint} is what champion v{version} was trained on "
                                             "(retrain.only_if_new_data)", fingerprint, version)
            else:
                why = ("no champion yet" if version is None else
                       f"new data {fingerprint} (champion v{version} was trained on {trained_on})"
                       if cfg.retrain.only_if_new_data else "retrain.only_if_new_data is off")
                try:
                    run = run_pipeline()
                    result = Tick(at, "ran", why, fingerprint, version, str(getattr(run, "id", "")) or None)
                except Exception as exc:
                    result = Tick(at, "failed", f"{why}; the run failed: {type(exc).__name__}: {exc}".splitlines()[0],
                                  fingerprint, version)
    except LockHeld as exc:
        result = Tick(at, "skipped", str(exc), None, None)
    except Exception as exc:  # the source vanished, the registry is down, ...: this tick fails, the next may not
        result = Tick(at, "failed", f"the tick failed before a run: {type(exc).__name__}: {exc}".splitlines()[0],
                      None, None)
    _record(cfg, result)
    return result


def check_cron(cron: str) -> None:
    require("croniter", "schedule", "llmft finetune --schedule")
    from croniter import croniter

    if not croniter.is_valid(cron):
        raise ScheduleError(f"--schedule {cron!r}: not a cron expression (five fields, e.g. '0 3 * * *'; "
                            "a sixth field counts seconds)")


def _next_after(cron: str, moment: float) -> float:
    require("croniter", "schedule", "llmft finetune --schedule")
    from croniter import croniter

    return croniter(cron, datetime.fromtimestamp(moment)).get_next(float)


def run_schedule(cron: str, cfg: Config, run_pipeline: Callable[[], Any], max_ticks: int | None = None,
                 ) -> list[Tick]:
    """Stay in the foreground and tick at each cron time. Ticks that fall while a run is still going
    are not queued: the next tick is the first cron time after the run ends (the count is printed)."""
    check_cron(cron)
    ticks: list[Tick] = []
    print(f"retraining on schedule {cron!r}; Ctrl-C to stop", flush=True)
    when = _next_after(cron, time.time())
    while max_ticks is None or len(ticks) < max_ticks:
        time.sleep(max(when - time.time(), 0))
        try:
            ticks.append(tick(cfg, run_pipeline))
        except Exception as exc:  # even recording the tick failed (disk full?): say so and keep the schedule
            print(f"retrain tick could not be recorded: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
            ticks.append(Tick(datetime.now(UTC).isoformat(timespec="seconds"), "failed", str(exc), None, None))
        missed, when = 0, _next_after(cron, when)
        while when <= time.time() and missed < 100_000:
            missed, when = missed + 1, _next_after(cron, when)
        if missed:
            print(f"{missed} tick(s) fell during that run and were not queued", flush=True)
    return ticks
