"""Last-token capture at the cost of a plain forward pass.

The forward pass keeps the model's fast attention (SDPA). A wrapper registered in transformers'
attention-function registry sees each layer's query and keys exactly as the model uses them
(rotary applied, grouped-query heads, the padding/causal/sliding-window mask) and computes only
the LAST query's attention row, instead of the T x T maps that output_attentions materializes.
Architectures whose attention does not go through the registry (GPT-J's own `_attn`) are wrapped
at that method. A forward in which not every layer reported fails loudly.
"""
from __future__ import annotations

import contextvars
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from workflow_scripts.core.tables import DEMO_OFFSETS

CAPTURE = "icl_capture"
_STATE: contextvars.ContextVar["_Capture | None"] = contextvars.ContextVar("icl_capture", default=None)


class EngineError(RuntimeError):
    """A model or input the engine cannot capture exactly."""


def attention_rows(last_query: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale + bias) for the last query: q (L, B, H, D), keys (L, B, KVH, T, D),
    bias (L, B, 1, T) additive mask, scale (L,); returns (L, B, H, T) in float32.

    Query head h reads key head h // (H / KVH) (repeat_kv); grouping the queries avoids copying keys.
    """
    n_layers, batch, n_heads, dim = last_query.shape
    n_kv, n_tokens = keys.shape[2], keys.shape[3]
    grouped = last_query.float().view(n_layers, batch, n_kv, n_heads // n_kv, dim)
    scores = torch.einsum("lbkgd,lbktd->lbkgt", grouped, keys.float()).reshape(n_layers, batch, n_heads, n_tokens)
    return torch.softmax(scores * scale[:, None, None, None] + bias, dim=-1)


@dataclass
class _Capture:
    """What one batched forward records. Layers only stash views during the forward (no extra
    kernels between the model's own); the rows are computed for all layers at once afterwards."""

    spans: torch.Tensor | None  # (B, k, 2) demonstration spans [x_start, y_pos] in padded coordinates
    kv_positions: torch.Tensor | None  # (B, P) positions whose keys/values to keep
    kv_layers: set[int] | None
    keep_outputs: bool = False  # each head's attention output at the last position, per layer
    keep_values: bool = False  # every layer's values (continuations run over the prompt's keys and values)
    outputs: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H, D)
    stash: list[tuple] = field(default_factory=list)  # per layer (last query, key, value, mask row, scale)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, KVH, P, D)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    top_keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, k, len(DEMO_OFFSETS), D)
    top_values: dict[int, torch.Tensor] = field(default_factory=dict)
    top_pos: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, k)

    def record(self, query, key, value, attention_mask, scaling) -> None:
        n_heads, n_kv = query.shape[1], key.shape[1]
        if n_heads % n_kv:
            raise EngineError(f"layer {len(self.stash)}: {n_heads} query heads do not divide over {n_kv} key/value heads")
        mask = attention_mask[:, :, -1, : key.shape[2]] if attention_mask is not None else None
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        keep = self.keep_values or (self.kv_layers is not None and len(self.stash) in self.kv_layers)
        self.stash.append((query[:, :, -1], key, value if keep else None, mask, float(scale)))

    def finish(self, device: torch.device) -> torch.Tensor:
        """Attention rows (B, L, H, T) of every layer on `device`; fills the key/value captures of kept
        layers (on their layer's device)."""
        queries, keys, _, masks, scales = zip(*self.stash)
        biases = [_bias(m, keys[i]) for i, m in enumerate(masks)]
        scale = torch.tensor(scales, device=keys[0].device)
        if len({(q.shape, k.shape, k.device) for q, k in zip(queries, keys)}) == 1:
            rows = attention_rows(torch.stack(queries), torch.stack(keys), torch.stack(biases), scale)
        else:  # layers of different shapes, or split over devices: one layer at a time, same arithmetic
            rows = [attention_rows(q[None], k[None], b[None], scale[i : i + 1].to(k.device))[0]
                    for i, (q, k, b) in enumerate(zip(queries, keys, biases))]
        for layer in sorted(self.kv_layers or ()):
            _, key, value, _, _ = self.stash[layer]
            self._keep(layer, rows[layer], key, value)
        return torch.stack([row.to(device) for row in rows], dim=1)

    def _keep(self, layer: int, row: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        batch, n_kv, n_tokens, dim = key.shape
        n_heads = row.shape[1]
        if self.kv_positions is not None:
            index = self.kv_positions.to(key.device)[:, None, :, None].expand(-1, n_kv, -1, dim)
            self.keys[layer] = key.gather(2, index)
            self.values[layer] = value.gather(2, index)
        if self.spans is not None:
            positions = torch.arange(n_tokens, device=row.device)
            spans = self.spans.to(row.device)
            inside = (positions >= spans[..., :1]) & (positions <= spans[..., 1:])  # (B, k, T)
            top = row[:, :, None, :].masked_fill(~inside[:, None], -1.0).argmax(-1)  # (B, H, k)
            # The probes of Section 5.4 read a few positions around the peak, not just the peak.
            around = (top[..., None] + torch.tensor(DEMO_OFFSETS, device=row.device)).clamp(0, n_tokens - 1)
            b = torch.arange(batch, device=row.device)[:, None, None, None]
            kv_head = (torch.arange(n_heads, device=row.device) // (n_heads // n_kv))[None, :, None, None]
            self.top_pos[layer] = top
            self.top_keys[layer] = key[b, kv_head, around]
            self.top_values[layer] = value[b, kv_head, around]


def _bias(mask: torch.Tensor | None, key: torch.Tensor) -> torch.Tensor:
    """The last query's mask row as an additive float bias (B, 1, T); zeros where SDPA had no mask."""
    if mask is None:
        return torch.zeros((key.shape[0], 1, key.shape[2]), device=key.device)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=key.device).masked_fill(~mask, float("-inf"))
    return mask.float()


def check_supported(module, kwargs: dict) -> None:
    """Refuse attention terms the engine's arithmetic does not apply (sinks, position biases, softcaps)."""
    unsupported = [k for k in ("s_aux", "position_bias", "softcap") if kwargs.get(k) is not None]
    if unsupported:
        raise EngineError(f"{type(module).__name__}: {unsupported} are not supported by the engine (SDPA cannot apply them)")


def capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Registered attention function: record the last row, then run SDPA as the model would."""
    check_supported(module, kwargs)
    state = _STATE.get()
    if state is not None:
        state.record(query, key, value, attention_mask, scaling)
    output, weights = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if state is not None and state.keep_outputs:
        state.outputs.append(output[:, -1])  # (B, T, H, D): the last position's, per head
    return output, weights


def register(name: str = CAPTURE, function=capture_attention) -> None:
    """Make `function` the attention of models switched to `name`, with SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(name, function)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)


def _wrap_gptj(model) -> None:
    """GPT-J computes attention in its own `_attn` (fp32, eager); record from the same inputs."""
    for module in model.modules():
        if type(module).__name__ == "GPTJAttention" and not hasattr(module, "_icl_original_attn"):
            module._icl_original_attn = module._attn

            def wrapped(query, key, value, attention_mask=None, _module=module):
                state = _STATE.get()
                if state is not None:
                    state.record(query, key, value, attention_mask, 1.0 / float(_module.scale_attn))
                output, weights = _module._icl_original_attn(query, key, value, attention_mask)
                if state is not None and state.keep_outputs:
                    state.outputs.append(output[:, :, -1])  # (B, H, T, D) here
                return output, weights

            module._attn = wrapped


def prepare(model):
    """Switch a loaded causal LM to the capturing attention (in place) and return it."""
    register()
    if model.config.model_type == "gptj":
        _wrap_gptj(model)
    else:
        model.set_attn_implementation(CAPTURE)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks (the ModuleList as long as the number of layers)."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise EngineError(f"{type(model).__name__}: cannot find its {n} decoder layers")


def input_device(model) -> torch.device:
    """Where the model's inputs go: its embedding's device. On a model split over devices
    (accelerate's device_map) that is the first one; an offloaded embedding runs where its hook
    moves it."""
    embedding = model.get_input_embeddings()
    hook = getattr(embedding, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return embedding.weight.device


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of a left-padded batch."""
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@dataclass(frozen=True)
class Request:
    """One prompt: token ids, the label-word ids to score, and what else to keep."""

    input_ids: list[int]
    label_token_ids: list[int]
    spans: list[tuple[int, int]] = ()  # (x_start, y_pos) per demonstration
    kv_positions: list[int] = ()  # keep keys/values here (e.g. each y_i -1..+3)
    hidden_positions: list[int] = ()
    # Other prompts that share this one's first `start` tokens, as (start, their tokens after those):
    # each runs only those tokens, over this prompt's keys and values (content-free calibration).
    continuations: tuple[tuple[int, tuple[int, ...]], ...] = ()


def run_batch(model, requests: list[Request], kv_layers: list[int] | None = None,
              hidden_layers: list[int] | None = None, head_outputs: bool = False, top_k: int = 0,
              defer_continuations: bool = False) -> list[dict]:
    """One left-padded forward; per prompt the label logits, attention (L, H, T) and optional captures
    (head_outputs: every head's attention output at the last position, (L, H, D), before the output
    projection; top_k: the k most probable next tokens of the full-vocabulary softmax, as next_ids
    and next_probs, computed on the device so only k values per prompt are copied back)."""
    device = input_device(model)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, mask, positions = left_pad([r.input_ids for r in requests], pad_id)
    width = ids.shape[1]
    offsets = [width - len(r.input_ids) for r in requests]
    if len({_shape(r) for r in requests}) != 1:
        raise EngineError("one batch mixes requests with different captures; engine.run groups them")
    spans = torch.tensor([[(s + o, y + o) for s, y in r.spans] for r, o in zip(requests, offsets)], device=device) if requests[0].spans else None
    kv_pos = torch.tensor([[p + o for p in r.kv_positions] for r, o in zip(requests, offsets)], device=device) if requests[0].kv_positions else None
    state = _Capture(spans=spans, kv_positions=kv_pos, kv_layers=set(kv_layers) if kv_layers is not None else None,
                     keep_outputs=head_outputs, keep_values=any(r.continuations for r in requests))
    hidden: dict[int, torch.Tensor] = {}
    hooks = []
    if hidden_layers and requests[0].hidden_positions:
        h_pos = torch.tensor([[p + o for p in r.hidden_positions] for r, o in zip(requests, offsets)], device=device)
        layers = decoder_layers(model)
        for layer in hidden_layers:
            def hook(_module, _args, output, _layer=layer):
                out = output[0] if isinstance(output, tuple) else output
                hidden[_layer] = out.gather(1, h_pos.to(out.device)[..., None].expand(-1, -1, out.shape[-1]))
            hooks.append(layers[layer].register_forward_hook(hook))
    token = _STATE.set(state)
    try:
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                        use_cache=False, logits_to_keep=1)
    finally:
        _STATE.reset(token)
        for h in hooks:
            h.remove()
    n_layers = model.config.num_hidden_layers
    if len(state.stash) != n_layers:
        raise EngineError(
            f"{type(model).__name__} ({model.config.model_type}): {len(state.stash)} of {n_layers} layers reported "
            "their attention; this architecture's attention does not go through the engine"
        )
    # One device-to-host copy per kind of capture; per-prompt slices are then numpy views.
    with torch.inference_mode():
        captured = {
            "attention": state.finish(device),  # (B, L, H, T)
            "label_logits": out.logits[:, -1].float(),
            **{name: _stack_layers(by_layer, device) for name, by_layer in (
                ("keys", state.keys), ("values", state.values), ("top_positions", state.top_pos),
                ("top_keys", state.top_keys), ("top_values", state.top_values), ("hidden", hidden),
                ("head_outputs", dict(enumerate(state.outputs))))},
        }
        if top_k:
            top = torch.softmax(out.logits[:, -1].float(), dim=-1).topk(min(top_k, out.logits.shape[-1]), dim=-1)
            captured["next_ids"], captured["next_probs"] = top.indices, top.values
        host = {name: t.cpu().numpy() for name, t in captured.items() if t is not None}
        pending = {i: _Pending(r, [(key[i, :, o:], value[i, :, o:]) for _, key, value, _, _ in state.stash])
                   for i, (r, o) in enumerate(zip(requests, offsets)) if r.continuations}
        continued = {} if defer_continuations or not pending else dict(zip(pending, continue_batch(model, list(pending.values()))))
    results = []
    for i, (r, o) in enumerate(zip(requests, offsets)):
        result = {name: array[i] for name, array in host.items()}
        if i in pending:  # run() batches deferred continuations over several prompts
            result.update({"_pending": pending[i]} if defer_continuations else {"continuation_logits": continued[i]})
        result["attention"] = result["attention"][..., o:]
        result["label_logits"] = result["label_logits"][r.label_token_ids]
        if "top_positions" in result:
            result["top_positions"] = result["top_positions"] - o
        results.append(result)
    return results


# Continuations of this many prompts run as one batch: a pass of a few tokens reads all the weights
# (memory-bound on a CPU) however few rows it has, so they are shared by several prompts' rows.
CONTINUATION_BATCH = 8


@dataclass
class _Pending:
    """A request's continuations waiting for a batch: its prompt's keys and values per layer
    ((KVH, T, D) views on the forward's tensors)."""

    request: Request
    prefix: list[tuple[torch.Tensor, torch.Tensor]]


def continue_batch(model, pending: list[_Pending]) -> list[np.ndarray]:
    """Label logits (len(continuations), C) of each pending request's continuations, float32.

    Each continuation is the prompt input_ids[:start] + tokens; only its last tokens run, over the
    prompt's own keys and values, as a model with a key/value cache runs (keys and values at a
    position depend only on the tokens up to it, so this is its full forward up to float rounding).
    All run in one left-padded batch: row i is its whole prompt left-padded to the longest, whose
    last Q positions (Q = the most tokens any continuation adds) run as the pass's queries and the
    rest come from the cache; a row that adds fewer than Q tokens runs its last shared ones again."""
    from transformers import DynamicCache

    items = [(p, start, list(p.request.input_ids[:start]) + list(tokens)) for p in pending for start, tokens in p.request.continuations]
    device = input_device(model)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    n_query = max(len(full) - start for _, start, full in items)
    ids, mask, positions = left_pad([full for _, _, full in items], pad_id)
    n_cached = ids.shape[1] - n_query
    kept = [max(0, len(full) - n_query) for _, _, full in items]  # <= start: the shared prefix only
    layers = []
    for layer in range(len(pending[0].prefix)):
        k0 = pending[0].prefix[layer][0]
        keys, values = (k0.new_zeros((len(items), k0.shape[0], n_cached, k0.shape[2])) for _ in range(2))
        for row, ((p, _, _), n) in enumerate(zip(items, kept)):
            k, v = p.prefix[layer]
            keys[row, :, n_cached - n :] = k[:, :n]
            values[row, :, n_cached - n :] = v[:, :n]
        layers.append((keys, values))
    cache = DynamicCache(ddp_cache_data=layers, config=model.config)
    out = model(input_ids=ids[:, n_cached:].to(device), attention_mask=mask.to(device),
                position_ids=positions[:, n_cached:].to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].float().cpu().numpy()
    rows, results = iter(range(len(items))), []
    for p in pending:
        results.append(np.stack([logits[next(rows)][p.request.label_token_ids] for _ in p.request.continuations]))
    return results


def _stack_layers(by_layer: dict[int, torch.Tensor], device: torch.device) -> torch.Tensor | None:
    """(B, layers, ...) in layer order on `device`, float32 for floating captures; None when nothing
    was captured."""
    if not by_layer:
        return None
    stacked = torch.stack([by_layer[l].to(device) for l in sorted(by_layer)], dim=1)
    return stacked.float() if stacked.is_floating_point() else stacked


def _shape(request: Request) -> tuple[int, int, int]:
    """What a request captures; a batch's captures are tensors, so its requests must agree."""
    return len(request.spans), len(request.kv_positions), len(request.hidden_positions)


def run(model, requests: list[Request], batch_size: int, **captures) -> list[dict]:
    """All requests, grouped by what they capture and length-bucketed into batches; on CUDA a batch
    that runs out of memory is split and retried."""
    order = sorted(range(len(requests)), key=lambda i: (_shape(requests[i]), len(requests[i].input_ids)))
    results: list[dict | None] = [None] * len(requests)
    waiting: list[int] = []
    for _, group in itertools.groupby(order, key=lambda i: _shape(requests[i])):
        group = list(group)
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            for i, result in zip(chunk, _run_splitting(model, [requests[i] for i in chunk], defer_continuations=True, **captures)):
                results[i] = result
                waiting += [i] if "_pending" in result else []
            if len(waiting) >= CONTINUATION_BATCH:
                _continue(model, results, waiting)
    _continue(model, results, waiting)
    return results


def _continue(model, results: list[dict], waiting: list[int]) -> None:
    """Run the waiting results' continuations as one batch and release their keys and values."""
    if waiting:
        with torch.inference_mode():
            logits = continue_batch(model, [results[i].pop("_pending") for i in waiting])
        for i, value in zip(waiting, logits):
            results[i]["continuation_logits"] = value
        waiting.clear()


def _run_splitting(model, requests: list[Request], **captures) -> list[dict]:
    try:
        return run_batch(model, requests, **captures)
    except torch.cuda.OutOfMemoryError:
        if len(requests) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(requests) // 2
        return _run_splitting(model, requests[:half], **captures) + _run_splitting(model, requests[half:], **captures)
