"""The export stage: a registry version (default the champion) -> merged safetensors in Hugging Face
layout, GGUF files for llama.cpp, an Ollama Modelfile, the round-trip check, and all of it logged to
the version's MLflow run with a tag on the version pointing there.

Registered versions are already full models (`registry.stage.register_candidate` merges LoRA/DoRA
adapters before logging), so "merged" here means: saved as one self-contained folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from llmft.config import ExportConfig
from llmft.contracts import Export
from llmft.export.gguf_writer import ExportError, architecture_of, check_supported, tokenizer_metadata, write_gguf
from llmft.export.ollama import modelfile
from llmft.export.verify import round_trip
from llmft.locations import project_home
from llmft.registry.prompts import trained_instruction
from llmft.registry.versions import CHAMPION, current_alias_version, load_components, set_version_tags

log = logging.getLogger(__name__)

ARTIFACT_PATH = "export"


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


MARKER = ".llmft-export.json"  # written into every export folder: only such a folder is ever replaced


def check_output_dir(out_dir: Path) -> None:
    """Refuse a target that is not ours to replace: a file, or a non-empty folder without our marker
    (`--set export.output_dir=~/models` must never wipe the other models there)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"export.output_dir {out_dir} exists and is not a folder; choose a new or empty folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / MARKER).is_file() and not _unmarked_export(out_dir):
        raise ExportError(f"export.output_dir {out_dir} is not empty and was not written by llmft export (no "
                          f"{MARKER}); choose a new or empty folder, e.g. {out_dir / 'llmft-export'}")


def _unmarked_export(out_dir: Path) -> bool:
    """An export written before the marker existed: nothing in it but what an export writes."""
    names = {p.name for p in out_dir.iterdir()}
    export_files = {"Modelfile", "checks.json", "merged"}
    return ({"Modelfile", "merged"} <= names and (out_dir / "merged").is_dir()
            and all(name in export_files or name.endswith(".gguf") for name in names))


def _swap_in(work: Path, out_dir: Path) -> None:
    """Put the finished `work` folder at `out_dir`. A previous export is moved aside first and deleted
    only once the new one is in place; if the swap fails it is moved back."""
    previous = None
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.previous.", dir=out_dir.parent))
            previous.rmdir()
            out_dir.rename(previous)
        else:
            out_dir.rmdir()  # an empty folder the user made for the export
    try:
        work.rename(out_dir)
    except BaseException:
        if previous is not None and not out_dir.exists():
            previous.rename(out_dir)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def export_model(model: Any, tokenizer: Any, out_dir: Path, name: str, version: str = "0",
                 cfg: ExportConfig | None = None, system_prompt: str | None = None) -> Export:
    """Write merged weights, GGUF files and a Modelfile for an in-memory full-precision causal LM,
    run the round-trip check if `cfg.verify`, and only then put the folder at `out_dir`. A previous
    export there is replaced only when all of that succeeded; a folder llmft did not write is refused."""
    import copy

    cfg = cfg or ExportConfig()
    started = time.perf_counter()
    check_supported(model)  # fail in one line before anything is written
    tokenizer_metadata(tokenizer, int(model.config.vocab_size), cfg.tokenizer_pre)
    check_output_dir(out_dir)
    stem = f"{name}-v{version}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # build next to the target, verify there, swap in at the end: a failed export never touches the old one
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (work / MARKER).write_text(json.dumps({"name": name, "version": str(version),
                                               "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        merged_dir = work / "merged"
        merged = copy.deepcopy(model).to(_dtype(cfg.merged_dtype))
        merged.save_pretrained(merged_dir, safe_serialization=True)
        del merged
        tokenizer.save_pretrained(merged_dir)
        gguf: dict[str, Path] = {}
        for quant in cfg.quants:
            gguf[quant] = write_gguf(model, tokenizer, work / f"{stem}.{quant}.gguf", quant, name=stem,
                                     tokenizer_pre=cfg.tokenizer_pre,
                                     description=f"{name} version {version}, exported by llmft")
        text, template = modelfile(gguf[cfg.modelfile_quant].name, tokenizer, system_prompt,
                                   header=f"{name} v{version}: ollama create {name} -f Modelfile")
        (work / "Modelfile").write_text(text, encoding="utf-8")
        written = time.perf_counter() - started
        log.info("export: wrote %s in %.1fs (chat template: %s)", work, written, template.kind)
        checks = round_trip(model, tokenizer, gguf, system_prompt) if cfg.verify else []
        if checks:
            (work / "checks.json").write_text(json.dumps([c.model_dump() for c in checks], indent=2) + "\n")
        failed = [c for c in checks if not c.passed]
        if failed:
            raise ExportError("GGUF round trip failed (the previous export, if any, is kept): " + "; ".join(
                f"{c.quant}: max|diff| {c.max_abs_diff:.4f} (scale {c.logit_scale:.2f}), top-1 "
                f"{c.top1_agreement:.3f}, tokenizer {'ok' if c.tokenizer_matches is not False else 'differs'}; "
                f"needs {c.tolerance}" for c in failed))
        check_output_dir(out_dir)  # again: something may have appeared there meanwhile
        _swap_in(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    gguf = {quant: out_dir / path.name for quant, path in gguf.items()}
    sizes = {str(p.relative_to(out_dir)): p.stat().st_size for p in sorted(out_dir.rglob("*"))
             if p.is_file() and p.name != MARKER}
    result = Export(name=name, version=str(version), architecture=architecture_of(model),
                    output_dir=str(out_dir), merged_dir=str(out_dir / "merged"),
                    gguf={quant: str(path) for quant, path in gguf.items()}, sizes=sizes,
                    modelfile=str(out_dir / "Modelfile"), system_prompt=system_prompt, checks=checks)
    result.wall_seconds = round(time.perf_counter() - started, 1)
    return result


def resolve_version(name: str, version: str | None) -> str:
    if version:
        return str(version)
    found = current_alias_version(name, CHAMPION)
    if found is None:
        raise ExportError(f"{name} has no @{CHAMPION} to export; name one with --set export.version=N")
    return found


def export_version(name: str, cfg: ExportConfig, out_root: Path | None = None) -> Export:
    """Export `models:/<name>/<cfg.version or @champion>`; log the files to its run and tag the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    version = resolve_version(name, cfg.version)
    client = MlflowClient()
    try:
        record = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ExportError(f"cannot export {name} v{version}: {str(exc).splitlines()[0]}") from None
    tags = dict(record.tags)
    model, tokenizer = load_components(name, version)
    root = out_root or project_home() / "exports"
    out_dir = Path(cfg.output_dir) if cfg.output_dir else root / f"{name}-v{version}"
    # the system message the server applies is the one the model was trained with (the task's instruction)
    instruction = trained_instruction(tags, tokenizer.chat_template or "", f"models:/{name}/{version}")
    result = export_model(model, tokenizer, out_dir, name, version, cfg, instruction)
    if cfg.log_to_mlflow and record.run_id:
        client.log_artifacts(record.run_id, result.output_dir, ARTIFACT_PATH)
        result.artifact_uri = f"runs:/{record.run_id}/{ARTIFACT_PATH}"
        record_tags: dict[str, Any] = {"export.uri": result.artifact_uri,
                                       "export.at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "export.files": json.dumps(sorted(result.sizes))}
        for check in result.checks:
            record_tags[f"export.check.{check.quant}"] = (
                f"{'pass' if check.passed else 'FAIL'}: max|diff| {check.max_abs_diff:.4f} of scale "
                f"{check.logit_scale:.2f}, top-1 {check.top1_agreement:.3f} over {check.tokens} tokens")
        set_version_tags(name, version, record_tags)
    elif cfg.log_to_mlflow:
        log.warning("%s v%s has no run: the export stays local in %s", name, version, result.output_dir)
    return result


def export_summary(run: Any, tracking_uri: str, wall_seconds: float) -> dict[str, Any]:
    """run.py's closing summary for `--pipeline export`."""
    exported: Export = run.steps["export_model"].outputs["export"][0].load()
    return {"pipeline": "export", "zenml_run_id": str(run.id), "tracking_uri": tracking_uri,
            **exported.model_dump(), "wall_seconds": round(wall_seconds, 1)}


def export_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"\nexported {summary['name']} v{summary['version']} ({summary['architecture']}) to "
             f"{summary['output_dir']}"]
    for file, size in summary["sizes"].items():
        if file.endswith((".gguf", ".safetensors")) or file == "Modelfile":
            lines.append(f"  {file:<40} {size / 1e6:>9.1f} MB")
    for check in summary["checks"]:
        lines.append(f"  round trip {check['quant']}: max|diff| {check['max_abs_diff']:.4f} (logit scale "
                     f"{check['logit_scale']:.1f}), top-1 agreement {check['top1_agreement']:.3f} -> "
                     f"{'pass' if check['passed'] else 'FAIL'}")
    if summary.get("artifact_uri"):
        lines.append(f"  logged to {summary['artifact_uri']}")
    lines.append(f"  ollama: cd {summary['output_dir']} && ollama create {summary['name']} -f Modelfile")
    return lines
