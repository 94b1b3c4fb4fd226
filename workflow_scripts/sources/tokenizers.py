"""The studied model's tokenizer, as prompt building and the model stages use it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from workflow_scripts.sources.manifests import ModelError

log = logging.getLogger(__name__)



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


def fast_backend(tokenizer, where: str):
    """The `tokenizers` object behind a transformers tokenizer; slow tokenizers have no character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{where}: its tokenizer is not a fast tokenizer; prompts need character offsets")
    return tokenizer.backend_tokenizer
