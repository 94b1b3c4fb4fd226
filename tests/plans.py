"""What a dry run plans, and which rules load the studied model: helpers of the tests that check
the GPU requests (test_resources, test_workflow, test_slurm)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def planned_resources(dry_run: str) -> dict[str, list[dict[str, str]]]:
    """Rule -> the resources of each job a dry run plans."""
    jobs: dict[str, list[dict[str, str]]] = {}
    # Jobs of a group are listed indented under "Group job <name>".
    for rule, res in re.findall(r"^ *rule (\w+):\n(?: +.*\n)*? +resources: (.*)$", dry_run, flags=re.M):
        jobs.setdefault(rule, []).append(dict(kv.split("=", 1) for kv in res.split(", ")))
    return jobs


def declared_model_rules() -> set[str]:
    """The rules whose resources come from model_job_resources (rules/common.smk), read from the rule
    files; tests/test_workflow.py checks these are exactly the rules whose jobs load the model."""
    rules = set()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(), flags=re.M):
            if "model_job_resources(" in body:
                rules.add(name)
    return rules


def readme_model_rules() -> set[str]:
    """The model rules the README's cluster section lists."""
    found = re.search(r"The rules that load the studied model[^:]*:((?:\s*`\w+`,?)+)", (REPO / "README.md").read_text())
    assert found, "README: no list of the rules that load the studied model"
    return set(re.findall(r"`(\w+)`", found.group(1)))


def gpu_rules(jobs: dict[str, list[dict[str, str]]]) -> set[str]:
    return {rule for rule, planned in jobs.items() if any(int(job.get("gpu", 0)) for job in planned)}


def first_outputs(dry_run: str) -> dict[str, str]:
    """Rule -> the first output of its first planned job."""
    outputs: dict[str, str] = {}
    for rule, output in re.findall(r"^ *rule (\w+):\n(?: +.*\n)*? +output: ([^,\s]+)", dry_run, flags=re.M):
        outputs.setdefault(rule, output)
    return outputs


def rule_stages(rules: Path = REPO / "rules") -> dict[str, str]:
    """rule name -> the "package.module:function" its `script: stage(...)` names, read from the rule files."""
    found = {}
    for path in sorted(rules.glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.S | re.M):
            if "script:" in body:
                match = re.search(r'script:\s*\n\s*stage\("([\w.]+:\w+)"\)', body)
                assert match, f"rule {name} ({path.name}) runs a script not through stage(\"module:function\")"
                found[name] = match.group(1)
    return found


def loaded_modules(root: Path, module: str) -> set[str]:
    """The project modules (not packages) a fresh interpreter holds after importing `module` from the
    package under `root`: Python's own account of the imports."""
    code = (f"import importlib, json, sys; sys.path.insert(0, {str(root)!r}); "
            f"importlib.import_module('workflow_scripts.{module}'); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('workflow_scripts.'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout)
    return {m for m in loaded if not (root / m.replace(".", "/")).is_dir()}
