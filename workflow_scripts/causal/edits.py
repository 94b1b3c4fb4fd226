"""Edits at the last prompt position, at about the cost of one forward for dozens of them.

The prefix (every token but the last) runs once, through an attention function that keeps each
layer's keys and values as the model computed them (rotary applied). Every edit then needs only the
last token: a batch of last-token passes, one row per edit, in which the attention function computes
the last query's row itself against the kept prefix (broadcast over the batch, never copied) and the
token's own key, applies the row's edit in the chosen heads, and returns p @ V. The residual stream of
an edited row changes from its first edited layer on, as it would in a full forward.

An edit of a head, in this order: `drop` removes attention from positions and renormalizes; `move`
shifts a fraction of the attention on some positions onto others, in proportion to their own
attention; `replace` overrides the head's output (knockout by a mean or zero vector).
"""
from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from workflow_scripts.model.engine import EngineError, check_supported, input_device, register

EDIT = "icl_edit"
_STATE: contextvars.ContextVar["_Prefix | _Edits | None"] = contextvars.ContextVar("icl_edit", default=None)


@dataclass(frozen=True)
class Edit:
    """One intervention on some heads at the last prompt position only (the prefix is untouched)."""

    heads: tuple[tuple[int, int], ...]  # (layer, head) pairs edited together in one pass
    replace: np.ndarray | None = None  # (len(heads), head_dim): each head's output is replaced by its row
    drop: tuple[int, ...] = ()  # positions whose attention is removed; the row is renormalized
    move_from: tuple[int, ...] = ()  # a move_fraction of the attention on these positions ...
    move_to: tuple[int, ...] = ()  # ... goes to these, in proportion to their own (uniformly if theirs is 0)
    move_fraction: float = 1.0


@dataclass
class _Prefix:
    """The prefix pass: each layer's keys and values (1, KVH, T-1, D), kept for the edit passes."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _LayerEdits:
    """One layer's edits as tensors over the batch of edit rows: masks (B, H, T), fraction (B, H, 1),
    replace (B, H, D) where `replaced` (B, H) is set."""

    drop: torch.Tensor | None
    move_from: torch.Tensor | None
    move_to: torch.Tensor | None
    fraction: torch.Tensor | None
    replaced: torch.Tensor | None
    replace: torch.Tensor | None

    def to(self, device: torch.device) -> "_LayerEdits":
        """On `device` (a layer of a model split over devices may live on another than the inputs)."""
        if all(t is None or t.device == device for t in vars(self).values()):
            return self
        return _LayerEdits(**{name: None if t is None else t.to(device) for name, t in vars(self).items()})


@dataclass
class _Edits:
    """A last-token pass: the kept prefix and, per layer, the edits of the batch's rows."""

    prefix: _Prefix
    layers: dict[int, _LayerEdits]
    next_layer: int = 0


def attend(state: _Edits, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
           sliding_window: int | None) -> torch.Tensor:
    """The last token's attention output (B, 1, H, D) against the kept prefix and its own key/value,
    with this layer's edits applied; arithmetic in float32, grouped by key/value head (no repeat_kv)."""
    layer = state.next_layer
    state.next_layer += 1
    prefix_k, prefix_v = state.prefix.keys[layer][0].float(), state.prefix.values[layer][0].float()  # (KVH, P, D)
    batch, n_heads, _, dim = query.shape
    n_kv, n_prefix = prefix_k.shape[0], prefix_k.shape[1]
    q = query[:, :, -1].float().reshape(batch, n_kv, n_heads // n_kv, dim)
    own_k, own_v = key[:, :, -1].float(), value[:, :, -1].float()  # (B, KVH, D)
    scores = torch.cat([
        torch.einsum("bkgd,kpd->bkgp", q, prefix_k),
        torch.einsum("bkgd,bkd->bkg", q, own_k)[..., None],
    ], dim=-1).reshape(batch, n_heads, n_prefix + 1) * scaling
    if sliding_window is not None and n_prefix + 1 > sliding_window:
        # transformers' window: position q sees kv with kv > q - window, i.e. the last `window` positions
        scores[..., : n_prefix + 1 - sliding_window] = float("-inf")
    p = torch.softmax(scores, dim=-1)
    edits = state.layers.get(layer)
    if edits is not None:
        edits = edits.to(query.device)
        p = _edited(p, edits)
    p = p.view(batch, n_kv, n_heads // n_kv, n_prefix + 1)
    out = torch.einsum("bkgp,kpd->bkgd", p[..., :n_prefix], prefix_v) + p[..., n_prefix:] * own_v[:, :, None]
    out = out.reshape(batch, n_heads, dim)
    if edits is not None and edits.replaced is not None:
        out = torch.where(edits.replaced[..., None], edits.replace, out)
    return out[:, None].to(query.dtype)


def _edited(p: torch.Tensor, edits: _LayerEdits) -> torch.Tensor:
    """A batch of attention rows (B, H, T) with drop, then move, applied where the masks say."""
    if edits.drop is not None:
        kept = p.masked_fill(edits.drop, 0.0)
        p = torch.where(edits.drop.any(-1, keepdim=True), kept / kept.sum(-1, keepdim=True), p)
    if edits.move_from is not None:
        moved = edits.fraction * (p * edits.move_from).sum(-1, keepdim=True)
        p = p - edits.fraction * p * edits.move_from
        to = p * edits.move_to
        total = to.sum(-1, keepdim=True)
        share = torch.where(total > 0, to / total.clamp_min(1e-30), edits.move_to / edits.move_to.sum(-1, keepdim=True).clamp_min(1))
        p = p + moved * share
    return p


def edit_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Registered attention function: keep the prefix's keys and values, or compute an edit pass."""
    state = _STATE.get()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    check_supported(module, kwargs)
    if isinstance(state, _Edits):
        return attend(state, query, key, value, float(scale), kwargs.get("sliding_window")), None
    if isinstance(state, _Prefix):
        state.keys.append(key)
        state.values.append(value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def layer_edits(edits: list[Edit], n_layers: int, n_heads: int, n_tokens: int, head_dim: int, device) -> dict[int, _LayerEdits]:
    """The edits of a chunk as per-layer tensors; row 0 of the batch is the unedited pass."""
    batch = len(edits) + 1
    per_layer: dict[int, dict[str, np.ndarray]] = {}

    def arrays(layer: int) -> dict[str, np.ndarray]:
        return per_layer.setdefault(layer, {
            "drop": np.zeros((batch, n_heads, n_tokens), bool), "move_from": np.zeros((batch, n_heads, n_tokens), bool),
            "move_to": np.zeros((batch, n_heads, n_tokens), bool), "fraction": np.zeros((batch, n_heads, 1)),
            "replaced": np.zeros((batch, n_heads), bool), "replace": np.zeros((batch, n_heads, head_dim)),
        })

    for row, edit in enumerate(edits, start=1):
        _check(edit, n_layers, n_heads, n_tokens, head_dim)
        for i, (layer, head) in enumerate(edit.heads):
            a = arrays(layer)
            a["drop"][row, head, list(edit.drop)] = True
            a["move_from"][row, head, list(edit.move_from)] = True
            a["move_to"][row, head, list(edit.move_to)] = True
            a["fraction"][row, head] = edit.move_fraction if edit.move_from else 0.0  # _check: both ends or none
            if edit.replace is not None:
                a["replaced"][row, head] = True
                a["replace"][row, head] = edit.replace[i]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, device=device, dtype=torch.bool if a.dtype == bool else torch.float32)

    out = {}
    for layer, a in per_layer.items():
        # Kinds of edit no row of this layer uses stay None, so the pass skips their arithmetic.
        moving, replacing = a["fraction"].any(), a["replaced"].any()
        out[layer] = _LayerEdits(
            drop=tensor(a["drop"]) if a["drop"].any() else None,
            move_from=tensor(a["move_from"].astype(np.float32)) if moving else None,
            move_to=tensor(a["move_to"].astype(np.float32)) if moving else None,
            fraction=tensor(a["fraction"]) if moving else None,
            replaced=tensor(a["replaced"]) if replacing else None,
            replace=tensor(a["replace"]) if replacing else None,
        )
    return out


def _check(edit: Edit, n_layers: int, n_heads: int, n_tokens: int, head_dim: int) -> None:
    bad = [(l, h) for l, h in edit.heads if not (0 <= l < n_layers and 0 <= h < n_heads)]
    if bad:
        raise EngineError(f"edit of heads {bad}: the model has {n_layers} layers of {n_heads} heads")
    positions = [p for p in (*edit.drop, *edit.move_from, *edit.move_to) if not 0 <= p < n_tokens]
    if positions:
        raise EngineError(f"edit of positions {positions[:5]}: the prompt has {n_tokens} tokens")
    if bool(edit.move_from) != bool(edit.move_to):
        raise EngineError("a move needs both move_from and move_to positions")
    if edit.replace is not None and np.shape(edit.replace) != (len(edit.heads), head_dim):
        raise EngineError(f"replace has shape {np.shape(edit.replace)}, expected ({len(edit.heads)}, {head_dim})")


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def intervene(model, input_ids: list[int], label_token_ids: list[int], edits: list[Edit], batch_size: int = 128) -> np.ndarray:
    """Label logits (1 + len(edits), len(label_token_ids)), float32: row 0 without edits, row i + 1 with
    edits[i]. The prefix runs once; the edits run in last-token passes of up to `batch_size` rows, as
    few and as even as that allows (a pass of a few rows costs nearly what a full one does: it reads
    every weight)."""
    if len(input_ids) < 2:
        raise EngineError("an edit needs a prompt of at least 2 tokens (a prefix and the last token)")
    config = model.config
    if config.model_type == "gptj":
        raise EngineError("gptj: interventions need attention through transformers' registry, which GPT-J bypasses")
    register(EDIT, edit_attention)
    before = config._attn_implementation
    device = input_device(model)
    n_tokens = len(input_ids)
    model.set_attn_implementation(EDIT)
    try:
        prefix = _Prefix()
        token = _STATE.set(prefix)
        try:
            with torch.inference_mode():
                model(input_ids=torch.tensor([input_ids[:-1]], device=device), use_cache=False, logits_to_keep=1)
        finally:
            _STATE.reset(token)
        if len(prefix.keys) != config.num_hidden_layers:
            raise EngineError(f"{config.model_type}: {len(prefix.keys)} of {config.num_hidden_layers} layers went through the engine")
        rows = [np.zeros((0, len(label_token_ids)), np.float32)]
        passes = max(1, math.ceil(len(edits) / batch_size))
        size = max(1, math.ceil(len(edits) / passes))  # even passes, each of at most batch_size edits
        chunks = [edits[i : i + size] for i in range(0, len(edits), size)] or [[]]
        for n, chunk in enumerate(chunks):
            state = _Edits(prefix, layer_edits(chunk, config.num_hidden_layers, config.num_attention_heads, n_tokens,
                                               head_dim(config), device))
            token = _STATE.set(state)
            try:
                with torch.inference_mode():
                    out = model(input_ids=torch.full((len(chunk) + 1, 1), input_ids[-1], device=device),
                                position_ids=torch.full((len(chunk) + 1, 1), n_tokens - 1, device=device),
                                use_cache=False, logits_to_keep=1)
            finally:
                _STATE.reset(token)
            logits = out.logits[:, -1, label_token_ids].float().cpu().numpy()
            rows.append(logits if n == 0 else logits[1:])  # every chunk repeats the unedited row 0
        return np.concatenate(rows)
    finally:
        model.set_attn_implementation(before)
