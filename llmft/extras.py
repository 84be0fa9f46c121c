"""Optional dependencies: which extra brings which package, and the one-line error when one is missing.

The default run (`llmft finetune`: data, LoRA, evaluate, register, promote) needs none of them. Code that
uses one imports it where it is used, after `require(...)`; a module that needs one at its top (the model
server) wraps the import in `try: ... except ModuleNotFoundError as exc: raise missing(exc, ...) from None`.
tests/test_install.py holds every import of these packages to one of the two forms.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from llmft.errors import UserFacingError

# extra -> the top-level modules it brings (starlette comes with fastapi; the server imports both)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "starlette"),
    "sweep": ("optuna",),
    "qlora": ("bitsandbytes",),
    "schedule": ("croniter",),
}
EXTRA_OF: dict[str, str] = {module: extra for extra, modules in EXTRAS.items() for module in modules}


class MissingExtra(UserFacingError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""


def message(extra: str, what: str) -> str:
    return f'{what} needs the {extra} extra: pip install "llmft[{extra}]"'


def installed(module: str) -> bool:
    """Whether `module` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or a module set to None
        return False


def require(module: str, extra: str, what: str) -> None:
    """Raise MissingExtra (one line: what needs which extra, and the pip command) unless `module` imports."""
    if not installed(module):
        raise MissingExtra(message(extra, what))


def missing(exc: ModuleNotFoundError, extra: str, what: str) -> ImportError:
    """For a module-level import: MissingExtra when the missing module is one of `extra`'s, else `exc`."""
    return MissingExtra(message(extra, what)) if (exc.name or "").split(".")[0] in EXTRAS[extra] else exc


def run_problem(pipeline: str, cfg: Any, schedule: bool = False) -> str | None:
    """Before a run starts (no model loaded yet): the first extra the run needs and lacks, as one line."""
    from llmft.train.methods import get_method

    needs: list[tuple[str, str, str]] = []
    if pipeline == "deploy" or (pipeline in ("finetune", "sweep") and cfg.deploy.on_promotion):
        what = "llmft deploy" if pipeline == "deploy" else "deploy.on_promotion"
        needs += [("fastapi", "serve", what), ("uvicorn", "serve", what)]
    if pipeline == "sweep":
        needs.append(("optuna", "sweep", "llmft sweep"))
    if pipeline in ("finetune", "sweep") and get_method(cfg.train.method).loads_four_bit(cfg.train):
        needs.append(("bitsandbytes", "qlora", f"train.method={cfg.train.method} (a 4-bit base)"))
    if schedule:
        needs.append(("croniter", "schedule", "llmft finetune --schedule"))
    return next((message(extra, what) for module, extra, what in needs if not installed(module)), None)
