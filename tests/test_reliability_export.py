"""Issue 24, item 6: export never deletes a folder it did not write, and never loses the previous
export: it builds in a temporary sibling, verifies there, and swaps only when everything passed.
On the tiny random model with one f16 GGUF (default tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmft.base_model import load_model, load_tokenizer
from llmft.config import ExportConfig
from llmft.contracts import GGUFCheck
from llmft.export import stage
from llmft.export.gguf_writer import ExportError
from llmft.export.stage import MARKER, export_model

FAST = ExportConfig(quants=["f16"], modelfile_quant="f16", merged_dtype="float32", verify=False,
                    log_to_mlflow=False)


@pytest.fixture(scope="module")
def tiny(tiny_model_path: str):
    return load_model(tiny_model_path).eval(), load_tokenizer(tiny_model_path)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(folder: Path) -> list[str]:
    """Whatever an export left next to its target (temporary build or backup folders)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_a_folder_llmft_did_not_write_is_refused_and_left_alone(tiny, tmp_path: Path):
    models = tmp_path / "models"
    (models / "other-model").mkdir(parents=True)
    (models / "other-model" / "weights.gguf").write_bytes(b"someone else's model")
    (models / "notes.txt").write_text("mine")
    before = _tree(models)
    with pytest.raises(ExportError, match="not empty and was not written by llmft"):
        export_model(*tiny, models, "demo", "1", FAST)
    assert _tree(models) == before
    assert _siblings(models) == []
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        export_model(*tiny, a_file, "demo", "1", FAST)
    assert a_file.read_text() == "x"


def test_a_new_or_empty_folder_is_written_and_an_own_export_is_replaced(tiny, tmp_path: Path):
    out = tmp_path / "exports" / "demo"
    out.mkdir(parents=True)  # empty: fine
    first = export_model(*tiny, out, "demo", "1", FAST)
    assert (out / MARKER).is_file() and (out / "demo-v1.f16.gguf").is_file() and (out / "Modelfile").is_file()
    assert MARKER not in first.sizes
    export_model(*tiny, out, "demo", "2", FAST)
    assert (out / "demo-v2.f16.gguf").is_file() and not (out / "demo-v1.f16.gguf").exists()
    assert _siblings(out) == []


def test_an_export_written_before_the_marker_is_replaced_but_not_one_with_other_files(tiny, tmp_path: Path):
    out = tmp_path / "old-export"
    (out / "merged").mkdir(parents=True)
    for name in ("Modelfile", "demo-v1.f16.gguf", "merged/config.json"):
        (out / name).write_text("old")
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="was not written by llmft"):
        export_model(*tiny, out, "demo", "2", FAST)
    assert (out / "my-notes.txt").read_text() == "mine"
    (out / "my-notes.txt").unlink()
    export_model(*tiny, out, "demo", "2", FAST)
    assert (out / MARKER).is_file() and not (out / "demo-v1.f16.gguf").exists() and _siblings(out) == []


def test_a_failed_verification_keeps_the_previous_export(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "demo"
    export_model(*tiny, out, "demo", "1", FAST)
    before = _tree(out)

    def failing(model, tokenizer, gguf_files, system_prompt=None):
        return [GGUFCheck(quant=q, file=p.name, bytes=p.stat().st_size, tokens=10, max_abs_diff=9.0,
                          mean_abs_diff=1.0, logit_scale=10.0, top1_agreement=0.1, passed=False, tolerance="t")
                for q, p in gguf_files.items()]

    monkeypatch.setattr(stage, "round_trip", failing)
    with pytest.raises(ExportError, match="round trip failed"):
        export_model(*tiny, out, "demo", "2", FAST.model_copy(update={"verify": True}))
    assert _tree(out) == before  # v1 untouched, no v2 file, no checks.json of the failed one
    assert _siblings(out) == []


def test_a_failure_while_swapping_puts_the_previous_export_back(tiny, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "demo"
    export_model(*tiny, out, "demo", "1", FAST)
    before = _tree(out)
    real_rename = Path.rename

    def rename(self: Path, target):
        if Path(target) == out and self.name.startswith(".demo.") and ".previous." not in self.name:
            raise OSError("disk full")  # the finished build cannot be moved into place
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        export_model(*tiny, out, "demo", "2", FAST)
    monkeypatch.undo()
    assert _tree(out) == before
    assert _siblings(out) == []


def test_a_failure_while_writing_never_touches_the_target(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "demo"
    export_model(*tiny, out, "demo", "1", FAST)
    before = _tree(out)

    def broken(*args, **kwargs):
        raise ExportError("writer crashed")

    monkeypatch.setattr(stage, "write_gguf", broken)
    with pytest.raises(ExportError, match="writer crashed"):
        export_model(*tiny, out, "demo", "2", FAST)
    assert _tree(out) == before and _siblings(out) == []
