"""Optional dependencies: which extra brings which package, and the one-line error when one is missing.

The default run (`llmft finetune`: data, LoRA, evaluate, register, promote) needs none of them. Code that
uses one imports it where it is used, after `require(...)`; a module that needs one at its top (the model
server) wraps the import in `try: ... except ModuleNotFoundError as exc: raise missing(exc, ...) from None`.
tests/test_install.py holds every import of these packages to one of the two forms.
"""

from __future__ import annotations

import importlib.util

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

