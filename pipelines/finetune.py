"""fingerprint -> ingest -> gate/tokenize -> split -> export -> fine-tune -> forgetting probe (base cached,
candidate) and guard (a candidate over the bound scaled back toward the base) -> evaluate (base zero-shot, base
few-shot, the simple non-LLM baseline, champion and candidate, each cached) -> compare -> register (challenger)
-> promote (gate against the best baseline, the simple one included) -> deploy if promoted (deploy.on_promotion)
-> export if promoted (export.after_promotion).

Unchanged data, settings, base model and code: the fine-tune step and the candidate's scores come from
ZenML's cache (train.reuse), the run re-uses the version registered for them, and only the comparison,
the gate and the MLflow records run again."""

from __future__ import annotations

from typing import Any

from zenml import pipeline
from zenml.enums import ExecutionMode

from llmft.config import Config
from llmft.contracts import ChampionRef
from llmft.tasks.base import TaskSpec
from pipelines.data import PreparedData, prepare_data
from steps.deploy import deploy_if_promoted
from steps.evaluate import (
    compare_models,
    draw_shots,
    evaluate_base,
    evaluate_base_few_shot,
    evaluate_candidate,
    evaluate_champion,
    evaluate_simple_baseline,
    guard_forgetting,
    measure_forgetting,
    probe_base,
    probe_candidate,
    sample_test,
)
from steps.export import export_if_promoted
from steps.registry import promote, register
from steps.train import finetune, track_config


@pipeline(name="finetune", execution_mode=ExecutionMode.FAIL_FAST)
def finetune_pipeline(cfg: Config, task: TaskSpec, champion: ChampionRef | None, base_identity: str,
                      code_version: str) -> None:
    """`base_identity` and `code_version` key the caches of the base model's evaluation and probe."""
    track_config(cfg, task)
    prepared = prepare_data(cfg, task, code_version)
    train_to_deploy(cfg, task, champion, base_identity, code_version, prepared, cfg.train)


def train_to_deploy(cfg: Config, task: TaskSpec, champion: ChampionRef | None, base_identity: str,
                    code_version: str, prepared: PreparedData, train_cfg: Any) -> None:
    """Everything after the data stages, shared by the finetune and sweep pipelines; `train_cfg` is
    `cfg.train` or the sweep's best settings (an artifact)."""
    name = cfg.registry.model_name
    train, validation, test, split = prepared.train, prepared.validation, prepared.test, prepared.split
    base_key = f"{base_identity} code {code_version}"  # prompting, training and scoring live in the library
    trained, training = finetune(train, validation, split, task, cfg.model, train_cfg, base_key)
    scoring, probing = cfg.eval.scoring(cfg.train.max_seq_length), cfg.eval.probing()
    base_answers = probe_base(task, cfg.model, probing, base_key)
    trained_answers = probe_candidate(trained, training, base_answers, cfg.model, probing, base_key)
    trained, training, candidate_answers = guard_forgetting(trained, training, base_answers, trained_answers,
                                                            cfg.model, probing, cfg.promotion.max_forgetting,
                                                            cfg.promotion.forgetting_guard, base_key)
    rows, sample = sample_test(test, task, cfg.eval.row_draw())
    shots = draw_shots(train, task, cfg.eval.shot_draw())
    base = evaluate_base(rows, task, cfg.model, split, scoring, base_key)
    base_few = evaluate_base_few_shot(rows, shots, task, cfg.model, split, scoring, base_key)
    simple = evaluate_simple_baseline(train, validation, rows, task, split, cfg.eval.primary_metric, code_version)
    current = evaluate_champion(rows, task, champion, split, scoring, cfg.eval.champion, cfg.model.trust_remote_code)
    candidate = evaluate_candidate(trained, training, rows, task, cfg.model, scoring, base_key)
    evaluation = compare_models(candidate, rows, sample, base, base_few, current, task, cfg.eval.reporting(), scoring,
                                simple)
    forgetting = measure_forgetting(base_answers, candidate_answers, cfg.promotion.max_forgetting)
    registration = register(trained, training, evaluation, task, cfg.model, name, prepared.fingerprint)
    decision = promote(registration, evaluation, forgetting, training, prepared.dataset, task, cfg.promotion,
                       train_cfg, champion.version if champion else None, cfg.model.base, cfg.eval.max_new_tokens)
    deploy_if_promoted(decision, name, cfg.deploy, cfg.model.trust_remote_code)
    export_if_promoted(decision, name, cfg.export)
