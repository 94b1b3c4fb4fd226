"""Section 5.4: probes find the signal planted in one head's keys or values, and only there."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from workflow_scripts import probes, schemas

from .test_reconstruction import C, H, K, L, synthetic_set

D = 8
KEY_CELL = (1, 2, schemas.DEMO_OFFSETS.index(0))  # layer, head, offset index where keys encode the zero-shot answer
VALUE_CELL = (0, 0, schemas.DEMO_OFFSETS.index(1))  # where values encode the demonstration's label


def with_vectors(n_prompts: int = 40, seed: int = 0):
    """Synthetic prompts whose shards keep top keys/values for every layer; returns the zero-shot answers."""
    prompts, shards, _ = synthetic_set(n_prompts=n_prompts, seed=seed)
    rng = np.random.default_rng(seed)
    demo_ids = {r["prompt_id"]: r["demo_ids"] for r in prompts.to_pylist()}
    demo_labels = {r["prompt_id"]: r["demo_labels"] for r in prompts.to_pylist()}
    zero_shot = {d: int(rng.integers(C)) for ids in demo_ids.values() for d in ids}
    rows = shards.to_pylist()
    shape = [L, H, K, len(schemas.DEMO_OFFSETS), D]
    for row in rows:
        keys = rng.normal(size=shape)
        values = rng.normal(size=shape)
        for i, (d, y) in enumerate(zip(demo_ids[row["prompt_id"]], demo_labels[row["prompt_id"]])):
            keys[KEY_CELL[0], KEY_CELL[1], i, KEY_CELL[2], :C] += 4 * np.eye(C)[zero_shot[d]]
            values[VALUE_CELL[0], VALUE_CELL[1], i, VALUE_CELL[2], :C] += 4 * np.eye(C)[y]
        row.update(kv_layers=[0, 1], top_shape=shape, top_keys=keys.ravel().tolist(), top_values=values.ravel().tolist(),
                   top_positions=[0] * (L * H * K))
    rows[0].update(kv_layers=None, top_shape=None, top_keys=None, top_values=None, top_positions=None)  # beyond kv_max_prompts
    return prompts, pa.Table.from_pylist(rows, schema=schemas.SHARD), zero_shot


def test_probe_samples_align_vectors_with_their_demonstrations():
    prompts, shards, _ = with_vectors(n_prompts=4)
    samples = probes.probe_samples(prompts, shards)
    assert samples["keys"].shape == (L, H, len(schemas.DEMO_OFFSETS), 3 * K, D)  # one prompt kept nothing
    kept = [r for r in shards.to_pylist() if r["top_keys"] is not None]
    by_id = {r["prompt_id"]: r for r in prompts.to_pylist()}
    first = np.asarray(kept[0]["top_keys"], dtype=np.float32).reshape(kept[0]["top_shape"])
    np.testing.assert_array_equal(samples["keys"][1, 2, 3, 4], first[1, 2, 4, 3])  # demo 4 of the first kept prompt
    assert samples["example_ids"][:K].tolist() == by_id[kept[0]["prompt_id"]]["demo_ids"]
    assert samples["labels"][K : 2 * K].tolist() == by_id[kept[1]["prompt_id"]]["demo_labels"]


def test_probes_find_the_planted_cells_and_only_those():
    prompts, shards, zero_shot = with_vectors()
    samples = probes.probe_samples(prompts, shards)
    answers = np.array([zero_shot[d] for d in samples["example_ids"]])
    table = pa.table(probes.probe_table(samples, answers, C, ridge=0.01, folds=5, seed=0)).to_pandas()
    assert len(table) == 2 * L * H * len(schemas.DEMO_OFFSETS)
    for vector, (layer, head, offset) in (("key", KEY_CELL), ("value", VALUE_CELL)):
        part = table[table.vector == vector].set_index(["layer", "head", "offset"])
        planted = part.accuracy.loc[(layer, head, schemas.DEMO_OFFSETS[offset])]
        others = part.accuracy.drop(index=(layer, head, schemas.DEMO_OFFSETS[offset]))
        assert planted > 0.9
        assert others.max() < 0.6  # noise: chance is about 1/3
        assert part.n_samples.iloc[0] == 39 * K
        assert part.majority.iloc[0] == pytest.approx(np.bincount(answers if vector == "key" else samples["labels"]).max() / (39 * K))


def test_probes_without_kept_vectors_name_the_config_key():
    prompts, shards, _ = synthetic_set(n_prompts=3)
    with pytest.raises(probes.ProbeError, match=r"extraction\.kv_layers"):
        probes.probe_samples(prompts, shards)


def test_too_few_demonstrations_for_the_folds_name_the_config_key():
    prompts, shards, zero_shot = with_vectors(n_prompts=2)
    samples = probes.probe_samples(prompts, shards)
    answers = np.array([zero_shot[d] for d in samples["example_ids"]])
    with pytest.raises(probes.ProbeError, match=r"analysis\.probe_folds'=10"):
        probes.probe_table(samples, answers, C, ridge=0.01, folds=10, seed=0)
