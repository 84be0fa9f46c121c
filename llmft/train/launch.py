"""Run training in this process, or across `train.num_processes` processes through accelerate.

For several processes the examples and settings go to a spec folder, `accelerate launch` starts
`python -m llmft.train.launch SPEC` in each (gloo on CPUs, NCCL on GPUs, through the Trainer's
accelerate state), and rank 0 writes the result and logs to the caller's MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmft.config import TrainConfig
from llmft.errors import UserFacingError
from llmft.train.loop import TrainResult, train


class TrainingLaunchError(UserFacingError, RuntimeError):
    """The multi-process training run failed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accelerate_command(num_processes: int, spec_dir: Path, gpu: bool) -> list[str]:
    threads = max(1, (os.cpu_count() or 1) // num_processes)
    return [sys.executable, "-m", "accelerate.commands.launch",
            # --multi_gpu selects torchrun-style process spawning; on CPUs the Trainer's
            # use_cpu=True then makes accelerate pick MULTI_CPU with the gloo backend
            "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            *([] if gpu else ["--num_cpu_threads_per_process", str(threads)]),
            "-m", "llmft.train.launch", str(spec_dir)]


def run_training(base_path: str, train_examples: list[dict[str, Any]], validation_examples: list[dict[str, Any]],
                 cfg: TrainConfig, output_dir: Path, labels: list[str] | None, init_text: str | None,
                 checkpoint_dir: Path | None, log_to_mlflow: bool = True,
                 extra_callbacks: list[Any] | None = None) -> TrainResult:
    """`extra_callbacks` (TrainerCallbacks) run only in-process: they cannot cross into worker processes."""
    if cfg.num_processes == 1:
        return train(base_path, train_examples, validation_examples, cfg, output_dir, labels, init_text,
                     checkpoint_dir, log_to_mlflow, extra_callbacks)
    import torch

    spec_dir = output_dir / "spec"
    spec_dir.mkdir(parents=True, exist_ok=True)
    run_id = None
    env = dict(os.environ)
    if log_to_mlflow:  # rank 0 logs into the caller's run, on the caller's tracking store
        import mlflow

        active = mlflow.active_run()
        run_id = active.info.run_id if active else None
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    spec = {"base_path": base_path, "cfg": cfg.model_dump(mode="json"), "output_dir": str(output_dir),
            "labels": labels, "init_text": init_text,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None, "mlflow_run_id": run_id}
    (spec_dir / "spec.json").write_text(json.dumps(spec))
    for name, rows in (("train", train_examples), ("validation", validation_examples)):
        (spec_dir / f"{name}.json").write_text(json.dumps(rows))
    command = accelerate_command(cfg.num_processes, spec_dir, torch.cuda.is_available())
    proc = subprocess.run(command, env=env, cwd=Path(__file__).resolve().parents[1])
    result_file = spec_dir / "result.json"
    if proc.returncode != 0 or not result_file.is_file():
        raise TrainingLaunchError(f"training across {cfg.num_processes} processes failed (exit {proc.returncode}); "
                                  "see the worker output above")
    data = json.loads(result_file.read_text())
    return TrainResult.model_validate(data)


def _worker(spec_dir: Path) -> None:
    spec = json.loads((spec_dir / "spec.json").read_text())
    rank = int(os.environ.get("RANK", "0"))
    log_to_mlflow = spec["mlflow_run_id"] is not None and rank == 0
    if rank == 0:  # the plan line and the loop's other notes reach the console, as in one process
        logging.basicConfig(format="%(message)s")
        logging.getLogger("llmft").setLevel(logging.INFO)
    train_rows = json.loads((spec_dir / "train.json").read_text())
    validation_rows = json.loads((spec_dir / "validation.json").read_text())

    def go() -> TrainResult:
        return train(spec["base_path"], train_rows, validation_rows, TrainConfig.model_validate(spec["cfg"]),
                     Path(spec["output_dir"]), spec["labels"], spec["init_text"],
                     Path(spec["checkpoint_dir"]) if spec["checkpoint_dir"] else None, log_to_mlflow)

    if log_to_mlflow:
        import mlflow

        with mlflow.start_run(run_id=spec["mlflow_run_id"]):
            result = go()
    else:
        result = go()
    if rank == 0:
        (spec_dir / "result.json").write_text(result.model_dump_json())


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
