"""What tests/test_engine.py and tests/test_engine_edits.py leave out of head outputs and interventions:
head outputs of a prompt alone (the existing test runs them left-padded only), the two features
checked against each other (replacing heads by their own captured output must change nothing), the
unedited row against the model's plain forward, a move onto positions a sliding window hides
(their attention is exactly 0, so the mass is spread uniformly), GPT-NeoX (partial rotary), and the
causal check's run_set end to end on a tiny model (every family on the mass-matched control too)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from workflow_scripts.analysis import reconstruction as rc
from workflow_scripts.causal import interventions
from workflow_scripts.causal.edits import Edit, intervene
from workflow_scripts.core import tables
from workflow_scripts.model import engine
from workflow_scripts.model.engine import Request

from .test_engine import OUTPUT_PROJECTIONS, prompt
from .test_engine_edits import LABELS, REFERENCE, build, reference_logits, some_edits
from .test_interventions import add_rows, as_tables

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


def tiny_prompt_set(model, n_prompts: int = 10) -> tuple[pa.Table, pa.Table]:
    """Prompts of 4 demonstrations (2 classes, labels LABELS[:2]) and the shards the engine extracts from them."""
    rng = np.random.default_rng(0)
    prompts = {name: [] for name in tables.PROMPTS.names}
    shards = {name: [] for name in tables.SHARD.names}
    for pid in range(n_prompts):
        demo_labels = [0, 1, int(rng.integers(2)), int(rng.integers(2))]
        ids, x_start, y_pos = [1], [], []
        for label in demo_labels:
            x_start.append(len(ids))
            ids += rng.integers(20, 250, 3).tolist() + [LABELS[label]]
            y_pos.append(len(ids) - 1)
        query_start = len(ids)
        ids += rng.integers(20, 250, 3).tolist() + [2]
        row = {"prompt_id": pid, "example_id": f"q{pid}", "label": pid % 2, "demo_ids": [f"d{pid}-{i}" for i in range(4)],
               "demo_labels": demo_labels, "text": "", "input_ids": ids, "x_start": x_start, "x_end": y_pos, "y_pos": y_pos,
               "query_start": query_start, "query_end": len(ids), "label_token_ids": LABELS[:2]}
        got = engine.run_batch(model, [Request(ids, LABELS[:2])], head_outputs=True)[0]
        n_layers, n_heads, n_tokens = got["attention"].shape
        shard = {"prompt_id": pid, "n_tokens": n_tokens, "n_layers": n_layers, "n_heads": n_heads,
                 "label_logits": got["label_logits"].tolist(), "prediction": int(np.argmax(got["label_logits"])),
                 "attention": got["attention"].astype(np.float16).ravel().tolist(),
                 "head_outputs": got["head_outputs"].astype(np.float16).ravel().tolist()}
        add_rows(prompts, shards, row, shard)
    return as_tables(prompts, shards)


def test_run_set_edits_every_family_in_the_matched_control_and_records_its_mass():
    model = engine.prepare(build("llama", "sdpa"))
    prompts, shards = tiny_prompt_set(model)
    recon = pa.Table.from_pydict(rc.head_predictions(prompts, shards, 2), schema=tables.RECONSTRUCTION)
    cfg = {"kernel": "max", "prompts": 0, "top_m": [1, 2], "random_draws": 2, "seed": 0, "knockout": "mean",
           "steer_fraction": 1.0, "batch_size": 16}
    columns = interventions.run_set(model, prompts, shards, recon, cfg, {"n_select": 6, "n_heldout": 4}, 0)
    rows = pl.from_arrow(pa.Table.from_pydict(columns, schema=tables.INTERVENTIONS))
    counts = {(f, t): n for f, t, n in rows.group_by(["family", "target"]).len().iter_rows()}
    for family in interventions.FAMILIES:
        # per held-out prompt and m: top, bottom, 2 same-layer and 2 matched draws (every prompt shows both classes)
        assert {t: counts[family, t] for t in ("top", "random", "matched", "bottom")} == {"top": 8, "random": 16, "matched": 16, "bottom": 8}
    # the recorded mass, by hand from the select prompts' attention rows
    held = set(rows["prompt_id"])
    select = [p for p in prompts.to_pylist() if p["prompt_id"] not in held]
    assert len(select) == 6
    by_id = {r["prompt_id"]: r for r in shards.to_pylist()}
    demos = np.zeros((3, 4))
    for p in select:
        att = np.asarray(by_id[p["prompt_id"]]["attention"], dtype=np.float64).reshape(3, 4, -1)
        demos += sum(att[..., s : y + 1].sum(axis=-1) for s, y in zip(p["x_start"], p["y_pos"]))
    demos /= len(select)
    knockouts = rows.filter(pl.col("family") == "knockout").unique(["target", "m", "draw"], keep="first", maintain_order=True)
    for row in knockouts.iter_rows(named=True):
        heads = [tuple(int(v[1:]) for v in h.split()) for h in row["heads"].split(", ")]
        assert row["attention_mass"] == pytest.approx(np.mean([demos[h] for h in heads]), abs=1e-6)
        if row["target"] == "matched":
            top = rows.filter((pl.col("target") == "top") & (pl.col("m") == row["m"]))["heads"][0]
            assert not set(row["heads"].split(", ")) & set(top.split(", "))
