"""What a prepared model's or encoder's manifest says, read back from where the study is now, and
whether the study's settings fit that model. Every stage that opens a model starts here."""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.core import paths
from workflow_scripts.core.model_check import model_problems


class ModelError(RuntimeError):
    """A model source that cannot be turned into a loadable model."""


# The manifest entries that are paths (the tokenizer is absent from manifests of older versions).
MANIFEST_PATHS = {"path": "model folder", "tokenizer": "tokenizer file"}


def read_manifest(path: str | Path) -> dict:
    """A model manifest with its paths resolved: relative ones (inside the study) from where the
    study is now, absolute ones of an older version's moved study to where they are now."""
    manifest = json.loads(Path(path).read_text())
    for key, what in MANIFEST_PATHS.items():
        if key not in manifest:
            continue
        manifest[key] = paths.resolve_stored(manifest[key], path)
        if not Path(manifest[key]).exists():
            raise ModelError(
                f"{path}: the {what} {manifest[key]!r} does not exist (moved or deleted since the model was "
                f"prepared?); prepare it again with `snakemake --cores 1 --forcerun {path}`, which also "
                "re-runs the jobs that read it"
            )
    return manifest


def fit_problems(config: dict, name: str, folder: Path) -> list[str]:
    """What the study asks of the model in `folder` that it cannot give (config.model_problems);
    none when the folder has no config.json (model_check names that)."""
    file = Path(folder) / "config.json"
    return model_problems(config, name, json.loads(file.read_text())) if file.is_file() else []


def check_study_fits(config: dict, name: str, manifest: str | Path) -> None:
    """Stop before any model job when the study asks what the prepared model cannot give (its heads
    for interventions.top_m, its layers): the parse-time check (rules/common.smk) cannot see a hub or
    registry model before it is prepared."""
    problems = fit_problems(config, name, Path(read_manifest(manifest)["path"]))
    if problems:
        raise ModelError("\n".join(problems))


class EncoderError(RuntimeError):
    """An encoder config or model directory that cannot give sentence embeddings."""


def read_encoder_manifest(path: str | Path) -> dict:
    """The encoder manifest with its model folder resolved from where the study is now (old
    manifests hold absolute paths, found again after a move by paths.resolve_stored)."""
    manifest = json.loads(Path(path).read_text())
    manifest["path"] = paths.resolve_stored(manifest["path"], path)
    if not Path(manifest["path"]).is_dir():
        raise EncoderError(
            f"{path}: the encoder folder {manifest['path']!r} does not exist (moved or deleted since the encoder "
            f"was prepared?); prepare it again with `snakemake --cores 1 --forcerun {path}`, which also re-runs "
            "the embeddings"
        )
    return manifest
