"""What a rule runs and when its code counts as changed (workflow_scripts/core/code.py), on a copy of
the package so edits touch nothing real."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .plans import loaded_modules

# Run in a fresh interpreter on the copy: the tested module computes its paths from its own file.
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from workflow_scripts.core import code
print(json.dumps({"closure": code.closure(sys.argv[2]), "fingerprint": code.fingerprint(sys.argv[2]),
                  "entry": code.entry_script(sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None}))
"""


@pytest.fixture
def package(tmp_path) -> Path:
    root = tmp_path / "code"
    shutil.copytree(REPO / "workflow_scripts", root / "workflow_scripts", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def probe(root: Path, module: str, spec: str | None = None, folder: Path | None = None) -> dict:
    args = [sys.executable, "-c", PROBE, str(root), module] + ([spec, str(folder)] if spec else [])
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("stage", ["analysis.reconstruction", "report.assemble", "theory.study", "sources.data"])
def test_the_closure_is_what_python_imports(package, stage):
    assert set(probe(package, stage)["closure"]) == loaded_modules(package, stage)


def test_comments_and_docstrings_leave_the_fingerprint_code_changes_it(package):
    before = probe(package, "analysis.reconstruction")["fingerprint"]
    kernels = package / "workflow_scripts/core/kernels.py"
    text = kernels.read_text()
    kernels.write_text('"""Another docstring."""\n# a comment\n\n\n' + text.split('"""', 2)[2])
    assert probe(package, "analysis.reconstruction")["fingerprint"] == before
    kernels.write_text(text + "\nEDITED = 1\n")
    assert probe(package, "analysis.reconstruction")["fingerprint"] != before
    # a module the stage does not import changes nothing
    theory = package / "workflow_scripts/theory/hmm.py"
    after = probe(package, "analysis.reconstruction")["fingerprint"]
    theory.write_text(theory.read_text() + "\nEDITED = 1\n")
    assert probe(package, "analysis.reconstruction")["fingerprint"] == after


def test_the_entry_script_is_dated_by_the_last_code_change(package, tmp_path):
    folder = tmp_path / "study" / ".snakemake" / "icl_stages"
    spec = "analysis.query_swap:from_snakemake"
    entry = Path(probe(package, "analysis.query_swap", spec, folder)["entry"])
    assert entry.stat().st_mtime == 0  # a first record trusts what the study already holds
    assert "run(snakemake, 'workflow_scripts.analysis.query_swap', 'from_snakemake')" in entry.read_text()
    assert probe(package, "analysis.query_swap", spec, folder)["entry"] == str(entry) and entry.stat().st_mtime == 0

    # the same code at another path: the script names the new path, its date stays
    moved = tmp_path / "moved"
    shutil.copytree(package, moved)
    probe(moved, "analysis.query_swap", spec, folder)
    assert str(moved) in entry.read_text() and entry.stat().st_mtime == 0

    module = moved / "workflow_scripts/analysis/query_dependence.py"
    module.write_text(module.read_text() + "\nEDITED = 1\n")
    probe(moved, "analysis.query_swap", spec, folder)
    assert abs(entry.stat().st_mtime - os.path.getmtime(module)) < 60  # now

    # going back to the old code is a change too: results made with the edit must not stand
    os.utime(entry, (1, 1))
    module.write_text(module.read_text().replace("\nEDITED = 1\n", ""))
    probe(moved, "analysis.query_swap", spec, folder)
    assert entry.stat().st_mtime > 1


def test_a_stage_that_does_not_exist_is_refused_with_its_name(package, tmp_path):
    args = [sys.executable, "-c", PROBE, str(package), "analysis.reconstruction", "analysis.nothing:from_snakemake", str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode != 0 and "stage 'analysis.nothing:from_snakemake': expected 'package.module:function'" in done.stderr
