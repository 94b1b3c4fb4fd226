"""Edits at the last position (engine_edits.intervene: the prefix once, edits as last-token passes)
against an eager reference that applies the same edit to the full attention maps of one forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from workflow_scripts.causal.edits import Edit, head_dim, intervene
from workflow_scripts.model import engine
from workflow_scripts.model.engine import EngineError

from .test_engine import CONFIGS, prompt

REFERENCE = "icl_edit_reference"
LABELS = [5, 17, 99]
ARCHS = ["llama", "gpt2", "gemma3", "mistral", "qwen2"]
_EDIT: list[Edit | None] = [None]  # the edit the reference applies in its next forward


def edited_row(row: torch.Tensor, edit: Edit) -> torch.Tensor:
    """The edit's drop and move on one attention row, written out position by position."""
    row = row.clone()
    if edit.drop:
        for position in edit.drop:
            row[position] = 0.0
        row = row / row.sum()
    if edit.move_from and edit.move_to:
        moved = edit.move_fraction * sum(row[p] for p in edit.move_from)
        for p in edit.move_from:
            row[p] = row[p] * (1 - edit.move_fraction)
        total = sum(row[p] for p in edit.move_to)
        for p in edit.move_to:
            row[p] = row[p] + moved * (row[p] / total if total > 0 else 1 / len(edit.move_to))
    return row


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention over the full T x T maps; the edit changes the last query's row in its heads."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1).float(), value.repeat_interleave(groups, dim=1).float()
    scores = query.float() @ key.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]].float()
    weights = torch.softmax(scores, dim=-1)
    edit = _EDIT[0]
    heads = [(i, h) for i, (layer, h) in enumerate(edit.heads) if layer == module.layer_idx] if edit else []
    for _, h in heads:
        weights[0, h, -1] = edited_row(weights[0, h, -1], edit)
    out = weights @ value
    for i, h in heads:
        if edit.replace is not None:
            out[0, h, -1] = torch.as_tensor(edit.replace[i], dtype=out.dtype)
    return out.transpose(1, 2).to(query.dtype), None


AttentionInterface.register(REFERENCE, reference_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(REFERENCE, eager_mask)


def build(arch: str, attn: str):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation=attn).eval()


def reference_logits(model, ids: list[int], edit: Edit | None) -> np.ndarray:
    _EDIT[0] = edit
    try:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        _EDIT[0] = None
    return out.logits[0, -1, LABELS].float().numpy()


@pytest.fixture(scope="module", params=ARCHS)
def models(request):
    """(engine-prepared model, reference model with the same weights, eager model) of one architecture."""
    arch = request.param
    return arch, engine.prepare(build(arch, "sdpa")), build(arch, REFERENCE), build(arch, "eager")


def some_edits(model, n_tokens: int, seed: int) -> list[Edit]:
    config = model.config
    rng = np.random.default_rng(seed)
    dim = head_dim(config)
    last = config.num_hidden_layers - 1
    return [
        Edit(((0, 1),), replace=rng.normal(size=(1, dim))),
        Edit(((last, 0),), replace=np.zeros((1, dim))),
        Edit(((1, 2),), drop=(0, 3, 7, n_tokens - 5)),
        Edit(((0, 3), (last, 1)), move_from=tuple(range(2, 9)), move_to=tuple(range(12, 20)), move_fraction=1.0),
        Edit(((1, 0),), move_from=tuple(range(0, 4)), move_to=(n_tokens - 3, n_tokens - 2), move_fraction=0.5),
        Edit(((0, 0), (1, 1), (last, 3)), replace=rng.normal(size=(3, dim)), drop=(1, 2)),
        Edit(((0, 2), (1, 3)), drop=(4, 5), move_from=(6, 7, 8), move_to=(9, 10)),
        Edit(((1, 1),)),  # no change at all
    ]


def test_the_reference_is_the_models_own_attention(models):
    arch, _, reference, eager = models
    ids = prompt(1, 24)
    with torch.inference_mode():
        own = eager(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1, LABELS].numpy()
    np.testing.assert_allclose(reference_logits(reference, ids, None), own, atol=1e-5, err_msg=arch)


@pytest.mark.parametrize("length", [24, 40])  # gemma3's sliding window (8) matters at both
def test_every_edit_matches_the_reference(models, length):
    arch, model, reference, _ = models
    ids = prompt(length, length)
    edits = some_edits(model, length, seed=length)
    got = intervene(model, ids, LABELS, edits)
    assert got.shape == (len(edits) + 1, len(LABELS))
    np.testing.assert_allclose(got[0], reference_logits(reference, ids, None), atol=1e-5, err_msg=f"{arch} unedited")
    for row, edit in zip(got[1:], edits):
        np.testing.assert_allclose(row, reference_logits(reference, ids, edit), atol=1e-5, err_msg=f"{arch} {edit}")
    np.testing.assert_allclose(got[-1], got[0], atol=1e-6)  # the empty edit changes nothing
    assert np.abs(got[1:-1] - got[0]).max() > 1e-3  # and the others do change the logits
    np.testing.assert_allclose(intervene(model, ids, LABELS, edits, batch_size=3), got, atol=1e-6)


def test_the_model_still_captures_after_interventions(models):
    arch, model, _, eager = models
    ids = prompt(3, 20)
    intervene(model, ids, LABELS, some_edits(model, 20, 0)[:2])
    result = engine.run_batch(model, [engine.Request(ids, LABELS)])[0]
    with torch.inference_mode():
        own = eager(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1, LABELS].numpy()
    np.testing.assert_allclose(result["label_logits"], own, atol=1e-5, err_msg=arch)


def test_bad_edits_are_named():
    model = engine.prepare(build("llama", "sdpa"))
    ids = prompt(0, 12)
    with pytest.raises(EngineError, match=r"heads \[\(9, 0\)\]: the model has 3 layers of 4 heads"):
        intervene(model, ids, LABELS, [Edit(((9, 0),))])
    with pytest.raises(EngineError, match=r"positions \[12\]: the prompt has 12 tokens"):
        intervene(model, ids, LABELS, [Edit(((0, 0),), drop=(12,))])
    with pytest.raises(EngineError, match=r"replace has shape \(1, 3\), expected \(1, 8\)"):
        intervene(model, ids, LABELS, [Edit(((0, 0),), replace=np.zeros((1, 3)))])
    with pytest.raises(EngineError, match="both move_from and move_to"):
        intervene(model, ids, LABELS, [Edit(((0, 0),), move_from=(1, 2))])
    with pytest.raises(EngineError, match="at least 2 tokens"):
        intervene(model, ids[:1], LABELS, [])
    with pytest.raises(EngineError, match="gptj"):
        intervene(engine.prepare(build("gptj", "eager")), ids, LABELS, [])
