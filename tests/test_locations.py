"""Local state: concurrent runs never share (or delete) each other's checkpoints; scratch folders
do not outlive their process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmft.locations import claim_checkpoint_dir


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "LLMFT_HOME": str(home)}


def test_a_second_run_with_the_same_key_gets_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    code = ("import time; from llmft.locations import claim_checkpoint_dir\n"
            "with claim_checkpoint_dir('k1') as (path, shared):\n"
            "    path.mkdir(parents=True, exist_ok=True); (path / 'step-5').write_text('x')\n"
            "    print(path, shared, flush=True); time.sleep(30)\n")
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        held, shared = first.stdout.readline().split()
        assert shared == "True" and Path(held) == tmp_path / "checkpoints" / "k1"
        with claim_checkpoint_dir("k1") as (own, own_shared):
            assert not own_shared and own != Path(held) and own.parent == Path(held).parent
        assert not own.exists()  # a private folder is removed with its run
        assert (Path(held) / "step-5").read_text() == "x"  # the first run's checkpoints are untouched
    finally:
        first.kill()
        first.wait()
    with claim_checkpoint_dir("k1") as (path, shared):  # the killed run released it: resumable
        assert shared and (path / "step-5").exists()


def test_scratch_folders_are_removed_when_the_process_exits(tmp_path: Path) -> None:
    code = ("from llmft.locations import scratch_dir\n"
            "p = scratch_dir('train-'); (p / 'model.bin').write_bytes(b'0' * 10); print(p)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path), check=True)
    path = Path(out.stdout.strip())
    assert path.parent == tmp_path / "scratch" and not path.exists()
