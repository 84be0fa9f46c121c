"""Every command in the README is run by a test or says why not.

Each line of each ```bash block (continuations joined, trailing `  # comments` dropped) must be listed below:
- RUN: run here, literally, in a fresh project folder (the files the README names, such as `tickets.csv`,
  are written there first);
- ELSEWHERE: run by the named test (the default run and serving need the real model: the guard tier);
- NOT_RUN: why no test runs it.
Every `llmft` command, wherever it is listed, must also parse with the real command line (its verb,
flags and arguments exist)."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from test_e2e import ROOT

from llmft.cli import build_parser

README = ROOT / "README.md"
QUICKSTART_RUN = "tests/test_e2e.py::test_readme_quickstart_serves"

RUN = {
    "llmft finetune --dry-run", "llmft finetune --print-config", "llmft preview --set data.source=tickets.csv",
    "llmft preview --set data.source=my.jsonl --rows 3", "llmft data --set data.source=my.jsonl",
    "llmft data --set data.source=my.jsonl --summary data.json",
}
ELSEWHERE = {
    "llmft finetune": "tests/test_e2e.py::finetune_summary",
    "llmft deploy": QUICKSTART_RUN,
    "llmft stop": QUICKSTART_RUN,
    "llmft status": QUICKSTART_RUN,
    "curl -s http://127.0.0.1:5055/v1/chat/completions -H 'Content-Type: application/json' -d '{\"messages\": "
    "[{\"role\": \"user\", \"content\": \"Lumora rain jacket | navy | size M | $79.99\"}]}'": QUICKSTART_RUN,
    "pip install -e \".[test]\" && python -m pytest -q": ".ci/run (this very suite)",
    "llmft finetune classify": "tests/test_e2e_training.py::test_classification_end_to_end",
    "llmft promote 3 --reason \"canary looked good\"": "tests/test_e2e.py::test_manual_promotion_then_rollback",
    "llmft finetune --set train.method=dpo --set data.source=pairs.jsonl": "tests/test_preference.py",
    "llmft export": "tests/test_export.py",
    "llmft finetune --tick": "tests/test_e2e.py::test_scheduled_retraining_skips_known_data_then_trains_on_new_data",
    "llmft finetune --schedule \"0 3 * * *\"": "tests/test_scheduler.py",
    "llmft sweep --set sweep.trials=8": "tests/test_sweep.py",
    "llmft ui": "tests/test_e2e.py::test_ui_serves_runs_and_the_registered_model_with_aliases",
    "llmft chat": "tests/test_cli.py",
}
NOT_RUN = {
    "git clone <repository-url> llmft && cd llmft": "CI works in its own clone",
    "python3.11 -m venv .venv && source .venv/bin/activate": ".ci/run makes its own virtual environment",
    "pip install -e \".[serve]\"": ".ci/run installs the package (with the test extra, which includes every "
                               "runtime extra) from scratch",
    "llmft finetune --set data.source=tickets.csv": "a real-model run on a user's file; the preview and dry-run of "
                                                    "the same file run here, real-data runs are in the slow tier",
    "llmft deploy && llmft chat": "interactive; each verb is run by its own test",
    "llmft finetune --set data.source=bbc_news.jsonl": "a 20-minute corpus run: benchmarks/real_data.py",
    "llmft rollback --reason \"v3 answers worse on long listings\"": "the same verb as the next line's, run by "
                                                                     "tests/test_e2e.py::test_manual_promotion_then_rollback",
    "llmft rollback --reason \"v3 answers worse\"": "run by tests/test_e2e.py::test_manual_promotion_then_rollback",
    "curl -s http://127.0.0.1:5055/v1/chat/completions -H 'Content-Type: application/json' -d '{\"messages\": "
    "[{\"role\": \"user\", \"content\": \"Lumora rain jacket, navy, size M, $79.99\"}], \"max_tokens\": 64, "
    "\"temperature\": 0}'": "the quickstart's request with limits set; the quickstart's own is run by "
                            + QUICKSTART_RUN,
    "llmft finetune --set data.source=dialogs.jsonl --set 'data.mix=[{source: builtin:general, weight: 0.25}]'":
        "a real-model dialog run: tests/test_e2e_real_data.py runs the same mix on a real slice (slow tier)",
    "llmft finetune --set data.source=my.csv --set train.learning_rate=2e-4": "a real-model run on a user's file",
    "llmft finetune --summary out/summary.json": "--summary is used by every pipeline test",
    "llmft finetune --no-resume": "a full run; resuming is tested by tests/test_e2e_training.py",
    "mlflow ui --backend-store-uri sqlite:///$PWD/.llmft/mlflow.db --default-artifact-root "
    "file://$PWD/.llmft/mlartifacts --host 127.0.0.1 --port 5000": "MLflow's own command, what `llmft ui` runs",
}


def readme_commands(text: str) -> list[str]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending = ""
        for raw in block.splitlines():
            line = (pending + " " + raw.strip()) if pending else raw.rstrip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            line = re.split(r"\s{2,}#\s", line)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def test_every_readme_command_is_run_or_says_why_not():
    commands = readme_commands(README.read_text())
    assert "llmft finetune" in commands and "llmft finetune --dry-run" in commands
    unlisted = [c for c in commands if c not in RUN and c not in ELSEWHERE and c not in NOT_RUN]
    assert not unlisted, f"README commands no test covers: {unlisted}"
    for where in set(ELSEWHERE.values()):
        path, _, name = where.partition("::")
        if path.startswith("tests/"):
            assert (ROOT / path).is_file(), where
            if name:
                assert f"def {name}(" in (ROOT / path).read_text(), where


def test_every_llmft_command_in_the_readme_parses():
    parser = build_parser()
    for command in readme_commands(README.read_text()):
        for part in command.split(" && "):
            if part.startswith("llmft "):
                args = parser.parse_args(shlex.split(part)[1:])  # exits (SystemExit 2) on an unknown flag
                assert args.verb == shlex.split(part)[1]


def _user_files(folder: Path) -> None:
    """The files the README's commands name, as a user would have them."""
    with (folder / "tickets.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(40):
            writer.writerow([f"My invoice {i} was charged twice, please refund", "billing"])
            writer.writerow([f"The app crashes when I open screen {i}", "bug"])
    rows = [{"prompt": f"What is {i} plus {i}?", "response": str(2 * i)} for i in range(80)]
    (folder / "my.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("command", sorted(RUN))
def test_readme_command_runs_as_written(command: str, pipeline_env: dict[str, str], tmp_path: Path):
    _user_files(tmp_path)
    llmft = shutil.which("llmft")
    assert llmft, "the llmft console script is installed with the package"
    proc = subprocess.run([llmft, *shlex.split(command)[1:]], cwd=tmp_path, env=pipeline_env, text=True,
                          capture_output=True, timeout=280)
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
    if "--dry-run" in command:
        assert "training plan: " in proc.stdout and not (tmp_path / ".llmft" / "mlflow.db").exists()
    if "--print-config" in command:
        assert "source: " in proc.stdout and "max_steps: auto" in proc.stdout
    if command.startswith("llmft preview"):
        assert "tokens" in proc.stdout
    if "--summary data.json" in command:
        assert json.loads((tmp_path / "data.json").read_text())["dataset"]["rows"]["train"] > 0
