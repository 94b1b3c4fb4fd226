"""What a dry run plans, and which rules load the studied model: helpers of the tests that check
the GPU requests (test_resources, test_workflow, test_slurm)."""
from __future__ import annotations

import re

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
