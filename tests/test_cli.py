"""The `llmft` command (llmft/cli): verbs and their own flags, shipped configs from any folder, config
errors, --print-config, --dry-run, preview and chat; `python run.py` keeps its flags.

CLI behaviour is tested through the installed `llmft` script, run from a folder outside the checkout
(no PYTHONPATH), so the shipped configs and demo data must come from the package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from llmft.config import ConfigError
from llmft.config_files import load_config, resolve_config_path, shipped_config_names, suggest_keys

ROOT = Path(__file__).resolve().parents[1]
VERBS = ("finetune", "data", "sweep", "deploy", "stop", "status", "ui", "promote", "rollback", "export", "chat",
         "preview")


def llmft_script() -> str:
    script = Path(sys.executable).parent / "llmft"
    found = str(script) if script.exists() else shutil.which("llmft")
    if not found:
        pytest.fail("no `llmft` script: install the project (pip install -e .)")
    return found


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working folder outside the checkout and an environment with its own project state."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_")) and k != "PYTHONPATH"}
    env.update({"LLMFT_HOME": str(tmp_path / "home"), "ZENML_CONFIG_PATH": str(tmp_path / "zenml"),
                "ZENML_ANALYTICS_OPT_IN": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "NO_COLOR": "1"})
    return work, env


def llmft(place: tuple[Path, dict[str, str]], *args: str, stdin: str | None = None,
          timeout: int = 240) -> subprocess.CompletedProcess[str]:
    work, env = place
    return subprocess.run([llmft_script(), *args], cwd=work, env=env, input=stdin, text=True, capture_output=True,
                          timeout=timeout)


def test_help_lists_every_verb(outside):
    proc = llmft(outside, "--help")
    assert proc.returncode == 0, proc.stderr
    for verb in VERBS:
        assert re.search(rf"^\s+{verb}\s+\S", proc.stdout, re.M), verb


@pytest.mark.parametrize(("argv", "foreign"), [
    (["finetune", "--stop"], "--stop"),  # once silently a full fine-tune
    (["finetune", "--rollback"], "--rollback"),
    (["data", "--dry-run"], "--dry-run"),
    (["sweep", "--schedule", "* * * * *"], "--schedule"),
    (["deploy", "--no-resume"], "--no-resume"),
    (["stop", "--set", "deploy.port=1"], "--set"),
    (["status", "--config", "classify"], "--config"),
    (["ui", "--summary", "x.json"], "--summary"),
    (["promote", "3", "--tick"], "--tick"),
    (["rollback", "--print-config"], "--print-config"),
    (["export", "--reason", "why"], "--reason"),
    (["chat", "--rows", "2"], "--rows"),
    (["preview", "--system", "hi"], "--system"),
])
def test_each_verb_refuses_flags_that_are_not_its_own(outside, argv: list[str], foreign: str):
    proc = llmft(outside, *argv, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"llmft {argv[0]}: error: unrecognized arguments: {foreign}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_refused_flag_says_where_it_belongs(outside):
    assert "did you mean `llmft stop`?" in llmft(outside, "finetune", "--stop", timeout=60).stderr
    assert "--no-resume is a flag of: finetune, sweep" in llmft(outside, "data", "--no-resume", timeout=60).stderr


def _expected(name: str) -> dict:
    """The shipped config as a run from another folder resolves it: the demo data from the package."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml").model_dump(mode="json")
    assert cfg["data"]["source"].startswith("data/")
    cfg["data"]["source"] = str(ROOT / cfg["data"]["source"])  # the editable install's package data
    return cfg


def test_print_config_from_another_folder_prints_the_default_config(outside, tmp_path: Path):
    proc = llmft(outside, "finetune", "--print-config", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# {ROOT / 'configs' / 'finetune.yaml'}")
    printed = yaml.safe_load(proc.stdout)
    assert printed == _expected("finetune")
    assert Path(printed["data"]["source"]).is_file()
    assert not (tmp_path / "home").exists() and not (tmp_path / "zenml").exists()  # and writes no project state


@pytest.mark.parametrize("name", ["finetune", "classify", "gpu"])
def test_shipped_configs_resolve_by_bare_name(outside, name: str):
    assert name in shipped_config_names()
    assert resolve_config_path(name) == ROOT / "configs" / f"{name}.yaml"
    proc = llmft(outside, "finetune", name, "--print-config", "--set", "train.seed=7", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == {**_expected(name), "train": {**_expected(name)["train"], "seed": 7}}


def test_a_config_file_here_comes_before_the_shipped_one(outside, tmp_path: Path):
    (outside[0] / "classify").write_text("train:\n  seed: 3\n")  # a file named like a shipped config
    assert yaml.safe_load(llmft(outside, "finetune", "classify", "--print-config", timeout=60).stdout)[
        "train"]["seed"] == 3
    with pytest.raises(ConfigError, match=r"nope: config file not found; shipped configs: classify, finetune, gpu"):
        resolve_config_path("nope")
    with pytest.raises(ConfigError, match="did you mean `classify`"):
        resolve_config_path("clasify")


def test_unknown_key_says_did_you_mean_in_one_line_without_the_key_list(outside):
    proc = llmft(outside, "finetune", "--print-config", "--set", "train.learnig_rate=0.01", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --set train.learnig_rate: unknown key; did you mean "
                                   "`train.learning_rate`?")
    assert suggest_keys("train.lr") == ["train.learning_rate"]  # word initials
    assert suggest_keys("trian.seed") == ["train.seed"]
    assert suggest_keys("model.learning_rate") == ["train.learning_rate"]  # the right name in another section
    with pytest.raises(ConfigError) as err:
        load_config(None, ["nothing.like.this=1"])
    assert "did you mean" not in str(err.value) and "deploy.max_queue" not in str(err.value)
    assert len(str(err.value)) < 200


def test_every_validation_error_is_reported_at_once_each_naming_its_key(outside, tmp_path: Path):
    proc = llmft(outside, "finetune", "--print-config", "--set", "train.max_steps=0", "--set", "train.batch_size=x",
                 "--set", "data.test_fraction=0.7", "--set", "train.lr=1", timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: 4 config errors:"
    for key in ("train.max_steps", "train.batch_size", "data.test_fraction", "train.lr"):
        assert sum(line.startswith(f"  --set {key}: ") for line in lines[1:]) == 1, (key, lines)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  lora:\n    r: 0\n    target_modules: 5\neval:\n  max_samples: -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert msg.startswith("4 config errors:")
    assert f"{bad}, line 2: field train.lr: unknown key; did you mean `train.learning_rate`?" in msg
    assert f"{bad}, line 4: field train.lora.r:" in msg and f"{bad}, line 7: field eval.max_samples:" in msg
    # the branches of a union that failed at one key are one line, not one per branch
    assert sum("field train.lora.target_modules" in line for line in msg.splitlines()) == 1


def test_dry_run_prints_the_plan_and_registers_nothing(outside, tiny_model_path: str, tmp_path: Path):
    proc = llmft(outside, "finetune", "--dry-run", "--set", f"model.base={tiny_model_path}",
                 "--set", "data.max_rows=120")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "task: extraction" in out and "registry model: products-extraction" in out
    assert "data gate passed: 120 rows in, 120 kept" in out
    plan = re.search(r"^training plan: (\d+) rows x 1 epoch = (\d+) steps of 4 x 1 accumulation", out, re.M)
    assert plan, out
    assert int(plan[2]) == -(-int(plan[1]) // 4)  # auto: one epoch of batches of 4
    assert "dry run: nothing trained" in out
    home = tmp_path / "home"
    assert not (home / "mlflow.db").exists() and not (home / "mlartifacts").exists()  # no store, no model
    assert not (tmp_path / "zenml").exists()  # no ZenML stack or pipeline run


def test_dry_run_stops_at_a_failing_data_gate(outside, tiny_model_path: str):
    proc = llmft(outside, "finetune", "--dry-run", "--set", f"model.base={tiny_model_path}",
                 "--set", "data.max_rows=20", "--set", "validation.min_rows=50")
    assert proc.returncode == 1 and "data gate FAILED" in proc.stderr, proc.stderr[-2000:]
    assert "training plan" not in proc.stdout


def test_preview_shows_the_label_mask_and_token_counts(outside, tiny_model_path: str):
    proc = llmft(outside, "preview", "--rows", "2", "--set", f"model.base={tiny_model_path}",
                 "--set", "data.max_rows=40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = re.findall(r"^--- row \d \(.*products\.jsonl, line \d+\): (\d+) tokens, (\d+) masked, (\d+) trained$",
                      out, re.M)
    assert len(rows) == 2, out
    assert all(int(n) == int(m) + int(t) and int(t) > 0 for n, m, t in rows)
    # the prompt (system and user turns, the assistant header) is masked; the JSON answer and its end are trained
    assert "[[<|im_start|>system\n" in out and "<|im_start|>assistant\n]]{" in out and "}<|im_end|>" in out
    assert re.search(r"^totals: 40 rows kept of 40 .*; [\d,]+ tokens: [\d,]+ masked, [\d,]+ trained \(\d+%\)",
                     out, re.M), out


def test_chat_keeps_the_conversation_with_stdin_piped(outside, tiny_model_path: str):
    proc = llmft(outside, "chat", tiny_model_path, "--usage", "--max-tokens", "5",
                 stdin="Hello there\n\nWhat did I just say?\n/reset\nAgain\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [line for line in proc.stdout.splitlines() if line.startswith("assistant> ")]
    assert len(answers) == 3 and all(a.strip() != "assistant>" for a in answers)  # the tiny model is never blank
    prompts = [int(n) for n in re.findall(r"^\[(\d+) prompt tokens, \d+ answer tokens", proc.stderr, re.M)]
    assert len(prompts) == 3
    assert prompts[1] > prompts[0] + 5  # the second turn carries the first exchange
    assert prompts[2] < prompts[1]  # /reset cleared it


def test_chat_refuses_a_missing_model_in_one_line(outside, tmp_path: Path):
    proc = llmft(outside, "chat", str(tmp_path / "no-such-model"), stdin="hi\n", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_run_py_keeps_its_flags_and_runs_through_the_same_code(outside):
    from llmft.cli.execute import RunRequest
    from llmft.cli.legacy import parse_args

    assert RunRequest(**vars(parse_args([]))) == RunRequest()  # run.py's defaults are the request's defaults
    env = outside[1]
    for argv, message in ((["--pipeline", "promote"], "needs exactly one of --version N or --rollback"),
                          (["--set", "train.lerning_rate=1"], "did you mean `train.learning_rate`?"),
                          (["--pipeline", "data", "--tick"], "--schedule and --tick are for --pipeline finetune")):
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (argv, proc.stderr)


def test_the_wheel_lists_every_package_and_ships_the_configs():
    """pyproject lists its packages (the configs and demo data are mapped in): a package added to the tree
    must be added there too, or a wheel would leave it out."""
    from setuptools import find_namespace_packages

    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = find_namespace_packages(where=str(ROOT), include=["llmft*", "pipelines*", "steps*"])
    in_tree = [p for p in in_tree if not p.endswith("__pycache__")]
    assert sorted(setuptools_cfg["packages"]) == sorted({*in_tree, "llmft.configs", "llmft.demo_data"})
    assert setuptools_cfg["package-dir"] == {"llmft.configs": "configs", "llmft.demo_data": "data"}
    assert setuptools_cfg["package-data"]["llmft.configs"] == ["*.yaml"]


def test_chat_with_a_classifier_answers_each_line_with_its_label(tiny_model_path: str, capsys):
    import argparse

    from llmft.base_model import load_model, load_tokenizer
    from llmft.cli.chat import converse
    from llmft.config import DeployConfig
    from llmft.serve.loading import Served

    labels = ["negative", "positive"]
    served = Served("tiny-classifier", None, True, load_model(tiny_model_path, labels).eval(),
                    load_tokenizer(tiny_model_path), labels=labels)
    args = argparse.Namespace(system=None, max_tokens=None, temperature=0.0, usage=False)
    converse(served, DeployConfig().server_limits(), args, iter(["Works great.\n", "\n", "Broke in a day.\n"]))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(re.fullmatch(r"assistant> (negative|positive) \(\d\.\d\d\)", line) for line in out)
