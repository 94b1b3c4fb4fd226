"""The shape of the code: workflow_scripts' imports form a one-way graph, the analyses never load
torch, and Snakemake's linter has nothing to say about the workflow."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workflow_scripts"
# The stages that run the model import torch when they are imported; every other module must not
# (models and encoder import it inside the functions that load weights).
TORCH_STAGES = {"engine", "engine_edits", "extract", "zero_shot", "interventions", "calibration"}


def package_imports(path: Path) -> tuple[set[str], list[str]]:
    """Sibling modules `path` imports at module level, and those it imports inside a function or class."""
    top, nested = set(), []
    modules = {p.stem for p in PACKAGE.glob("*.py")}

    def siblings(node: ast.AST) -> set[str]:
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or node.module == "workflow_scripts"):
            if node.module and node.level == 1:
                return {node.module.split(".")[0]}
            return {a.name for a in node.names if a.name in modules}
        if isinstance(node, ast.Import):
            return {a.name.split(".")[1] for a in node.names if a.name.startswith("workflow_scripts.")}
        return set()

    tree = ast.parse(path.read_text())
    for node in tree.body:
        top |= siblings(node)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nested += [f"{path.stem}.{node.name} imports {m}" for child in ast.walk(node) for m in siblings(child)]
    return top - {"__init__"}, nested


def import_graph() -> dict[str, set[str]]:
    return {p.stem: package_imports(p)[0] for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


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


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 25 and graph["prompts"] >= {"split", "render", "readers"}  # the walk sees real imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {**import_graph(), "split": {"prompts"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and {"prompts", "split"} <= set(cycle)


def test_no_module_imports_a_sibling_inside_a_function():
    nested = [line for p in sorted(PACKAGE.glob("*.py")) for line in package_imports(p)[1]]
    assert not nested, f"imports of workflow_scripts modules inside functions (hiding a cycle?): {nested}"


def test_only_the_model_stages_import_torch():
    torch_free = sorted(set(import_graph()) - TORCH_STAGES - {"step"})
    code = (
        "import importlib, json, sys\n"
        f"for name in {torch_free!r}: importlib.import_module('workflow_scripts.' + name)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"importing {torch_free} loaded {out.stdout.strip()}"
    # and the boundary is real: a model stage does load torch
    out = subprocess.run([sys.executable, "-c", "import sys, workflow_scripts.extract; print('torch' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_snakemake_lint_is_clean():
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr


def test_every_script_rule_has_a_stage_with_from_snakemake():
    """Rules name no module; stages.py maps each to one (outside step.py, so adding a rule re-runs nothing)."""
    import importlib
    import re

    from workflow_scripts.stages import STAGES

    rules = set()
    for path in (REPO / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.S | re.M):
            if "STEP" in body:
                rules.add(name)
    assert rules and rules == set(STAGES), sorted(rules ^ set(STAGES))
    for rule, module in STAGES.items():
        assert callable(getattr(importlib.import_module(f"workflow_scripts.{module}"), "from_snakemake", None)), rule
