"""The shape of the code, as the folder tree shows it: stage packages over a small core, imports one
way, torch only where a model runs, every rule naming the function it runs, and Snakemake's linter
with nothing to say."""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

from .plans import rule_stages

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workflow_scripts"
# The packages in the order they may import each other: each one imports only those before it (and itself).
LAYERS = ["core", "sources", "prompts", "model", "analysis", "causal", "theory", "report"]
# Where a model runs: the only packages whose modules may import torch.
TORCH_PACKAGES = {"model", "causal"}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted name (core.paths) -> file, for every module of the package but the packages' faces."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"}


def imported(path: Path, known: set[str]) -> tuple[set[str], list[str]]:
    """Project modules `path` imports at module level, and 'function imports module' for imports inside one."""
    def targets(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {a.name.removeprefix("workflow_scripts.") for a in node.names if a.name.startswith("workflow_scripts.")}
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workflow_scripts"):
            assert node.level == 0, f"{path}: relative import"
            base = node.module.removeprefix("workflow_scripts").lstrip(".")
            return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        return set()

    tree = ast.parse(path.read_text())
    top = set().union(*(targets(node) for node in tree.body)) if tree.body else set()
    nested = [f"{path.stem}.{node.name} imports {m}" for node in ast.walk(tree)
              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              for child in ast.walk(node) for m in targets(child)]
    return top & known, nested


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imported(path, known)[0] for name, path in modules().items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules (first == last), or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def stage_modules() -> set[str]:
    return {spec.split(":")[0] for spec in rule_stages().values()}


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["prompts.sets"] >= {"core.split", "prompts.text", "core.readers"}  # the walk sees real imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {**import_graph(), "core.split": {"prompts.sets"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and {"prompts.sets", "core.split"} <= set(cycle)


def test_packages_import_only_the_packages_below_them():
    wrong = [f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
             if LAYERS.index(target.split(".")[0]) > LAYERS.index(module.split(".")[0])]
    assert not wrong, wrong
    assert {m.split(".")[0] for m in modules()} == set(LAYERS)


def test_no_module_imports_a_project_module_inside_a_function():
    known = set(modules())
    nested = [line for path in modules().values() for line in imported(path, known)[1]]
    assert not nested, f"imports of workflow_scripts modules inside functions (hiding a cycle?): {nested}"


def test_no_stage_is_used_as_a_library():
    """What two stages share lives in a library module: a module a rule runs is imported by no module."""
    stages = stage_modules()
    assert {"model.extract", "model.zero_shot", "analysis.calibration", "report.assemble"} <= stages
    users = [f"{module} imports the stage {target}" for module, targets in import_graph().items() for target in targets & stages]
    assert not users, users


def test_every_rule_names_a_function_that_exists():
    stages = rule_stages()
    assert len(stages) > 25
    for rule, spec in stages.items():
        module, function = spec.split(":")
        assert callable(getattr(importlib.import_module(f"workflow_scripts.{module}"), function, None)), rule


def test_torch_is_imported_only_in_the_model_packages():
    """By folder: no file outside model/ and causal/ imports torch, even inside a function, and
    importing all of them loads neither torch nor transformers."""
    outside = sorted(name for name in modules() if name.split(".")[0] not in TORCH_PACKAGES)
    importers = [name for name in outside for node in ast.walk(ast.parse(modules()[name].read_text()))
                 if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names))
                 or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch")]
    assert not importers, f"torch imported outside {sorted(TORCH_PACKAGES)}: {importers}"
    code = (
        "import importlib, json, sys\n"
        f"for name in {outside!r}: importlib.import_module('workflow_scripts.' + name)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"importing {outside} loaded {out.stdout.strip()}"
    # and the boundary is real: a model stage does load torch
    out = subprocess.run([sys.executable, "-c", "import sys, workflow_scripts.model.extract; print('torch' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_modules_are_small():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_packages_faces_hold_no_code():
    """A package's __init__.py is its docstring only, so no code hides there (core/code.py's
    fingerprints read modules, not packages)."""
    for init in sorted(PACKAGE.rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init


def test_snakemake_lint_is_clean():
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr
