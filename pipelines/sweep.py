"""data stages -> sweep (Optuna trials on train, scored on validation) -> the finetune DAG with the best
trial's training settings: fine-tune -> evaluate (base zero-shot, base few-shot and champion cached,
candidate) + forgetting probe -> register (challenger) -> promote (gate against the best baseline) ->
deploy if promoted -> export if promoted.

With `sweep.parallel_steps: N`, N `sweep_trials_i` steps share the study first; orchestrators that
run independent steps at once (Kubernetes: a pod each) train N trials in parallel, the local one runs
them one after another. The sweep and trial steps run where the finetune step does
(`compute.finetune_step_operator`, `compute.finetune_resources`).

The steps after `sweep` are pipelines/finetune.py's own (`train_to_deploy`); only the training
settings differ (an artifact of the sweep step instead of `cfg.train`).
"""

from __future__ import annotations

from zenml import pipeline
from zenml.enums import ExecutionMode

from llmft.config import Config
from llmft.contracts import ChampionRef
from llmft.tasks.base import TaskSpec
from pipelines.data import prepare_data
from pipelines.finetune import train_to_deploy
from steps.sweep import sweep, sweep_trials
from steps.train import track_config


@pipeline(name="sweep", execution_mode=ExecutionMode.FAIL_FAST)
def sweep_pipeline(cfg: Config, task: TaskSpec, champion: ChampionRef | None, base_identity: str,
                   code_version: str) -> None:
    track_config(cfg, task)
    prepared = prepare_data(cfg, task, code_version)
    inputs = (prepared.train, prepared.validation, prepared.split, task, cfg.model, cfg.train, cfg.sweep,
              str(cfg.registry.model_name))
    options = cfg.finetune_step_options()  # trials train like the finetune step: same machine and resources
    workers = [sweep_trials.with_options(**options)(*inputs, id=f"sweep_trials_{i}")
               for i in range(cfg.sweep.parallel_steps if cfg.sweep.parallel_steps > 1 else 0)]
    _, best_train = sweep.with_options(**options)(*inputs, after=workers or None)
    train_to_deploy(cfg, task, champion, base_identity, code_version, prepared, best_train)
