"""The promotion gate, promotion by hand, and rollback.

The gate passes a candidate only when all of these hold, each reported with its numbers:
- it beats the baseline by `promotion.min_delta` on the primary metric: by default (`promotion.baseline:
  best`) the strongest of the prompted base (zero- and few-shot) and the simple non-LLM baseline; when
  the simple one wins, the reason says what to try next;
- it matches or beats the current champion, re-measured on the same test rows in the same run;
- its general-knowledge probe accuracy dropped by at most `promotion.max_forgetting`.
Metrics where lower is better (eval_loss, perplexity, wer) are compared the other way round.

Every move of `champion` (gate, by hand, rollback) happens under a lock scoped to the registered
model (a file lock in the project folder, so runs sharing the folder or its network mount serialise),
after re-reading the champion: a move is a compare-and-set. Every move records on the version that now holds it who
moved it, why, when, and which version held it before; rollback follows that record back. The
ZenML Model Control Plane version linked to each MLflow version mirrors it: champion ->
production, a challenger the gate refused -> staging (its earlier holder is archived).
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from llmft.config import PromotionConfig
from llmft.contracts import ChampionMove, Evaluation
from llmft.errors import UserFacingError
from llmft.locations import project_home
from llmft.registry import versions as registry

log = logging.getLogger(__name__)

PREVIOUS = "champion.previous"


class PromotionError(UserFacingError, ValueError):
    """A manual promotion or rollback that cannot be done."""


@contextmanager
def registry_lock(name: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Exclusive right to move `name`'s aliases. Waits (a move takes well under a second); a holder
    that died releases it with its process."""
    folder = project_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"registry-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.lock"
    deadline = time.monotonic() + timeout_s
    with path.open("a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PromotionError(f"{path} is held by another promotion for {timeout_s:.0f}s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Decision:
    promoted: bool
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _at_least(a: float, b: float, higher_is_better: bool) -> bool:
    return a >= b if higher_is_better else a <= b


def _verdict(ok: bool, check: str, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'} {check}: {text}"


BASELINE_NAMES = {"zero_shot": "base zero-shot", "few_shot": "base few-shot", "simple": "simple baseline"}
PROMPTED = ("zero_shot", "few_shot")
TIE_ORDER = ("zero_shot", "simple", "few_shot")  # a tie goes to the simpler: no shots, then no LLM, then shots


def pick_baseline(baselines: dict[str, float | None], mode: str, higher_is_better: bool) -> tuple[str, float]:
    """The baseline the candidate must beat: `best` is the strongest of those measured, `prompted` the
    stronger of zero- and few-shot (a tie goes to zero-shot, the simpler prompt); a named one falls
    back to zero-shot when it was not measured."""
    measured = {name: v for name, v in baselines.items() if v is not None and math.isfinite(v)}
    if not measured:
        raise ValueError(f"no baseline was measured: {baselines}")
    if mode not in ("best", "prompted"):
        name = mode if mode in measured else "zero_shot" if "zero_shot" in measured else next(iter(measured))
        return name, measured[name]
    pool = {n: v for n, v in measured.items() if mode == "best" or n in PROMPTED} or measured
    order = sorted(pool, key=lambda n: TIE_ORDER.index(n) if n in TIE_ORDER else len(TIE_ORDER))
    best = max(order, key=lambda n: pool[n]) if higher_is_better else min(order, key=lambda n: pool[n])
    return best, pool[best]


def simple_wins_advice(unused_rows: int, epochs_seen: float | None = None) -> str:
    """What to try when a non-LLM baseline beats the fine-tuned model, naming the config keys; first the
    time budget when it stopped training short of one pass over the rows."""
    more = (f"train on the {unused_rows} kept rows data.max_train_rows left out (data.max_train_rows: null uses "
            "every one)" if unused_rows else "add labelled rows to data.source (data.max_train_rows left none out)")
    short = (f"training saw {epochs_seen:.2f} epochs of the rows before the time budget stopped it: raise "
             "train.max_minutes (or run on a faster machine, a GPU); " if epochs_seen is not None and epochs_seen < 0.95
             else "")
    return (f"the simple baseline beats fine-tuning here: {short}{more}, train longer (train.max_steps, "
            "train.epochs) or at another train.learning_rate, try a larger model.base; or ship the simple baseline")


def gate_baselines(evaluation: Evaluation, forgetting_drop: float | None, cfg: PromotionConfig,
                   unused_rows: int = 0, epochs_seen: float | None = None,
                   forgetting_advice: str = "") -> tuple[Decision, str]:
    """The gate on an evaluation (`decide`) against the baseline `promotion.baseline` picks among the
    base zero-shot, the base few-shot and the simple non-LLM baseline, and which one that was. The
    base check's reason says what to try next when the simple baseline is the one that wins, and
    carries the evaluation's warnings (a collapse to one answer); a failed forgetting check adds the
    training method's own `forgetting_advice`."""
    metric, metrics = evaluation.primary_metric, evaluation.metrics
    values = {"zero_shot": (metrics.get("base") or {}).get(metric),
              "few_shot": (metrics.get("base_few_shot") or {}).get(metric),
              "simple": (metrics.get("simple_baseline") or {}).get(metric)}
    used, value = pick_baseline(values, cfg.baseline, evaluation.higher_is_better)
    label = BASELINE_NAMES[used]
    if used == "few_shot":
        label += f" ({evaluation.few_shot.get('k', 0):.0f} shots)"
    elif used == "simple" and evaluation.simple_baseline_method:
        label += f" ({evaluation.simple_baseline_method})"
    if cfg.baseline not in ("best", "prompted", used):
        label += f"; {BASELINE_NAMES[cfg.baseline]} was not measured"
    champion = metrics.get("champion")
    decision = decide(metric, evaluation.higher_is_better, (metrics["finetuned"] or {})[metric], value,
                      champion[metric] if champion else None, evaluation.champion_version, forgetting_drop, cfg,
                      champion_note=evaluation.champion_note, baseline=label, forgetting_advice=forgetting_advice)
    base_line = decision.reasons[0]  # one line per check: the advice and warnings belong to the base check
    if used == "simple" and base_line.startswith("FAIL"):
        base_line += "; " + simple_wins_advice(unused_rows, epochs_seen)
    for warning in evaluation.warnings:
        base_line += f"; warning: {warning}"
    decision.reasons[0] = base_line
    return decision, used


FORGETTING_ADVICE = ("the model lost general answers it had: mix general rows back into training (data.replay, "
                     "e.g. 0.1 rows of builtin:general per training row), train fewer steps (train.max_steps) or "
                     "at a lower train.learning_rate, or allow more (promotion.max_forgetting)")


def decide(metric: str, higher_is_better: bool, candidate: float, base: float, champion: float | None,
           champion_version: str | None, forgetting_drop: float | None, cfg: PromotionConfig,
           champion_note: str = "no current champion", baseline: str = "base",
           forgetting_advice: str = "") -> Decision:
    """`base` is the baseline's value on `metric`; `baseline` names it in the reason line;
    `forgetting_advice` (the training method's own) follows the general advice when the probe fails."""
    word, sign = (">=", "+") if higher_is_better else ("<=", "-")
    need = base + cfg.min_delta if higher_is_better else base - cfg.min_delta
    checks = [(_at_least(candidate, need, higher_is_better), "base",
               f"{metric} {candidate:.4f} {word} {baseline} {base:.4f} {sign} min_delta {cfg.min_delta} = "
               f"{need:.4f} (delta {candidate - base:+.4f})")]
    if champion is None:
        checks.append((True, "champion", champion_note))
    elif not cfg.beat_champion:
        checks.append((True, "champion", f"not required (promotion.beat_champion=false; v{champion_version} "
                                         f"re-measured {champion:.4f})"))
    else:
        checks.append((_at_least(candidate, champion, higher_is_better), "champion",
                       f"{metric} {candidate:.4f} {word} champion v{champion_version} {champion:.4f}, re-measured "
                       f"on this test split (delta {candidate - champion:+.4f})"))
    if forgetting_drop is None:
        checks.append((True, "forgetting", "probe not applicable to this task"))
    else:
        kept = forgetting_drop <= cfg.max_forgetting
        checks.append((kept, "forgetting",
                       f"probe accuracy drop {forgetting_drop:+.4f} <= max_forgetting {cfg.max_forgetting}"
                       + ("" if kept else f"; {FORGETTING_ADVICE}")
                       + ("" if kept or not forgetting_advice else f"; {forgetting_advice}")))
    return Decision(promoted=all(ok for ok, _, _ in checks), reasons=[_verdict(*c) for c in checks])


def champion_still(name: str, evaluated: str | None) -> str | None:
    """Compare-and-set guard: why promotion must not proceed because the champion moved during the
    run (another run promoted), or None when it is still the version this run measured."""
    now = registry.current_alias_version(name)
    if now == evaluated or (evaluated is None and now is None):
        return None
    return (f"FAIL champion: @champion moved to v{now} during this run (this run measured "
            f"{'v' + evaluated if evaluated else 'none'}); run again to compare with it")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_then_move(name: str, version: str, record: dict[str, str]) -> None:
    """Write the move's record on `version`, then move `champion` to it. The alias never points at a
    version without its record (rollback follows PREVIOUS); if the move fails, the version's tags are
    put back as they were, so no record claims a move that did not happen."""
    before = registry.version_tags(name, version)
    registry.set_version_tags(name, version, record)
    try:
        registry.set_alias(name, version)
    except BaseException:
        _restore_tags(name, version, before, record)
        raise


def _restore_tags(name: str, version: str, before: dict[str, str], written: dict[str, str]) -> None:
    """Undo `written` on a version whose tags were `before` (after a champion move that failed)."""
    try:
        registry.set_version_tags(name, version, {k: before[k] for k in written if k in before})
        registry.delete_version_tags(name, version, [k for k in written if k not in before])
    except Exception:  # the move's own error matters more; the tags say what was attempted
        log.warning("could not restore the tags of %s v%s after a failed champion move", name, version)


def make_champion(name: str, version: str, how: str, by: str | None = None, reason: str = "") -> str | None:
    """Move `champion` to `version`, recording who/why/when and the previous holder; returns it."""
    previous = registry.current_alias_version(name)
    record = {"champion.how": how, "champion.by": by or getpass.getuser(), "champion.reason": reason or how,
              "champion.at": _now()}
    if previous is not None and previous != version:
        record[PREVIOUS] = previous
    record_then_move(name, version, record)
    mirror_zenml_stage(name, version, "production")
    return previous


def promote_by_hand(name: str, version: str, by: str | None, reason: str) -> ChampionMove:
    """Make `version` champion. It must be a ready version of the same task as the current champion:
    a classifier never replaces a chat model by a slip of the version number."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        found = client.get_model_version(name, version)
    except MlflowException:
        raise PromotionError(f"registered model {name!r} has no version {version}") from None
    if found.status != "READY":
        raise PromotionError(f"{name} v{version} is {found.status}, not READY: it cannot serve")
    with registry_lock(name):
        current = registry.current_alias_version(name)
        if current == version:
            raise PromotionError(f"{name} v{version} is already @{registry.CHAMPION}")
        if current is not None:
            task, champion_task = found.tags.get("task"), registry.version_tags(name, current).get("task")
            if task != champion_task:
                raise PromotionError(f"{name} v{version} is a {task or 'untagged'} model but champion v{current} is "
                                     f"{champion_task or 'untagged'}: register it under another registry.model_name")
        previous = make_champion(name, version, "manual", by, reason)
    log.info("promoted %s v%s by hand (previous champion: %s)", name, version, previous)
    return ChampionMove(model=name, champion=version, previous_champion=previous, action="promote")


def rollback(name: str, by: str | None, reason: str) -> ChampionMove:
    """Move `champion` back to the version that held it before the current one."""
    with registry_lock(name):
        current = registry.current_alias_version(name)
        if current is None:
            raise PromotionError(f"registered model {name!r} has no @{registry.CHAMPION} to roll back")
        target = registry.version_tags(name, current).get(PREVIOUS)
        if not target:
            raise PromotionError(f"{name} v{current} is the first champion: there is no previous one to roll back to")
        # both records are written before the alias moves, and undone if it does not; the restored
        # version keeps its own record (and so its own previous holder): rollback can repeat
        rolled = {"rolled_back.by": by or getpass.getuser(), "rolled_back.reason": reason or "rollback",
                  "rolled_back.at": _now()}
        before = registry.version_tags(name, current)
        registry.set_version_tags(name, current, rolled)
        why = f"rollback from v{current}: {reason or 'rollback'}"
        try:
            record_then_move(name, target, {"champion.how": "rollback", "champion.at": _now(),
                                            "champion.by": by or getpass.getuser(), "champion.reason": why})
        except BaseException:
            _restore_tags(name, current, before, rolled)
            raise
        mirror_zenml_stage(name, target, "production")
        log.info("rolled %s back from v%s to v%s", name, current, target)
        return ChampionMove(model=name, champion=target, previous_champion=current, action="rollback")


def mirror_zenml_stage(name: str, version: str, stage: str) -> None:
    """Set the stage of the ZenML model version linked to this MLflow version (if one is linked)."""
    zenml_version = registry.version_tags(name, version).get("zenml_model_version_id")
    if not zenml_version:
        log.info("%s v%s has no linked ZenML model version; stage not mirrored", name, version)
        return
    from uuid import UUID

    from zenml.client import Client

    try:
        Client().update_model_version(model_name_or_id=name, version_name_or_id=UUID(zenml_version), stage=stage,
                                      force=True)
    except (KeyError, ValueError):
        log.warning("ZenML model version %s of %s not found; stage not mirrored", zenml_version, name)


def drop_unregistered_zenml_version(run_name: str) -> None:
    """After a failed run: delete the ZenML model version that run (found by its unique name, never
    "the newest run", which may be a concurrent one) created, if no registry version was linked to
    it, so the Model Control Plane holds no half-registered candidates."""
    from zenml.client import Client

    try:
        client = Client()
        run = client.get_pipeline_run(run_name)
        version = run.model_version
        if version is not None and "mlflow_version" not in version.run_metadata:
            client.delete_model_version(version.id)
            log.info("deleted ZenML model version %s of %s: the failed run registered nothing", version.number,
                     version.model.name)
    except Exception as exc:  # cleanup must never hide the run's own error
        log.warning("could not clean up the failed run's ZenML model version: %s", exc)
