"""The package's shape, computed from its own code (ast, nothing imported):

* one-way floors: a module imports only modules of its own floor or below, and no module imports
  itself back through others (no circle);
* imports sit at the top of a module, except the measured exceptions of :data:`LAZY_IMPORTS`;
* no module over :data:`MAX_MODULE_LINES` lines, no function over :data:`MAX_FUNCTION_LINES`
  lines except those of :data:`LONG_FUNCTIONS`, each with its reason.

A failure names the offending edge, circle, import, module or function.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fmri2img"

#: Floors, lowest first: a module may import its own floor and those before it, never one after.
FLOORS = ("core", "data", "sim", "embeddings", "models", "evaluation", "reporting", "stages", "cli")

#: Imports allowed inside functions: (importing module pattern, imported module pattern) -> the
#: measured reason (seconds of import time on this project's 2-core machine; docs/performance.md).
LAZY_IMPORTS = {
    ("fmri2img.cli.*", "fmri2img.stages.*"):
        "a command imports the stage it runs: every stage together imports torch, MLflow, pingouin and "
        "matplotlib (~6 s), which `fmri2img --help` and option errors must not wait for",
    ("fmri2img.cli.eval", "fmri2img.evaluation.scoring"): "pingouin (~1.9 s) via the statistics",
    ("fmri2img.stages.embed", "fmri2img.embeddings.clip"):
        "open_clip and torch (~4.4 s), only when a CLIP model has to encode something",
    ("fmri2img.evaluation.image_metrics", "lpips"): "optional dependency, may be absent",
    ("fmri2img.evaluation.image_metrics", "torch"): "only LPIPS uses it (~2.7 s for pure-numpy metrics otherwise)",
    ("fmri2img.models.ridge", "torch"): "a CPU ridge fit and predict never need torch (~2 s of imports)",
    ("fmri2img.models.ridge", "fmri2img.models.decoder"): "its torch module, for adapters and fine-tuning only",
    ("fmri2img.models.backends", "torch"): "the torch backend (CUDA) only; every CPU fit uses numpy/scipy",
    ("fmri2img.cli.ui", "fmri2img.core.tracking_layout"): "MLflow (~2 s), as for fmri2img.core.tracking",
    ("fmri2img.cli.ui", "fmri2img.core.ui_server"): "MLflow (~2 s), as for fmri2img.core.tracking",
    ("fmri2img.core.tracking_layout", "torch"): "torch (~2 s), only when a decoder is logged as an MLflow model",
    ("fmri2img.core.tracking_layout", "mlflow.pytorch"): "imports torch: see the line above",
    ("fmri2img.models.reconstruct", "diffusers*"): "optional extra 'reconstruct' (the unclip backend), may be absent",
    ("fmri2img.models.reconstruct", "transformers*"): "optional extra 'reconstruct' (the unclip backend), may be absent",
}

#: Size limits (the project's rules: "no function over ~80 lines, no module over ~500 lines").
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

#: Functions allowed over MAX_FUNCTION_LINES: "module:qualified name" -> reason.
LONG_FUNCTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else 0  # fmri2img/__init__: the root


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Modules an import statement loads (``from pkg import sub`` counts as ``pkg.sub`` when it is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative import
        package = module.split(".")[: -node.level] if not MODULES[module].name == "__init__.py" else \
            module.split(".")[: len(module.split(".")) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        out.append(candidate if candidate in MODULES else base)
    return out


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at the top of the module) of every import statement of ``module``."""
    tree = TREES[module]
    top = {id(node) for node in tree.body}
    for node in tree.body:  # a top-level `if TYPE_CHECKING:` / try block still counts as top
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(child) for child in ast.walk(node)}
    return [(name, node.lineno, id(node) in top) for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) for name in _imported(module, node)]


GRAPH = {module: sorted({name for name, _, _ in _imports(module) if name in MODULES and name != module})
         for module in MODULES}


def test_the_floors_are_the_package_folders():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(FLOORS), "every subpackage is one floor of FLOORS"
    assert [m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in FLOORS] == [], \
        "no module outside the floors except fmri2img/__init__.py"


def _upward(graph: dict[str, list[str]]) -> list[str]:
    return [f"{module} (floor {FLOORS[_floor(module)]}) imports {target} (floor {FLOORS[_floor(target)]})"
            for module, targets in graph.items() for target in targets if _floor(target) > _floor(module)]


def test_no_upward_import():
    upward = _upward(GRAPH)
    assert upward == [], "\n".join(upward)


def _circles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    circles = _circles(GRAPH)
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_imports_sit_at_the_top_except_measured_exceptions():
    lazy = []
    for module in MODULES:
        for name, line, at_top in _imports(module):
            allowed = any(fnmatch.fnmatch(module, a) and fnmatch.fnmatch(name, b) for a, b in LAZY_IMPORTS)
            if not at_top and not allowed:
                lazy.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {name} inside a function")
    assert lazy == [], "\n".join(lazy)


def test_every_lazy_import_exception_is_used():
    used = {(a, b) for module in MODULES for name, _, at_top in _imports(module) if not at_top
            for a, b in LAZY_IMPORTS if fnmatch.fnmatch(module, a) and fnmatch.fnmatch(name, b)}
    assert set(LAZY_IMPORTS) == used, f"stale exceptions: {set(LAZY_IMPORTS) - used}"


def test_no_module_over_the_limit():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    long = {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def test_no_function_over_the_limit():
    long = [f"{module}:{name} ({n} lines)" for module, tree in TREES.items() for name, n in _functions(tree)
            if n > MAX_FUNCTION_LINES and f"{module}:{name}" not in LONG_FUNCTIONS]
    assert long == [], "\n".join(long)


@pytest.mark.parametrize("name", ["DECODERS", "CONFIGURATIONS", "TEST_SETS", "ADAPTER_TYPES", "BASELINES"])
def test_every_name_tuple_is_defined_once(name):
    """A vocabulary tuple is assigned in core/vocab.py only; everything else imports it."""
    defined = [module for module, tree in TREES.items() for node in tree.body
               if isinstance(node, (ast.Assign, ast.AnnAssign))
               for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
               if isinstance(target, ast.Name) and target.id == name]
    assert defined == ["fmri2img.core.vocab"], defined


def test_no_one_letter_alias_of_a_project_module():
    """``metrics as M`` hides which module a name comes from; third-party conventions (``np``,
    ``pd``, torch's ``F``) are the libraries' own."""
    aliases = [f"{module}: {alias.name} as {alias.asname}" for module, tree in TREES.items()
               for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names if alias.asname and len(alias.asname) == 1
               for name in _imported(module, node) if name.startswith("fmri2img")]
    assert aliases == [], "\n".join(aliases)


def test_the_checker_sees_an_upward_import_and_a_circle():
    """The graph checks can fail: a planted upward edge and a planted circle are named."""
    planted = {k: list(v) for k, v in GRAPH.items()}
    planted["fmri2img.core.files"].append("fmri2img.stages.train")
    planted["fmri2img.stages.train"].append("fmri2img.core.files")
    assert _upward(planted) == ["fmri2img.core.files (floor core) imports fmri2img.stages.train (floor stages)"]
    assert any({"fmri2img.core.files", "fmri2img.stages.train"} <= set(c) for c in _circles(planted))
