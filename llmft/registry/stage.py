"""The register and promote stages: the candidate becomes a new registry version (`challenger`)
with its lineage; the gate decides whether it becomes `champion`, and the model card says why."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from llmft.base_model import resolve_base_model
from llmft.config import ModelConfig, PromotionConfig, TrainConfig
from llmft.contracts import (
    DatasetInfo,
    Evaluation,
    Forgetting,
    PromotionDecision,
    Registration,
    TrainingResult,
)
from llmft.registry import model_card
from llmft.registry import versions as registry
from llmft.registry.promotion import (
    champion_still,
    gate_baselines,
    make_champion,
    mirror_zenml_stage,
    registry_lock,
)
from llmft.registry.prompts import link_to_run, register_training_prompt
from llmft.tasks import get_task
from llmft.tasks.base import TaskSpec
from llmft.train.methods import get_method, is_adapter, load_trained
from llmft.train.stage import log_training_summary

log = logging.getLogger(__name__)


def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def register_candidate(trained_model: Path, training: TrainingResult, evaluation: Evaluation, spec: TaskSpec,
                       model: ModelConfig, name: str, fingerprint: str, lineage: dict[str, str],
                       zenml_model: Any | None = None) -> Registration:
    """A new registry version with its lineage tags, as the `challenger`, linked to the ZenML model version.
    When the training was reused from an earlier run (ZenML's cache), that run's version is this very
    model: it is returned, and nothing new is registered."""
    import json

    import mlflow

    run_id = mlflow.active_run().info.run_id
    reused = training.trained_in_run if training.trained_in_run not in (None, run_id) else None
    if reused:
        mlflow.set_tag("train.reused_from_run", reused)
        log_training_summary(training)
        earlier = registry.version_of_run(name, reused)
        if earlier is not None:
            version, version_tags = earlier
            mlflow.set_tag("registry.reused_version", version.version)
            log.info("training reused from run %s: %s v%s is this model, nothing new registered", reused, name,
                     version.version)
            if zenml_model is not None:
                zenml_model.log_metadata({"mlflow_model": name, "mlflow_version": version.version,
                                          "mlflow_model_uri": version.model_uri, "reused_from_run": reused})
            return Registration(**version.as_dict(), prompt_uri=version_tags.get("prompt_uri"), reused_from_run=reused)

    tags = {**lineage, "git_commit": git_commit(), "dataset_fingerprint": fingerprint, "base_model": model.base,
            "method": training.method, "task": spec.name, "primary_metric": evaluation.primary_metric}
    if training.labels is not None:
        tags["labels"] = json.dumps(training.labels)
    if spec.instruction:
        tags["instruction"] = spec.instruction[:4900]
    if zenml_model is not None:
        tags.update({"zenml_model_version_id": str(zenml_model.id), "zenml_model_version": str(zenml_model.number)})
    for role, values in evaluation.metrics.items():
        tags.update({f"metric.{role}.{k}": f"{v:.4f}" for k, v in (values or {}).items()})
    if is_adapter(trained_model):  # the small adapter too, for reuse on the same base
        mlflow.log_artifacts(str(trained_model), "adapter")
        tags["adapter_uri"] = f"runs:/{run_id}/adapter"
    loaded, tokenizer = load_trained(resolve_base_model(model), trained_model, training.labels)
    # the prompt first: a version is never registered without the prompt it was trained with
    prompt = register_training_prompt(name, spec.name, spec.instruction, tokenizer.chat_template or "")
    tags["prompt_uri"] = prompt.uri
    mlflow.set_tag("prompt_uri", prompt.uri)
    link_to_run(prompt.uri, run_id)
    version = registry.register_model(loaded, tokenizer, name, tags, get_task(spec.name).registry_flavor)
    if zenml_model is not None:
        zenml_model.log_metadata({"mlflow_model": version.name, "mlflow_version": version.version,
                                  "mlflow_model_uri": version.model_uri})
    return Registration(**version.as_dict(), prompt_uri=prompt.uri)


def forgetting_advice(train: TrainConfig, training: TrainingResult) -> str:
    """What a failed forgetting check adds to its reason: the method's own advice, then what the forgetting
    guard did (no share within the bound, or a share that the probe still found over it)."""
    return "; ".join(part for part in (get_method(train.method).forgetting_advice, training.guard_note) if part)


def promote_candidate(registration: Registration, evaluation: Evaluation, forgetting: Forgetting,
                      training: TrainingResult, dataset: DatasetInfo, spec: TaskSpec, promotion: PromotionConfig,
                      train: TrainConfig, champion_at_start: str | None, base_model: str,
                      max_new_tokens: int) -> PromotionDecision:
    """The gate: beats the baseline (promotion.baseline: by default the strongest of the zero- and
    few-shot base and the simple non-LLM baseline), matches the re-measured champion, forgot little;
    the champion must still be the one this run started with (compare-and-set). Then the model card."""
    import mlflow

    decision, used = gate_baselines(evaluation, forgetting.drop, promotion, dataset.unused, training.epochs_seen,
                                    forgetting_advice(train, training))
    name, version = registration.name, registration.version
    with registry_lock(name):  # compare-and-set: nobody moves the champion between the check and the move
        moved = champion_still(name, champion_at_start)
        reasons = decision.reasons + ([moved] if moved else [])
        previous = registry.current_alias_version(name)
        # a reused training whose version holds @champion: the gate's numbers are reported, nothing moves
        already = registration.reused_from_run is not None and moved is None and previous == version
        promoted = decision.promoted and moved is None and not already
        if promoted:
            make_champion(name, version, "gate", reason="passed the promotion gate")
    if already:
        reasons.append(f"UNCHANGED champion: v{version} already holds @champion; this run reused its training "
                       f"(MLflow run {registration.reused_from_run}), so nothing moved")
    elif not promoted:
        mirror_zenml_stage(name, version, "staging")
    for reason in reasons:
        log.info("promotion %s", reason)
    verdict = "unchanged" if already else "promoted" if promoted else "rejected"
    mlflow.set_tags({"promotion.decision": verdict, "promotion.reasons": " | ".join(reasons)[:4900]})
    result = PromotionDecision(promoted=promoted, reasons=reasons, previous_champion=previous,
                               champion=version if promoted else previous, baseline_used=used, already_champion=already)
    mlflow.set_tag("promotion.baseline", used)
    mlflow.log_metric("promotion/promoted", float(promoted))
    mlflow.log_dict(result.model_dump(), "promotion/decision.json")
    card = model_card.render(name, version, spec, base_model, dataset, training, train, evaluation, forgetting,
                             result, max_new_tokens)
    mlflow.log_text(card, "model_card.md")
    if not already:  # the champion keeps the record of the run that promoted it
        registry.set_version_tags(name, version, {"promotion.decision": verdict,
                                                  "promotion.reasons": " | ".join(reasons)[:4900]})
        registry.set_description(name, version, card)
    mlflow.set_tag("mlflow.note.content", run_description(spec, dataset, training, evaluation, result))
    return result


def run_description(spec: TaskSpec, dataset: DatasetInfo, training: TrainingResult, evaluation: Evaluation,
                    decision: PromotionDecision) -> str:
    """The MLflow run's description: task, data, what trained, verdict."""
    metric = evaluation.primary_metric
    tuned, base = evaluation.metrics["finetuned"] or {}, evaluation.metrics["base"] or {}
    return (f"{spec.name} ({spec.reason}) on {dataset.source}: {dataset.rows['train']} training rows, "
            f"{training.method} for {training.steps} steps. {metric}: base {base.get(metric, float('nan')):.4f} -> "
            f"fine-tuned {tuned.get(metric, float('nan')):.4f} on {evaluation.sample.n} test rows. "
            f"{'Promoted to champion.' if decision.promoted else 'Not promoted.'}")
