"""Installing: the extras (optional packages are imported only behind llmft/extras.py's guards, and the
default pipeline imports without them), the one-line error naming an extra, and constraints.txt pinning
every dependency pyproject.toml declares (CI installs with it)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llmft.errors import UserFacingError
from llmft.extras import EXTRA_OF, EXTRAS, MissingExtra, message, missing, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME_EXTRAS = sorted(EXTRAS)


def project_files() -> list[Path]:
    return [*sorted(p for d in ("llmft", "steps", "pipelines") for p in (ROOT / d).rglob("*.py")), ROOT / "run.py"]


def _optional_roots(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
    else:
        return []
    return [name.split(".")[0] for name in names if name.split(".")[0] in EXTRA_OF]


def _guard_calls(scope: ast.AST, name: str) -> list[tuple[int, str, str]]:
    """(line, module or '', extra) of the `require(...)` / `missing(...)` calls in `scope` (nested ones too)."""
    found = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            module, extra = (args[0], args[1]) if name == "require" else ("", args[1])
            found.append((node.lineno, str(module), str(extra)))
    return found


def _unguarded(tree: ast.Module) -> list[str]:
    """Optional imports that are neither typing-only, nor after a `require` of their extra in their function,
    nor in a module-level `try` whose handler raises `missing(exc, <their extra>, ...)`."""
    problems: list[str] = []

    def visit(node: ast.AST, scope: ast.AST | None, handler_extras: set[str]) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, scope, handler_extras)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = node
        if isinstance(node, ast.Try):
            handler_extras = handler_extras | {extra for h in node.handlers for _, _, extra in
                                               _guard_calls(h, "missing")}
        for root in _optional_roots(node):
            extra = EXTRA_OF[root]
            guarded = extra in handler_extras or (scope is not None and any(
                line < node.lineno and EXTRA_OF.get(module) == extra == called
                for line, module, called in _guard_calls(scope, "require")))
            if not guarded:
                problems.append(f"line {node.lineno}: {root} (the {extra} extra) imported without its guard")
        for child in ast.iter_child_nodes(node):
            visit(child, scope, handler_extras)

    visit(tree, None, set())
    return problems


def test_optional_imports_are_guarded():
    problems, seen = [], set()
    for path in project_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        problems += [f"{path.relative_to(ROOT)} {p}" for p in _unguarded(tree)]
        seen |= {root for node in ast.walk(tree) for root in _optional_roots(node)}
        for name in ("require", "missing"):
            for line, module, extra in _guard_calls(tree, name):
                assert extra in EXTRAS, f"{path.relative_to(ROOT)}:{line}: {name}() names no extra: {extra!r}"
                assert name == "missing" or EXTRA_OF.get(module) == extra, f"{path}:{line}: {module} is not {extra}'s"
    assert not problems, "\n".join(problems)
    assert {"fastapi", "uvicorn", "optuna", "croniter"} <= seen  # the scan does find the imports


def test_guard_scan_catches_an_unguarded_import():
    bad = ast.parse(textwrap.dedent("""
        import optuna
        def f():
            from croniter import croniter
        def g():
            require("croniter", "schedule", "x")
            from croniter import croniter
            from fastapi import FastAPI
    """))
    assert [p.split(":")[1].split(" (")[0].strip() for p in _unguarded(bad)] == ["optuna", "croniter", "fastapi"]


def test_require_gives_one_line_naming_the_extra():
    with pytest.raises(MissingExtra) as info:
        require("llmft_no_such_module", "serve", "llmft deploy")
    assert str(info.value) == 'llmft deploy needs the serve extra: pip install "llmft[serve]"'
    assert isinstance(info.value, UserFacingError) and isinstance(info.value, ImportError)
    require("json", "serve", "llmft deploy")  # present: nothing happens
    assert str(missing(ModuleNotFoundError(name="uvicorn.config"), "serve", "x")) == message("serve", "x")
    other = ModuleNotFoundError(name="h11")  # a broken install of something else is not hidden
    assert missing(other, "serve", "x") is other


BLOCKER = """
import builtins, sys
OPTIONAL = {optional!r}
ALSO_ELSEWHERE = {{"fastapi", "uvicorn", "starlette"}}  # mlflow's own server imports these: absent only to us
for name in OPTIONAL - (set() if {everywhere!r} else ALSO_ELSEWHERE):
    sys.modules[name] = None  # as in a core install: the import fails
attempts = []
real_import = builtins.__import__

def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {{}}).get("__name__", "")
    if level == 0 and name.split(".")[0] in OPTIONAL and importer.split(".")[0] in ("llmft", "steps", "pipelines",
                                                                                     "run"):
        attempts.append(f"{{importer}} imports {{name}}")
        raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = guarded_import
"""


def _run_blocked(code: str, tmp_path: Path, everywhere: bool = False) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter where the optional packages cannot be imported by the project (nor at all,
    `everywhere`; else mlflow may still import fastapi, uvicorn and starlette for its own server)."""
    script = BLOCKER.format(optional=set(EXTRA_OF), everywhere=everywhere) + textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update({"LLMFT_HOME": str(tmp_path / "home"), "ZENML_CONFIG_PATH": str(tmp_path / "zenml"),
                "ZENML_ANALYTICS_OPT_IN": "false", "PYTHONPATH": str(ROOT), "NO_COLOR": "1"})
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, text=True, capture_output=True,
                          timeout=240)


def test_default_pipeline_imports_without_the_extras(tmp_path):
    proc = _run_blocked("""
        import llmft.cli, llmft.cli.execute, run
        import pipelines.data, pipelines.finetune, pipelines.promote, pipelines.export
        from llmft.cli.plan import dry_run
        assert not attempts, attempts
        print("imported", sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL and sys.modules[m]))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported" in proc.stdout


def test_verbs_that_need_an_extra_say_which(tmp_path):
    """`llmft sweep`, `llmft deploy`, `--schedule` and a QLoRA run stop before any work, in one line."""
    proc = _run_blocked("""
        import contextlib, io
        from llmft.cli import main
        for argv in (["sweep"], ["deploy"], ["finetune", "--schedule", "0 3 * * *"],
                     ["finetune", "--set", "train.method=qlora"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(argv)
            print(code, err.getvalue().strip().splitlines()[-1])
        assert not attempts, attempts
    """, tmp_path, everywhere=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-4:] == [
        '2 error: llmft sweep needs the sweep extra: pip install "llmft[sweep]"',
        '2 error: llmft deploy needs the serve extra: pip install "llmft[serve]"',
        '2 error: llmft finetune --schedule needs the schedule extra: pip install "llmft[schedule]"',
        '2 error: train.method=qlora (a 4-bit base) needs the qlora extra: pip install "llmft[qlora]"']


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_in_range():
    """Core, every runtime extra and test: pinned, at a version the declared range admits (so CI tests a
    version users may get); the project itself is not pinned."""
    pins = _pins()
    extras = PYPROJECT["optional-dependencies"]
    declared = [*PYPROJECT["dependencies"], *(r for name in [*RUNTIME_EXTRAS, "test"] for r in extras[name])]
    assert "llmft" not in pins
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "llmft":
            continue
        assert name in pins, f"constraints.txt does not pin {req.name} ({text})"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {text}"


def test_extras_match_the_guards():
    """pyproject's runtime extras are llmft/extras.py's, `all` is all of them, `test` installs `all`, and
    no optional package is a core dependency."""
    extras = PYPROJECT["optional-dependencies"]
    assert set(RUNTIME_EXTRAS) <= set(extras)
    assert extras["all"] == [f"llmft[{','.join(RUNTIME_EXTRAS)}]"] or sorted(
        Requirement(extras["all"][0]).extras) == RUNTIME_EXTRAS
    assert "llmft[all]" in extras["test"]
    core = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["dependencies"]}
    for extra in RUNTIME_EXTRAS:
        names = {canonicalize_name(Requirement(r).name) for r in extras[extra]}
        assert names and names <= {canonicalize_name(m) for m in EXTRAS[extra]}, extra
        assert not names & core, f"{extra}: {names & core} is also a core dependency"
