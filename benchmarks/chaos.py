"""Chaos: break things on purpose and report what was lost (goal: nothing).

Scenarios, each on the real stack in a fresh project folder, at a size that fits CI:
1. kill training mid-step (SIGKILL after the first checkpoint), run the same command again: it resumes
   and registers exactly one version;
2. two finetune runs at once on the same registry name and the same settings: both finish, both
   versions are registered and READY, @champion is one of them and its record is complete, neither
   run deleted the other's checkpoints;
3. kill the model server mid-batch: every in-flight client gets an answer or an error (none hangs),
   `--pipeline deploy --status` notices, and a new deploy serves again;
4. a tick that fails inside `--schedule` (the data file vanished): the schedule goes on, every tick
   is recorded.

    python benchmarks/chaos.py [--out benchmarks/results-chaos-cpu-2core.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "real" / "classification.jsonl"
NAME = "chaos-model"
TINY = ["--set", f"data.source={DATA}", "--set", "data.max_rows=120", "--set", "eval.max_samples=6",
        "--set", "train.eval_steps=null", "--set", f"registry.model_name={NAME}", "--set", "deploy.smoke_max_tokens=8",
        "--set", "eval.probe_max_new_tokens=8"]


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update({"LLMFT_HOME": str(home), "ZENML_CONFIG_PATH": str(home / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    return env


def run_py(env: dict[str, str], *args: str, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def registry_state(home: Path) -> dict[str, Any]:
    code = ("import json, mlflow; from mlflow import MlflowClient; c = MlflowClient();"
            f"vs = c.search_model_versions(\"name='{NAME}'\");"
            "champ = None\ntry:\n    champ = c.get_model_version_by_alias('" + NAME + "', 'champion').version\n"
            "except Exception:\n    pass\n"
            "print(json.dumps({'versions': sorted((v.version, v.status, v.tags.get('promotion.decision')) "
            "for v in vs), 'champion': champ, 'champion_tags': dict(c.get_model_version('" + NAME + "', champ).tags) "
            "if champ else {}}))")
    env = {**env_for(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def kill_and_resume(home: Path) -> dict[str, Any]:
    env = env_for(home)
    args = ["--pipeline", "finetune", *TINY, "--set", "train.max_steps=12", "--set", "train.save_steps=3"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 1200
    while time.time() < deadline and proc.poll() is None:
        if list((home / "checkpoints").glob("*/checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.5)
    killed_mid_training = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = home / "resume.json"
    again = run_py(env, *args, "--summary", str(summary))
    train = json.loads(summary.read_text())["train"] if again.returncode == 0 else {}
    state = registry_state(home)
    return {"killed_mid_training": killed_mid_training, "rerun_exit": again.returncode,
            "resumed_from_step": train.get("resumed_from_step"), "versions": state["versions"],
            "lost": [] if again.returncode == 0 and train.get("resumed_from_step") and len(state["versions"]) == 1
            else ["resume or registration failed: " + again.stderr[-400:]]}


def concurrent_runs(home: Path) -> dict[str, Any]:
    env = env_for(home)
    before = {v[0] for v in registry_state(home)["versions"]}
    args = ["--pipeline", "finetune", *TINY, "--set", "train.max_steps=6", "--set", "train.save_steps=2"]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, "--summary", str(home / f"c{i}.json")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=2400) for p in procs]
    codes = [p.returncode for p in procs]
    state = registry_state(home)
    new = [v for v in state["versions"] if v[0] not in before]
    lost = []
    if codes != [0, 0]:
        lost += [f"run {i} exited {c}: {results[i][1].strip().splitlines()[-1:]}" for i, c in enumerate(codes) if c]
    if len(new) != sum(c == 0 for c in codes) or any(status != "READY" or not decision for _, status, decision in new):
        lost.append(f"versions not all registered and decided: {new}")
    tags = state["champion_tags"]
    promoted = [v for v, _, decision in new if decision == "promoted"]
    if promoted and (state["champion"] not in promoted or "champion.how" not in tags):
        lost.append(f"champion record incomplete: {state['champion']} {tags}")
    leftover = list((home / "checkpoints").glob("*/checkpoint-*"))
    if leftover:
        lost.append(f"checkpoints left behind: {leftover}")
    return {"exit_codes": codes, "new_versions": new, "champion": state["champion"], "lost": lost}


def kill_server_mid_batch(home: Path) -> dict[str, Any]:
    env = env_for(home)
    port = 5391
    if registry_state(home)["champion"] is None:  # no run passed the gate: promote the newest by hand
        newest = max(int(v[0]) for v in registry_state(home)["versions"])
        moved = run_py(env, "--pipeline", "promote", "--version", str(newest), *TINY)
        if moved.returncode != 0:
            return {"lost": [f"manual promotion failed: {moved.stderr[-400:]}"]}
    up = run_py(env, "--pipeline", "deploy", *TINY, "--set", f"deploy.port={port}")
    if up.returncode != 0:
        return {"lost": [f"deploy failed: {up.stderr[-400:]}"]}
    state = json.loads((home / "serve" / "server.json").read_text())
    outcomes: list[str] = []

    def client(i: int) -> None:
        body = json.dumps({"inputs": [f"Story number {i} about football and the league table."]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                outcomes.append(f"answered {resp.status}")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            outcomes.append(f"error {type(exc).__name__}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    os.killpg(state["pid"], signal.SIGKILL)
    started = time.time()
    for t in threads:
        t.join(timeout=90)
    hung = sum(t.is_alive() for t in threads)
    status = run_py(env, "--pipeline", "deploy", "--status", *TINY)
    again = run_py(env, "--pipeline", "deploy", *TINY, "--set", f"deploy.port={port}")
    run_py(env, "--pipeline", "deploy", "--stop", *TINY)
    lost = []
    if hung:
        lost.append(f"{hung} clients hung")
    if status.returncode == 0:
        lost.append("status reported a dead server as healthy")
    if again.returncode != 0:
        lost.append(f"redeploy failed: {again.stderr[-400:]}")
    return {"clients": len(threads), "outcomes": sorted(set(outcomes)),
            "all_clients_done_s": round(time.time() - started, 1), "status_exit_after_kill": status.returncode,
            "redeploy_exit": again.returncode, "lost": lost}


def failing_tick(home: Path) -> dict[str, Any]:
    env = env_for(home)
    data = home / "tick-data.jsonl"
    shutil.copy(DATA, data)
    args = ["--pipeline", "finetune", *TINY, "--set", f"data.source={data}", "--set", "train.max_steps=2",
            "--schedule", "* * * * * */3", "--max-ticks", "3"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "retrain tick" in line and data.exists():
            data.unlink()  # the source vanishes after the first tick
    proc.wait(timeout=1800)
    ticks = [json.loads(x) for x in (home / "retrain" / "ticks.jsonl").read_text().splitlines()]
    decisions = [t["decision"] for t in ticks]
    lost = [] if len(ticks) == 3 and decisions[1:] == ["failed", "failed"] else [f"ticks: {decisions}"]
    return {"exit_code": proc.returncode, "ticks": decisions,
            "failed_reason": ticks[-1]["reason"] if ticks else None, "lost": lost}


def write_results(results: dict[str, Any], out: Path) -> None:
    lines = ["# Chaos results (CPU, 2 cores)", "", "`python benchmarks/chaos.py`; goal: nothing lost.", "",
             "| scenario | lost | seconds | details |", "|---|---|---|---|"]
    for name, r in results.items():
        details = {k: v for k, v in r.items() if k not in ("lost", "seconds")}
        lines.append(f"| {name} | {'; '.join(r['lost']) or 'nothing'} | {r['seconds']} | "
                     f"`{json.dumps(details)[:600]}` |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-chaos-cpu-2core.md"))
    parser.add_argument("--home", help="reuse this project folder (e.g. to run later scenarios again)")
    parser.add_argument("--only", type=int, nargs="*", help="scenario numbers to run (1-4); default all")
    args = parser.parse_args()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="llmft-chaos-"))
    results: dict[str, Any] = json.loads(Path(args.out).with_suffix(".json").read_text()) \
        if args.only and Path(args.out).with_suffix(".json").exists() else {}
    scenarios = (("kill training mid-step, resume", kill_and_resume),
                 ("two finetune runs at once, same registry name", concurrent_runs),
                 ("kill the server mid-batch", kill_server_mid_batch),
                 ("a tick fails inside --schedule", failing_tick))
    for number, (name, scenario) in enumerate(scenarios, start=1):
        if args.only and number not in args.only:
            continue
        started = time.time()
        try:
            results[name] = scenario(home)
        except Exception as exc:  # a scenario that crashes is itself a finding
            results[name] = {"lost": [f"scenario crashed: {type(exc).__name__}: {exc}"]}
        results[name]["seconds"] = round(time.time() - started, 1)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        write_results(results, Path(args.out))  # after each scenario: a long run shows its progress
    if not args.home:
        shutil.rmtree(home, ignore_errors=True)
    return 1 if any(r["lost"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
