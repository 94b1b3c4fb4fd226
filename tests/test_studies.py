"""Every study in config/ plans on a fresh machine (a dry run: no network, model or GPU needed),
with extraction jobs for each of its models."""
from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from .test_workflow import REPO, SNAKEMAKE

STUDIES = sorted((REPO / "config").glob("*.yaml"))


@pytest.mark.parametrize("overlay", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_plans_every_model(overlay, tmp_path):
    done = subprocess.run(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"), str(overlay), "--dry-run"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    # An overlay that keeps config.yaml's models (paper_size.yaml changes only sizes) plans those.
    study = {**yaml.safe_load((REPO / "config.yaml").read_text())["study"], **yaml.safe_load(overlay.read_text())["study"]}
    for model in study["models"]:
        assert f"wildcards: model={model}, task=" in done.stdout, model
