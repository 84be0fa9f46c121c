"""data stages -> sweep (Optuna trials on train, scored on validation) -> the finetune DAG with the best
trial's training settings: fine-tune -> evaluate (base zero-shot, base few-shot and champion cached,
candidate) + forgetting probe -> register (challenger) -> promote (gate against the best baseline) ->
deploy if promoted -> export if promoted.

With `sweep.parallel_steps: N`, N `sweep_trials_i` steps share the study first; orchestrators that
run independent steps at once (Kubernetes: a pod each) train N trials in parallel, the local one runs
them one after another. The sweep and trial steps run where the finetune step does
(`compute.finetune_step_operator`, `compute.finetune_resources`).

The steps after `sweep` are those of pipelines/finetune.py; only the training settings differ (an
artifact of the sweep step instead of `cfg.train`). tests/test_sweep.py fails when the finetune graph
gains a step this one lacks.
"""

from __future__ import annotations

from zenml import pipeline
from zenml.enums import ExecutionMode

from llmft.config import Config
from llmft.contracts import ChampionRef
from llmft.tasks.base import TaskSpec
from pipelines.data import prepare_data
from steps.deploy import deploy_if_promoted
from steps.evaluate import (
    draw_shots,
    evaluate_base,
    evaluate_base_few_shot,
    evaluate_candidate,
    evaluate_champion,
    probe_base,
    probe_candidate,
    sample_test,
)
from steps.export import export_if_promoted
from steps.registry import promote, register
from steps.sweep import sweep, sweep_trials
from steps.train import finetune, track_config


@pipeline(name="sweep", execution_mode=ExecutionMode.FAIL_FAST)
def sweep_pipeline(cfg: Config, task: TaskSpec, champion: ChampionRef | None, base_identity: str,
                   code_version: str) -> None:
    name = cfg.registry.model_name
    track_config(cfg, task)
    fingerprint, train, validation, test, split, dataset = prepare_data(cfg, task, code_version)
    inputs = (train, validation, split, task, cfg.model, cfg.train, cfg.sweep, str(name))
    options = cfg.finetune_step_options()  # trials train like the finetune step: same machine and resources
    workers = [sweep_trials.with_options(**options)(*inputs, id=f"sweep_trials_{i}")
               for i in range(cfg.sweep.parallel_steps if cfg.sweep.parallel_steps > 1 else 0)]
    _, best_train = sweep.with_options(**options)(*inputs, after=workers or None)
    # from here on: pipelines/finetune.py with best_train for cfg.train
    trained, training = finetune(train, validation, split, task, cfg.model, best_train)
    rows, sample = sample_test(test, task, cfg.eval)
    shots = draw_shots(train, task, cfg.eval)
    base_key = f"{base_identity} code {code_version}"
    base = evaluate_base(rows, task, cfg.model, split, cfg.eval, cfg.train.max_seq_length, base_key)
    base_few = evaluate_base_few_shot(rows, shots, task, cfg.model, split, cfg.eval, cfg.train.max_seq_length,
                                      base_key)
    current = evaluate_champion(rows, task, champion, split, cfg.eval, cfg.train.max_seq_length,
                                cfg.model.trust_remote_code)
    evaluation = evaluate_candidate(trained, training, rows, sample, base, base_few, current, task, cfg.model,
                                    cfg.eval, cfg.train.max_seq_length)
    base_answers = probe_base(task, cfg.model, cfg.eval, base_key)
    forgetting = probe_candidate(trained, training, base_answers, cfg.model, cfg.eval, cfg.promotion.max_forgetting)
    registration = register(trained, training, evaluation, task, cfg.model, name, fingerprint)
    decision = promote(registration, evaluation, forgetting, training, dataset, task, cfg.promotion, best_train,
                       champion.version if champion else None, cfg.model.base, cfg.eval.max_new_tokens)
    deploy_if_promoted(decision, name, cfg.deploy, cfg.model.trust_remote_code)
    export_if_promoted(decision, name, cfg.export)
