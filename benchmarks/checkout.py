"""A commit's files in a folder (git archive), for the benchmarks that time it beside this checkout."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(commit: str, folder: Path) -> Path:
    """`commit` of this repository extracted into `folder` (created), which is returned."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder
