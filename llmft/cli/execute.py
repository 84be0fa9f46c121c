"""Running a pipeline: config -> resolve the run -> ZenML stack -> pipeline -> closing summary.

`python run.py --pipeline ...` (`legacy.py`) and the `llmft` verbs both describe what to do as a
`RunRequest` and call `execute`, so the two front doors run the very same code.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llmft import console, locations, retrain
from llmft.base_model import base_identity
from llmft.cli.common import STARTED, fail, load_run_config, setup_console
from llmft.cli.server_actions import open_ui, show_status, stop_server
from llmft.config import ConfigError
from llmft.data.ingest import DataError
from llmft.extras import installed, message
from llmft.registry.promotion import drop_unregistered_zenml_version
from llmft.registry.versions import champion_ref
from llmft.resolve import ResolvedRun, code_version, resolve_run
from llmft.retrain import ScheduleError, check_cron
from llmft.stack import StackError, ensure_experiment, ensure_stack
from llmft.train.methods import get_method


@dataclass
class RunRequest:
    """One pipeline run, as `run.py`'s flags describe it (the defaults are its defaults)."""

    pipeline: str = "finetune"
    config: str = "configs/finetune.yaml"
    overrides: list[str] = field(default_factory=list)
    summary: str | None = None
    no_resume: bool = False
    stop: bool = False
    status: bool = False
    version: str | None = None
    rollback: bool = False
    reason: str = ""
    by: str | None = None
    schedule: str | None = None
    max_ticks: int | None = None
    tick: bool = False
    ui: bool = False
    ui_port: int = 5000
    quiet: bool = False
    verbose: bool = False
    stop_hint: str = "python run.py --pipeline deploy --stop"  # printed after a deploy


def execute(req: RunRequest) -> int:
    """Exit code 0 (done), 1 (the pipeline failed, or a server is unhealthy) or 2 (bad input)."""
    setup_console(req.quiet, req.verbose)
    try:
        cfg = load_run_config(req.config, req.overrides + (["train.resume=false"] if req.no_resume else []))
    except ConfigError as exc:
        return fail(str(exc))
    # an optional package the run needs (the serve, sweep, qlora or schedule extra): one line, before any work
    starts = not (req.ui or req.status or req.stop)
    problem = (run_problem(req.pipeline, cfg, bool(req.schedule)) if starts else None) or request_problem(req)
    if problem:
        return fail(problem)
    if req.ui:
        return open_ui(req.ui_port)
    if req.pipeline == "deploy" and req.status:
        return show_status(req.summary)
    if req.pipeline == "deploy" and req.stop:
        return stop_server(req.summary)
    return run_resolved(req, cfg)


def run_problem(pipeline: str, cfg: Any, schedule: bool = False) -> str | None:
    """Before a run starts (no model loaded yet): the first extra the run needs and lacks, as one line."""
    needs: list[tuple[str, str, str]] = []
    if pipeline == "deploy" or (pipeline in ("finetune", "sweep") and cfg.deploy.on_promotion):
        what = "llmft deploy" if pipeline == "deploy" else "deploy.on_promotion"
        needs += [("fastapi", "serve", what), ("uvicorn", "serve", what)]
    if pipeline == "sweep":
        needs.append(("optuna", "sweep", "llmft sweep"))
    if pipeline in ("finetune", "sweep") and get_method(cfg.train.method).loads_four_bit(cfg.train):
        needs.append(("bitsandbytes", "qlora", f"train.method={cfg.train.method} (a 4-bit base)"))
    if schedule:
        needs.append(("croniter", "schedule", "llmft finetune --schedule"))
    return next((message(extra, what) for module, extra, what in needs if not installed(module)), None)


def request_problem(req: RunRequest) -> str | None:
    """What is wrong with the flags of a request, in one line (None: nothing)."""
    if req.pipeline == "promote" and bool(req.version) == req.rollback:
        return "--pipeline promote needs exactly one of --version N or --rollback"
    if (req.schedule or req.tick) and req.pipeline != "finetune":
        return "--schedule and --tick are for --pipeline finetune"
    if req.schedule:
        try:
            check_cron(req.schedule)
        except ScheduleError as exc:
            return str(exc)
    return None


def run_resolved(req: RunRequest, cfg: Any) -> int:
    """Resolve the run (task, registry name), set up the stack, run the pipeline, print its summary."""
    try:
        resolved = resolve_run(cfg)
    except (ConfigError, DataError) as exc:
        return fail(str(exc))
    if req.pipeline in ("finetune", "data", "sweep"):
        print(resolved.spec.announce(), flush=True)
    console.attach_noise_filter()
    try:
        uri = ensure_stack(resolved.cfg.compute.stack)
    except StackError as exc:
        return fail(str(exc))
    ensure_experiment(resolved.cfg.tracking.experiment_name)
    if req.tick or req.schedule:
        return _retrain(resolved, req)
    try:
        run = run_pipeline(req.pipeline, resolved, req)
    except Exception as exc:
        return fail((failure_line(req.pipeline, exc).splitlines() or [""])[0], 1)
    from zenml.client import Client

    print_summary(req, Client().get_pipeline_run(run.id), uri)
    return 0


def print_summary(req: RunRequest, run: Any, uri: str) -> None:
    """The closing table (or lines) of a finished run, and its JSON summary where --summary asks."""
    from llmft import report  # start-up: pandas

    wall = time.perf_counter() - STARTED
    if req.pipeline in ("finetune", "sweep"):
        summary = (report.sweep_summary if req.pipeline == "sweep" else report.finetune_summary)(run, uri, wall)
        if req.pipeline == "sweep":
            print("\n".join(report.sweep_lines(summary.sweep)))
        print(report.finetune_table(summary, locations.ui_command(uri)))
    elif req.pipeline == "data":
        summary = report.data_summary(run, uri, wall)
        print(report.data_table(summary))
    elif req.pipeline == "export":
        from llmft.export.stage import export_lines, export_summary  # start-up: numpy

        summary = export_summary(run, uri, wall)
        print("\n".join(export_lines(summary)))
    elif req.pipeline == "promote":
        summary = report.promote_summary(run, uri, wall)
        print(f"\n{summary['model']}: @champion is now v{summary['champion']} "
              f"({summary['action']}; previously v{summary['previous_champion']})")
    else:
        summary = report.deploy_summary(run, uri, wall)
        print(f"\n{summary['action']}: serving {summary['model_uri']} (version {summary['model_version']}) at "
              f"{summary['endpoint']}")
        print(f"smoke response: {summary['smoke_response']}")
        print(f"try: {summary['curl']}")
        print(f"stop: {req.stop_hint}")
    report.write_summary(summary, req.summary)


def failure_line(pipeline_name: str, exc: BaseException) -> str:
    """One line naming the failed step and its own error (ZenML re-raises a generic RuntimeError)."""
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    try:
        runs = Client().list_pipeline_runs(pipeline_name=pipeline_name, sort_by="desc:created", size=1, hydrate=True)
        for step_run in runs.items[0].steps.values() if runs.items else []:
            info = step_run.exception_info if step_run.status == ExecutionStatus.FAILED else None
            if info is not None and info.message is not None:
                kind = (info.source or "Exception").rsplit(".", 1)[-1]
                return f"{pipeline_name} pipeline failed at step {step_run.name!r}: {kind}: {info.message}"
    except Exception:
        pass
    return f"{pipeline_name} pipeline failed: {type(exc).__name__}: {exc}"


def _tracker_settings(cfg: Any) -> dict[str, Any]:
    from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import (
        MLFlowExperimentTrackerSettings,
    )

    return {"experiment_tracker": MLFlowExperimentTrackerSettings(experiment_name=cfg.tracking.experiment_name)}


def _training_run(name: str, run: ResolvedRun, schedule: str | None) -> Any:
    """finetune or sweep (a sweep ends in the finetune DAG: same model version, run name, clean-up)."""
    import mlflow
    from zenml import Model

    from pipelines.finetune import finetune_pipeline  # start-up: zenml
    from pipelines.sweep import sweep_pipeline  # start-up: zenml

    cfg, spec = run.cfg, run.spec
    model_name = str(cfg.registry.model_name)
    # each run is a ZenML Model Control Plane version of the registry's model; stages mirror aliases
    model = Model(name=model_name, description=f"{spec.name} model fine-tuned from {cfg.model.base}")
    # a unique run name: a failed run's clean-up finds exactly its own run, never a concurrent one
    run_name = f"{name}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    options: dict[str, Any] = {"settings": _tracker_settings(cfg), "model": model, "run_name": run_name,
                               "steps": {"finetune": cfg.finetune_options()}}
    if schedule:
        from zenml.config.schedule import Schedule

        options["schedule"] = Schedule(name=f"{model_name}-retrain", cron_expression=schedule)
    mlflow.set_tracking_uri(locations.tracking_uri())
    champion = champion_ref(model_name)
    try:
        return (sweep_pipeline if name == "sweep" else finetune_pipeline).with_options(**options)(
            cfg=cfg, task=spec, champion=champion, base_identity=base_identity(cfg.model.base, cfg.model.revision),
            code_version=code_version())
    except Exception:
        drop_unregistered_zenml_version(run_name)
        raise


def run_pipeline(name: str, run: ResolvedRun, req: RunRequest, schedule: str | None = None) -> Any:
    """Start pipeline `name` for the resolved run; returns ZenML's run response."""
    cfg, spec = run.cfg, run.spec
    model_name = str(cfg.registry.model_name)
    if name in ("finetune", "sweep"):
        return _training_run(name, run, schedule)
    if name == "promote":
        from pipelines.promote import promote_pipeline  # start-up: zenml

        return promote_pipeline(model_name=model_name, version=req.version,
                                rollback_to_previous=req.rollback, by=req.by, reason=req.reason)
    if name == "export":
        from pipelines.export import export_pipeline  # start-up: zenml

        export = cfg.export.model_copy(update={"version": req.version or cfg.export.version})
        return export_pipeline(model_name=model_name, export=export)
    if name == "data":
        from pipelines.data import data_pipeline  # start-up: zenml

        return data_pipeline.with_options(settings=_tracker_settings(cfg))(cfg=cfg, task=spec,
                                                                           code_version=code_version())
    from pipelines.deploy import deploy_pipeline  # start-up: zenml

    return deploy_pipeline.with_options(settings=_tracker_settings(cfg))(
        model_name=model_name, deploy=cfg.deploy, trust_remote_code=cfg.model.trust_remote_code)


def _retrain(resolved: ResolvedRun, req: RunRequest) -> int:
    """Scheduled retraining: ZenML's schedule where the orchestrator has one, else ticks run here."""
    from zenml.client import Client

    cfg = resolved.cfg

    def run_once() -> Any:
        return run_pipeline("finetune", resolved, req)

    if req.tick:
        return 1 if retrain.tick(cfg, run_once).decision == "failed" else 0
    orchestrator = Client().active_stack.orchestrator
    if orchestrator.config.is_schedulable:
        run_pipeline("finetune", resolved, req, schedule=req.schedule)
        print(f"scheduled the finetune pipeline on {orchestrator.name} ({orchestrator.flavor}) with cron "
              f"{req.schedule!r}; every scheduled run trains (retrain.only_if_new_data applies to --tick and the "
              "local loop)")
        return 0
    print(f"the {orchestrator.flavor} orchestrator ignores schedules: ticks run in this process")
    try:
        ticks = retrain.run_schedule(req.schedule, cfg, run_once, req.max_ticks)
    except KeyboardInterrupt:
        print("schedule stopped")
        return 0
    return 1 if any(t.decision == "failed" for t in ticks) else 0
