"""Front door: `python run.py --pipeline finetune` (see README.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

from llmft.config import ConfigError, load_config
from llmft.credentials import mask
from llmft.resolve import ResolvedRun

_STARTED = time.perf_counter()  # wall_seconds covers imports and stack setup too

PIPELINES = ("finetune", "data", "deploy", "promote", "export", "sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LLM fine-tuning pipelines on ZenML + MLflow")
    parser.add_argument("--pipeline", choices=PIPELINES, default="finetune")
    parser.add_argument("--config", default="configs/finetune.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.max_steps=10 (repeatable)")
    parser.add_argument("--summary", help="write a JSON run summary to this path")
    parser.add_argument("--no-resume", action="store_true",
                        help="train from scratch even if a killed run with the same settings left a checkpoint")
    parser.add_argument("--stop", action="store_true", help="with --pipeline deploy: stop the server")
    parser.add_argument("--version", help="with --pipeline promote: the registry version to make champion; with "
                                          "export: the version to export (default: the champion)")
    parser.add_argument("--rollback", action="store_true",
                        help="with --pipeline promote: move champion back to the previous champion")
    parser.add_argument("--reason", default="", help="with --pipeline promote: why (recorded on the version)")
    parser.add_argument("--by", help="with --pipeline promote: who (default: the current user)")
    parser.add_argument("--status", action="store_true", help="with --pipeline deploy: is the server up, what it "
                                                              "serves")
    parser.add_argument("--schedule", metavar="CRON",
                        help="with --pipeline finetune: retrain at each cron tick (e.g. '0 3 * * *'); on the local "
                             "orchestrator run.py stays in the foreground and runs each tick itself")
    parser.add_argument("--max-ticks", type=int, help="with --schedule (foreground): stop after this many ticks")
    parser.add_argument("--tick", action="store_true",
                        help="with --pipeline finetune: one scheduled tick now (lock, skip if no new data), for "
                             "cron or a systemd timer")
    parser.add_argument("--ui", action="store_true", help="open the MLflow UI on the project's store")
    parser.add_argument("--ui-port", type=int, default=5000, help="port for --ui (default: %(default)s)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", action="store_true", help="only the task line, errors and the closing table")
    noise.add_argument("--verbose", action="store_true", help="everything the libraries log, warnings included")
    return parser.parse_args(argv)


def _failure_line(pipeline_name: str, exc: BaseException) -> str:
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


def _run_pipeline(name: str, run: ResolvedRun, args: argparse.Namespace, schedule: str | None = None) -> Any:
    from zenml import Model
    from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import (
        MLFlowExperimentTrackerSettings,
    )

    from llmft.base_model import base_identity
    from llmft.resolve import code_version

    cfg, spec = run.cfg, run.spec
    model_name = str(cfg.registry.model_name)
    settings = {"experiment_tracker": MLFlowExperimentTrackerSettings(experiment_name=cfg.tracking.experiment_name)}
    if name in ("finetune", "sweep"):  # a sweep ends in the finetune DAG: same model version, run name, clean-up
        from llmft.registry.versions import champion_ref
        from pipelines.finetune import finetune_pipeline
        from pipelines.sweep import sweep_pipeline

        # each run is a ZenML Model Control Plane version of the registry's model; stages mirror aliases
        model = Model(name=model_name, description=f"{spec.name} model fine-tuned from {cfg.model.base}")
        # a unique run name: a failed run's clean-up finds exactly its own run, never a concurrent one
        run_name = f"{name}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        options: dict[str, Any] = {"settings": settings, "model": model, "run_name": run_name,
                                   "steps": {"finetune": cfg.finetune_options()}}
        if schedule:
            from zenml.config.schedule import Schedule

            options["schedule"] = Schedule(name=f"{model_name}-retrain", cron_expression=schedule)
        import mlflow

        from llmft.locations import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        champion = champion_ref(model_name)
        try:
            return (sweep_pipeline if name == "sweep" else finetune_pipeline).with_options(**options)(
                cfg=cfg, task=spec, champion=champion, base_identity=base_identity(cfg.model.base, cfg.model.revision),
                code_version=code_version())
        except Exception:
            from llmft.registry.promotion import drop_unregistered_zenml_version

            drop_unregistered_zenml_version(run_name)
            raise
    if name == "promote":
        from pipelines.promote import promote_pipeline

        return promote_pipeline(model_name=model_name, version=args.version,
                                rollback_to_previous=args.rollback, by=args.by, reason=args.reason)
    if name == "export":
        from pipelines.export import export_pipeline

        export = cfg.export.model_copy(update={"version": args.version or cfg.export.version})
        return export_pipeline(model_name=model_name, export=export)
    if name == "data":
        from pipelines.data import data_pipeline

        return data_pipeline.with_options(settings=settings)(cfg=cfg, task=spec, code_version=code_version())
    from pipelines.deploy import deploy_pipeline

    return deploy_pipeline.with_options(settings=settings)(model_name=model_name, deploy=cfg.deploy,
                                                          trust_remote_code=cfg.model.trust_remote_code)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from llmft.errors import hide_user_error_tracebacks
    from llmft.stack import configure_environment

    configure_environment()  # before zenml is imported anywhere
    from llmft import console

    console.configure(console.QUIET if args.quiet else console.VERBOSE if args.verbose else console.NORMAL)
    hide_user_error_tracebacks()
    from llmft import locations, report
    from llmft.serve import deploy as serving

    try:
        cfg = load_config(args.config, args.overrides + (["train.resume=false"] if args.no_resume else []))
    except ConfigError as exc:
        print(f"error: {mask(str(exc))}", file=sys.stderr)
        return 2
    if args.pipeline == "promote" and bool(args.version) == args.rollback:
        print("error: --pipeline promote needs exactly one of --version N or --rollback", file=sys.stderr)
        return 2
    if (args.schedule or args.tick) and args.pipeline != "finetune":
        print("error: --schedule and --tick are for --pipeline finetune", file=sys.stderr)
        return 2
    if args.schedule:
        from llmft.retrain import ScheduleError, check_cron

        try:
            check_cron(args.schedule)
        except ScheduleError as exc:
            print(f"error: {mask(str(exc))}", file=sys.stderr)
            return 2

    if args.ui:
        uri = locations.tracking_uri()
        print(locations.ui_command(uri, args.ui_port))
        ui = locations.ui_args(uri, args.ui_port)
        if ui:
            os.execvp(sys.executable, [sys.executable, "-m", *ui])
        return 0

    if args.pipeline == "deploy" and args.status:
        state = serving.status()
        print(json.dumps(state, indent=2))
        report.write_summary({"pipeline": "deploy", **state}, args.summary)
        return 0 if state.get("healthy") else 1

    if args.pipeline == "deploy" and args.stop:
        stopped = serving.stop()
        print(f"stopped server pid {stopped.pid} ({stopped.endpoint})" if stopped else "no server running")
        report.write_summary({"pipeline": "deploy", "stopped": bool(stopped)}, args.summary)
        return 0

    from llmft.data.ingest import DataError
    from llmft.resolve import resolve_run

    try:
        resolved = resolve_run(cfg)
    except (ConfigError, DataError) as exc:
        print(f"error: {mask(str(exc))}", file=sys.stderr)
        return 2
    if args.pipeline in ("finetune", "data", "sweep"):
        print(resolved.spec.announce(), flush=True)
    cfg = resolved.cfg

    from llmft.stack import StackError, ensure_experiment, ensure_stack

    console.attach_noise_filter()

    try:
        uri = ensure_stack(cfg.compute.stack)
    except StackError as exc:
        print(f"error: {mask(str(exc))}", file=sys.stderr)
        return 2
    ensure_experiment(cfg.tracking.experiment_name)
    if args.tick or args.schedule:
        return _retrain(resolved, args)
    try:
        run = _run_pipeline(args.pipeline, resolved, args)
    except Exception as exc:
        print("error: " + mask((_failure_line(args.pipeline, exc).splitlines() or [""])[0]), file=sys.stderr)
        return 1

    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    wall = time.perf_counter() - _STARTED
    if args.pipeline == "finetune":
        summary = report.finetune_summary(run, uri, wall)
        print(report.finetune_table(summary, locations.ui_command(uri)))
    elif args.pipeline == "sweep":
        summary = report.sweep_summary(run, uri, wall)
        print("\n".join(report.sweep_lines(summary["sweep"])))
        print(report.finetune_table(summary, locations.ui_command(uri)))
    elif args.pipeline == "data":
        summary = report.data_summary(run, uri, wall)
        print(report.data_table(summary))
    elif args.pipeline == "export":
        from llmft.export.stage import export_lines, export_summary

        summary = export_summary(run, uri, wall)
        print("\n".join(export_lines(summary)))
    elif args.pipeline == "promote":
        summary = report.promote_summary(run, uri, wall)
        print(f"\n{summary['model']}: @champion is now v{summary['champion']} "
              f"({summary['action']}; previously v{summary['previous_champion']})")
    else:
        summary = report.deploy_summary(run, uri, wall)
        print(f"\n{summary['action']}: serving {summary['model_uri']} (version {summary['model_version']}) at "
              f"{summary['endpoint']}")
        print(f"smoke response: {summary['smoke_response']}")
        print(f"try: {summary['curl']}")
        print("stop: python run.py --pipeline deploy --stop")
    report.write_summary(summary, args.summary)
    return 0


def _retrain(resolved: ResolvedRun, args: argparse.Namespace) -> int:
    """Scheduled retraining: ZenML's schedule where the orchestrator has one, else ticks run here."""
    from zenml.client import Client

    from llmft import retrain

    cfg = resolved.cfg

    def run_once() -> Any:
        return _run_pipeline("finetune", resolved, args)

    if args.tick:
        return 1 if retrain.tick(cfg, run_once).decision == "failed" else 0
    orchestrator = Client().active_stack.orchestrator
    if orchestrator.config.is_schedulable:
        _run_pipeline("finetune", resolved, args, schedule=args.schedule)
        print(f"scheduled the finetune pipeline on {orchestrator.name} ({orchestrator.flavor}) with cron "
              f"{args.schedule!r}; every scheduled run trains (retrain.only_if_new_data applies to --tick and the "
              "local loop)")
        return 0
    print(f"the {orchestrator.flavor} orchestrator ignores schedules: ticks run in this process")
    try:
        ticks = retrain.run_schedule(args.schedule, cfg, run_once, args.max_ticks)
    except KeyboardInterrupt:
        print("schedule stopped")
        return 0
    return 1 if any(t.decision == "failed" for t in ticks) else 0


if __name__ == "__main__":
    sys.exit(main())
