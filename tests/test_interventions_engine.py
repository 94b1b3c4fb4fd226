"""What tests/test_engine.py and tests/test_engine_edits.py leave out of head outputs and interventions:
head outputs of a prompt alone (the existing test runs them left-padded only), the two features
checked against each other (replacing heads by their own captured output must change nothing), the
unedited row against the model's plain forward, a move onto positions a sliding window hides
(their attention is exactly 0, so the mass is spread uniformly), and GPT-NeoX (partial rotary)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow_scripts import engine
from workflow_scripts.engine import Request
from workflow_scripts.engine_edits import Edit, intervene

from .test_engine import OUTPUT_PROJECTIONS, prompt
from .test_engine_edits import LABELS, REFERENCE, build, reference_logits, some_edits

ARCHS = ["llama", "gpt2", "gemma3", "gpt_neox"]
LENGTH = 30  # longer than gemma3's sliding window (8), so its window matters


@pytest.mark.parametrize("arch", ARCHS)
def test_head_outputs_of_a_prompt_alone_are_the_inputs_of_the_output_projection(arch):
    model = build(arch, "eager")
    ids = prompt(7, LENGTH)
    seen: list[torch.Tensor] = []
    projections = [m for name, m in model.named_modules() if name.endswith(OUTPUT_PROJECTIONS)]
    hooks = [p.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0, -1].clone())) for p in projections]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    want = torch.stack(seen).numpy()  # (L, H * D), heads concatenated as the projection reads them
    got = engine.run_batch(engine.prepare(model), [Request(ids, LABELS)], head_outputs=True)[0]["head_outputs"]
    assert got.shape[:2] == (3, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got.reshape(3, -1), want, atol=1e-5, err_msg=arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_replacing_heads_by_their_own_output_changes_nothing(arch):
    """Head outputs (capture) and the replace edit (interventions) must agree on what a head's output
    is; row 0 must be the plain forward's logits."""
    model = engine.prepare(build(arch, "sdpa"))
    ids = prompt(8, LENGTH)
    own = engine.run_batch(model, [Request(ids, LABELS)], head_outputs=True)[0]
    outputs = own["head_outputs"]  # (L, H, D)
    n_layers, n_heads, _ = outputs.shape
    every = tuple((layer, head) for layer in range(n_layers) for head in range(n_heads))
    edits = [Edit(((layer, head),), replace=outputs[layer, head][None]) for layer, head in [(0, 1), (1, 3), (2, 0)]]
    edits.append(Edit(every, replace=outputs.reshape(len(every), -1)))
    edits.append(Edit(every, replace=outputs.reshape(len(every), -1) + 1.0))  # not a no-op: replace does act
    got = intervene(model, ids, LABELS, edits)
    with torch.inference_mode():
        plain = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1, LABELS].numpy()
        eager = build(arch, "eager")(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1, LABELS].numpy()
    np.testing.assert_allclose(got[0], plain, atol=1e-5, err_msg=arch)
    np.testing.assert_allclose(got[0], eager, atol=1e-5, err_msg=arch)
    np.testing.assert_allclose(got[0], own["label_logits"], atol=1e-5, err_msg=arch)
    np.testing.assert_allclose(got[1:-1], np.broadcast_to(got[0], got[1:-1].shape), atol=1e-5, err_msg=arch)
    assert np.abs(got[-1] - got[0]).max() > 1e-3
    np.testing.assert_allclose(intervene(model, ids, LABELS, edits, batch_size=2), got, atol=1e-6)


def test_a_move_onto_positions_outside_the_sliding_window_spreads_uniformly():
    """gemma3's layers 0 and 2 see only the last 8 positions: attention on positions 3..5 is exactly 0,
    so the moved mass goes to them uniformly (and then their values count)."""
    model = engine.prepare(build("gemma3", "sdpa"))
    reference = build("gemma3", REFERENCE)
    ids = prompt(9, LENGTH)
    inside, outside = (LENGTH - 5, LENGTH - 4, LENGTH - 3), (3, 4, 5)
    edits = [Edit(((0, 1), (2, 2)), move_from=inside, move_to=outside, move_fraction=fraction) for fraction in (1.0, 0.5)]
    got = intervene(model, ids, LABELS, edits)
    for row, edit in zip(got[1:], edits):
        np.testing.assert_allclose(row, reference_logits(reference, ids, edit), atol=1e-5, err_msg=str(edit))
    assert np.abs(got[1:] - got[0]).max() > 1e-3


def test_gpt_neox_edits_match_the_reference():
    """GPT-NeoX rotates only part of each head (rotary_pct 0.5): the kept prefix keys must be the rotated ones."""
    model = engine.prepare(build("gpt_neox", "sdpa"))
    reference = build("gpt_neox", REFERENCE)
    ids = prompt(10, LENGTH)
    edits = some_edits(model, LENGTH, seed=1)
    got = intervene(model, ids, LABELS, edits)
    want = [reference_logits(reference, ids, edit) for edit in [None, *edits]]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5)
    assert np.abs(got[1:-1] - got[0]).max() > 1e-3
