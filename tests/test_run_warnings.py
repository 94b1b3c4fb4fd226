"""The stages' warnings, gathered from job logs for the report's top and the end of a run."""
from __future__ import annotations

import os
import time

from workflow_scripts.core import run_warnings


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_only_the_workflows_own_warnings_are_gathered(tmp_path):
    logs = tmp_path / "logs"
    write(logs / "prepare_task" / "toy.log", [
        "2026-12-02 01:02:03,456 workflow_scripts.sources.data INFO task toy: 40 examples",
        "2026-12-02 01:02:03,457 workflow_scripts.sources.data WARNING task toy: dropped 6 rows ('Pos': 6)",
        "2026-12-02 01:02:03,458 transformers.modeling_utils WARNING Some weights were not initialized",
        "2026-12-02 01:02:03,459 workflow_scripts.sources.data WARNING task toy: dropped 6 rows ('Pos': 6)",
    ])
    write(logs / "report" / "report.log", ["2026-12-02 01:02:04,000 workflow_scripts.report.assemble WARNING not listed"])
    found = run_warnings.study_warnings(logs)
    assert found == [(str(logs / "prepare_task" / "toy.log"), "task toy: dropped 6 rows ('Pos': 6)")]
    for name in ("a", "b"):  # the same warning from more jobs: one line
        write(logs / "zero_shot" / f"{name}.log", ["2026-12-02 01:02:05,000 workflow_scripts.core.split WARNING pool of 4"])
    assert run_warnings.study_warnings(logs)[1] == (f"{logs / 'zero_shot' / 'a.log'} (and 1 more)", "pool of 4")
    section = run_warnings.warning_lines(found)
    assert section[0] == "## Warnings from the run" and "- `" + str(logs / "prepare_task" / "toy.log") + "`: task toy: dropped 6 rows ('Pos': 6)" in section
    assert run_warnings.console_text(found).startswith("1 warning from this run's jobs")
    assert run_warnings.warning_lines([]) == [] and run_warnings.console_text([]) == ""


def test_the_console_gets_only_the_logs_this_run_wrote(tmp_path):
    old, new = tmp_path / "logs" / "a" / "old.log", tmp_path / "logs" / "b" / "new.log"
    write(old, ["2026-12-01 09:00:00,000 workflow_scripts.core.split WARNING old news"])
    write(new, ["2026-12-02 09:00:00,000 workflow_scripts.core.split WARNING this run"])
    started = time.time()
    os.utime(old, (started - 100, started - 100))
    assert [m for _, m in run_warnings.study_warnings(tmp_path / "logs", since=started - 1)] == ["this run"]
    assert run_warnings.study_warnings(tmp_path / "missing") == []
