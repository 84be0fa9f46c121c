"""What a run prints when its output goes to a file (CI logs, `> run.log`): no ANSI colour codes, none of
ZenML's first-use set-up lines or MLflow's database INFO lines, and no folder left in the temp dir
(Great Expectations' ephemeral data-docs site, torch's kernel cache)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from test_e2e import ROOT

NOISE = ("Initializing the ZenML global configuration", "Creating default stack", "Setting the global active",
         "Registered new pipeline", "Initiating a new run", "Creating initial MLflow database",
         "for ephemeral docs site")


def test_a_run_into_a_file_is_plain_quiet_and_leaves_no_temp_folders(pipeline_env: dict[str, str], tmp_path: Path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**pipeline_env, "TMPDIR": str(temp)}
    llmft = shutil.which("llmft")
    assert llmft is not None, "the llmft console script is installed with the package"
    proc = subprocess.run([llmft, "data", "--set", f"data.source={ROOT / 'data' / 'products.jsonl'}"], cwd=tmp_path,
                          env=env, text=True, capture_output=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "\x1b[" not in output, output[:2000]
    assert not [line for line in output.splitlines() if any(n in line for n in NOISE)], output[:3000]
    assert "task: extraction" in proc.stdout and "rows" in proc.stdout
    assert sorted(p.name for p in temp.iterdir()) == [], "left in the temp dir"
