"""The project's import graph (issue 27), read from the source with `ast` (nothing of the package is imported):

- no cycle, counting module-level and in-function imports alike (an import inside a function only hides a
  cycle until that function runs); importing `a.b.c` also runs the packages `a.b` and `a` first;
- layers: the config layer imports only itself and the training-method registry it takes `train.method`
  from; the library (`llmft/` but `llmft/cli/`) never imports `steps/`, `pipelines/` or `llmft.cli`; `steps/`
  never imports `pipelines/` or `llmft.cli`;
- an import stays inside a function only for a reason its trailing comment names, and the graph confirms:
  `# optional: <extra> extra` (it brings a package of that extra) or `# start-up: <what>` (importing it at the
  top would add that package, or in a module the `llmft` command imports at start that llmft module, to the
  importing module's own import). Heavy and optional third-party packages are their own reason (HEAVY).

Imports under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("llmft", "steps", "pipelines")


def _extras() -> dict[str, tuple[str, ...]]:
    """llmft/extras.py's EXTRAS (extra -> the packages it brings), read without importing the package."""
    for node in ast.parse((ROOT / "llmft" / "extras.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "EXTRAS" and node.value is not None:
            return ast.literal_eval(node.value)
    raise AssertionError("llmft/extras.py has no EXTRAS")


EXTRAS = _extras()
EXTRA_OF = {module: extra for extra, modules in EXTRAS.items() for module in modules}

# the config layer, at the bottom: every pipeline and the command line read it
CONFIG_LAYER = {"llmft.contracts", "llmft.config", "llmft.config_base", "llmft.config_files", "llmft.config_serving",
                "llmft.config_stages", "llmft.errors"}
# what the config layer may import besides itself: `train.method`'s names and flags come from the METHODS registry
# (one source), which loads models through llmft.model_loading; nothing of these imports the config back
CONFIG_NEEDS = {"llmft", "llmft.train", "llmft.train.methods", "llmft.train.preference", "llmft.chat_format",
                "llmft.loss", "llmft.model_loading", "llmft.extras"}

# third-party packages imported where they are used, by design: each one's cost at import
HEAVY = {
    "torch": "~1 s", "transformers": "~1 s", "peft": "imports transformers", "accelerate": "imports torch",
    "mlflow": "~1 s", "zenml": "~1 s", "datasets": "~0.5 s", "evaluate": "imports datasets",
    "sklearn": "~0.5 s", "pandas": "~0.25 s", "pyarrow": "~0.1 s", "numpy": "~0.1 s", "matplotlib": "~0.2 s",
    "great_expectations": "~2 s", "huggingface_hub": "~0.2 s", "gguf": "imports numpy", "tqdm": "~30 ms",
    "psutil": "~12 ms (only the deploy checks use it)",
}
# in-function project imports in files this change could not edit; each should move to the module top
PENDING: dict[str, str] = {}
REASON = re.compile(r"#\s*(optional|start-up):\s*(.+?)\s*$")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    name: str  # what the statement names, e.g. llmft.data.stages or torch.nn
    line: int
    in_function: bool
    comment: str  # the statement's trailing comment, "" if none

    @property
    def root(self) -> str:
        return self.name.split(".")[0]

    @property
    def project(self) -> bool:
        return self.root in PROJECT

    def where(self) -> str:
        return f"{self.module}:{self.line} {'(in a function) ' if self.in_function else ''}imports {self.name}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def files() -> dict[str, Path]:
    return {module_name(p): p for d in PROJECT for p in sorted((ROOT / d).rglob("*.py"))}


def imports_of(module: str, path: Path) -> list[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def comment(node: ast.stmt) -> str:
        text = " ".join(lines[node.lineno - 1:node.end_lineno])
        return text[text.index("#"):] if "#" in text else ""

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        in_function = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, node.lineno, in_function, comment(node)) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            found.extend(Import(module, f"{base}.{a.name}", node.lineno, in_function, comment(node))
                         for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(ast.parse(source, filename=str(path)), False)
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(i for module, path in files().items() for i in imports_of(module, path))


def target(name: str) -> str | None:
    """The project module an imported name runs: the longest prefix that is a module."""
    while name and name not in files():
        name = name.rpartition(".")[0]
    return name or None


def runs(imp: Import) -> list[str]:
    """The project modules an import runs: its module, and the packages above it not above the importer."""
    found = target(imp.name)
    if found is None:
        return []
    parts = found.split(".")
    above = {".".join(parts[:i]) for i in range(1, len(parts))} - {".".join(imp.module.split(".")[:i])
                                                                   for i in range(1, imp.module.count(".") + 2)}
    return [m for m in [*sorted(above), found] if m in files() and m != imp.module]


def graph(in_functions: bool = True) -> dict[str, dict[str, Import]]:
    edges: dict[str, dict[str, Import]] = {m: {} for m in files()}
    for imp in all_imports():
        if imp.project and (in_functions or not imp.in_function):
            for dep in runs(imp):
                edges[imp.module].setdefault(dep, imp)
    return edges


def find_cycle(edges: dict[str, dict[str, Import]]) -> list[Import]:
    """One cycle, as the imports that close it, or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Import] = []

    def visit(module: str) -> list[Import]:
        state[module] = 1
        for dep, imp in sorted(edges[module].items()):
            path.append(imp)
            if state.get(dep) == 1:
                return path[next(i for i, p in enumerate(path) if p.module == dep):]
            if dep not in state and (cycle := visit(dep)):
                return cycle
            path.pop()
        state[module] = 2
        return []

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


@cache
def top_graph() -> dict[str, dict[str, Import]]:
    return graph(in_functions=False)


@cache
def closure(module: str) -> frozenset[str]:
    """What importing `module` imports: project modules and third-party top-level packages (module level)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += top_graph()[current]
    third = {i.root for i in all_imports() if i.module in seen and not i.in_function and not i.project}
    return frozenset(seen | (third - set(sys.stdlib_module_names)))


def full_closure(modules: set[str]) -> set[str]:
    edges, seen, todo = graph(), set(), list(modules)
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += edges[current]
    return seen


def cli_startup() -> frozenset[str]:
    return frozenset(m for m in closure("llmft.cli") if m in files())


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle:\n  " + "\n  ".join(i.where() for i in cycle)


def test_the_cycle_check_sees_in_function_imports(tmp_path: Path):
    a = Import("x.a", "x.b", 3, True, "")
    b = Import("x.b", "x.a", 1, False, "")
    assert find_cycle({"x.a": {"x.b": a}, "x.b": {"x.a": b}}) == [a, b]
    assert find_cycle({"x.a": {"x.b": a}, "x.b": {}}) == []
    source = tmp_path / "m.py"
    source.write_text("import os\nif TYPE_CHECKING:\n    import llmft.config\ndef f():\n    from llmft import plots"
                      "  # start-up: x\n")
    found = imports_of("llmft.m", source)
    assert [(i.name, i.in_function, i.comment) for i in found] == [("os", False, ""),
                                                                   ("llmft.plots", True, "# start-up: x")]


def test_the_config_layer_imports_only_itself_and_the_method_registry():
    outside = {m: sorted(set(full_closure({m})) - CONFIG_LAYER - CONFIG_NEEDS) for m in sorted(CONFIG_LAYER)}
    assert not any(outside.values()), {m: deps for m, deps in outside.items() if deps}
    needs = full_closure(CONFIG_NEEDS)
    assert needs <= CONFIG_LAYER | CONFIG_NEEDS, sorted(needs - CONFIG_LAYER - CONFIG_NEEDS)
    assert not graph()["llmft.contracts"] and not graph()["llmft.errors"]


def test_library_and_steps_never_import_upward():
    forbidden = {"steps": ("pipelines", "llmft.cli"), "llmft": ("steps", "pipelines", "llmft.cli")}
    problems = []
    for module, deps in graph().items():
        layer = module.split(".")[0]
        if module == "llmft.cli" or module.startswith("llmft.cli.") or layer not in forbidden:
            continue
        problems += [imp.where() for dep, imp in deps.items()
                     if any(dep == f or dep.startswith(f + ".") for f in forbidden[layer])]
    assert not problems, "\n".join(problems)


def _reason_problem(imp: Import) -> str | None:
    """Why this in-function import should not be in a function, or None when its reason holds."""
    found = REASON.search(imp.comment)
    if not imp.project and (imp.root in HEAVY or imp.root in EXTRA_OF or imp.root in sys.stdlib_module_names):
        return None
    if found is None:
        return "move it to the module top, or say why not (# optional: <extra> extra / # start-up: <what>)"
    kind, what = found.groups()
    brings = closure(target(imp.name)) if imp.project else frozenset({imp.root})
    if kind == "optional":
        extra = what.removesuffix(" extra")
        return None if extra in EXTRAS and brings & set(EXTRAS[extra]) else f"brings nothing of the {what}"
    added = brings - closure(imp.module)
    named = [w.strip() for w in what.split(",")]
    allowed = added if imp.module in cli_startup() else {m for m in added if m not in files()}
    wrong = [w for w in named if w not in allowed]
    return f"at the top it would not add {', '.join(wrong)} (it adds: {', '.join(sorted(added)) or 'nothing'})" \
        if wrong else None


def test_an_import_is_in_a_function_only_for_a_reason_the_graph_confirms():
    problems = []
    for imp in all_imports():
        if not imp.in_function or not imp.module.startswith("llmft") or (imp.project and imp.module in PENDING):
            continue
        problem = _reason_problem(imp)
        if problem:
            problems.append(f"{imp.where()}: {problem}")
    assert not problems, "\n".join(problems)


def test_the_llmft_command_imports_nothing_heavy_at_start():
    heavy = sorted(closure("llmft.cli") & (set(HEAVY) | set(EXTRA_OF)))
    assert not heavy, f"`import llmft.cli` imports {heavy}"
