"""Tests of heads as kernel regression: kernel weights, reconstruction, scoring against loops."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from workflow_scripts.analysis import reconstruction as rc
from workflow_scripts.core import table_io, tables
from workflow_scripts.core.kernels import ATTENTION_KERNELS
from workflow_scripts.core.readers import iter_prompts


def random_spans(rng: np.random.Generator, k: int, prefix: int = 2):
    """Consecutive demos: x of random length, then the label token, then a 1-token separator."""
    x_start, y_pos, pos = [], [], prefix
    for _ in range(k):
        length = int(rng.integers(0, 5))  # 0: the span is the label token alone
        x_start.append(pos)
        y_pos.append(pos + length)
        pos += length + 2
    return x_start, y_pos, pos


def loop_weights(att: np.ndarray, x_start, y_pos) -> dict[str, np.ndarray]:
    L, H, _ = att.shape
    out = {name: np.zeros((L, H, len(x_start))) for name in ATTENTION_KERNELS}
    for l in range(L):
        for h in range(H):
            for i, (s, y) in enumerate(zip(x_start, y_pos)):
                span = [float(att[l, h, t]) for t in range(s, y + 1)]
                out["max"][l, h, i] = max(span)
                out["label"][l, h, i] = float(att[l, h, y])
                out["mean"][l, h, i] = sum(span) / len(span)
                out["max_nosink"][l, h, i] = max(float(att[l, h, t]) for t in range(max(s, min(1, y)), y + 1))
    return out


def loop_reconstruct(weights: np.ndarray, demo_labels, n_classes: int) -> np.ndarray:
    L, H, _ = weights.shape
    out = np.zeros((L, H), dtype=int)
    for l in range(L):
        for h in range(H):
            sums = [0.0] * n_classes
            for w, y in zip(weights[l, h], demo_labels):
                sums[y] += float(w)
            out[l, h] = max(range(n_classes), key=lambda c: (sums[c], -c))  # first maximum
    return out


def test_null_baseline_hand_example():
    agreement, accuracy = rc.null_baseline(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]))
    assert agreement == pytest.approx(0.5)
    assert accuracy == pytest.approx(0.25)
    agreement, accuracy = rc.null_baseline(np.array([2, 1, 2, 2, 0]), np.array([2, 2, 0, 0, 0]))
    assert agreement == pytest.approx(0.6) and accuracy == pytest.approx(0.4)


# --- synthetic prompt sets --------------------------------------------------------------------

L, H, K, C = 2, 3, 5, 3
SPECIAL = (1, 2)  # the head that attends only to demos of the predicted class


def synthetic_set(n_prompts: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts = {name: [] for name in tables.PROMPTS.names}
    shards = {name: [] for name in tables.SHARD.names}
    truth = []
    for pid in range(n_prompts):
        x_start, y_pos, query_start = random_spans(rng, K)
        T = query_start + int(rng.integers(1, 4))
        demo_labels = rng.permutation(np.r_[np.arange(C), rng.integers(0, C, K - C)]).tolist()
        label, prediction = int(rng.integers(C)), int(rng.integers(C))
        att = rng.dirichlet(np.ones(T), size=(L, H))
        special = np.zeros(T)
        for s, y, d in zip(x_start, y_pos, demo_labels):
            if d == prediction:
                special[s : y + 1] = 1.0
        att[SPECIAL] = special / special.sum()
        att16 = att.astype(np.float16)
        row = {
            "prompt_id": pid, "example_id": f"t-{pid}", "label": label,
            "demo_ids": [f"t-d{pid}-{i}" for i in range(K)], "demo_labels": demo_labels,
            "text": "", "input_ids": rng.integers(0, 1000, T).tolist(),
            "x_start": x_start, "x_end": y_pos, "y_pos": y_pos,
            "query_start": query_start, "query_end": T, "label_token_ids": [11, 12, 13],
        }
        for name in prompts:
            prompts[name].append(row.get(name))  # no content-free twins
        shard = {
            "prompt_id": pid, "n_tokens": T, "n_layers": L, "n_heads": H,
            "label_logits": rng.normal(size=C).tolist(), "prediction": prediction,
            "attention": att16.ravel().tolist(),
        }
        for name in shards:
            shards[name].append(shard.get(name))  # optional captures stay null
        truth.append({"att": att16.astype(np.float64), "x_start": x_start, "y_pos": y_pos,
                      "demo_labels": demo_labels, "label": label, "prediction": prediction})
    prompts_t = pa.Table.from_pydict(prompts, schema=tables.PROMPTS)
    shards_t = pa.Table.from_pydict(shards, schema=tables.SHARD)
    order = rng.permutation(n_prompts)  # shards need not be in prompt order
    return prompts_t, shards_t.take(pa.array(order)), truth


def test_score_heads_against_independent_computation():
    prompts, shards, truth = synthetic_set()
    heads, summary = rc.score_heads(prompts, shards, C)
    n = len(truth)

    agree = {k: np.zeros((L, H)) for k in ATTENTION_KERNELS}
    correct = {k: np.zeros((L, H)) for k in ATTENTION_KERNELS}
    for p in truth:
        weights = loop_weights(p["att"], p["x_start"], p["y_pos"])
        for k in ATTENTION_KERNELS:
            y_tilde = loop_reconstruct(weights[k], p["demo_labels"], C)
            agree[k] += y_tilde == p["prediction"]
            correct[k] += y_tilde == p["label"]

    assert set(heads) == set(tables.HEADS.names)
    sink = np.mean([p["att"][..., 0] for p in truth], axis=0)  # (L, H): attention on position 0
    got_sink = {(l, h): s for l, h, s in zip(heads["layer"], heads["head"], heads["sink_attention"])}
    for l in range(L):
        for h in range(H):
            assert got_sink[(l, h)] == pytest.approx(sink[l, h], abs=1e-12)
    assert len(heads["layer"]) == len(ATTENTION_KERNELS) * L * H
    got = {(l, h, k): (a, c) for l, h, k, a, c in zip(
        heads["layer"], heads["head"], heads["kernel"], heads["agreement"], heads["accuracy"])}
    assert len(got) == len(ATTENTION_KERNELS) * L * H  # every (layer, head, kernel) exactly once
    for k in ATTENTION_KERNELS:
        for l in range(L):
            for h in range(H):
                a, c = got[(l, h, k)]
                assert a == pytest.approx(agree[k][l, h] / n), (l, h, k)
                assert c == pytest.approx(correct[k][l, h] / n), (l, h, k)
        assert got[(*SPECIAL, k)][0] == 1.0
    # the random heads are not all perfect, so the special head is really singled out
    assert min(a for (l, h, k), (a, _) in got.items() if (l, h) != SPECIAL) < 1.0

    preds = np.array([p["prediction"] for p in truth])
    gold = np.array([p["label"] for p in truth])
    counts = np.bincount(preds, minlength=C)
    majority = int(np.argmax(counts))
    assert summary["n_prompts"] == [n]
    assert summary["icl_accuracy"][0] == pytest.approx(np.mean(preds == gold))
    assert summary["null_agreement"][0] == pytest.approx(counts.max() / n)
    assert summary["null_accuracy"][0] == pytest.approx(np.mean(gold == majority))


def test_write_scores_files_match_schemas(tmp_path):
    prompts, shards, _ = synthetic_set(n_prompts=6, seed=4)
    prompts_path = tmp_path / "prompts.parquet"
    table_io.write_table(prompts, tables.PROMPTS, prompts_path)
    shard_paths = []
    for i, part in enumerate((shards.slice(0, 3), shards.slice(3))):
        shard_paths.append(str(tmp_path / f"shards/{i}.parquet"))
        table_io.write_table(part, tables.SHARD, shard_paths[-1])
    rc.write_scores(prompts_path, shard_paths, C, tmp_path / "recon.parquet", tmp_path / "heads.parquet",
                    tmp_path / "summary.parquet")
    recon = table_io.read_table(tmp_path / "recon.parquet", tables.RECONSTRUCTION)
    assert recon.num_rows == 6 * len(ATTENTION_KERNELS)
    assert all(len(h) == L * H for h in recon.column("head_predictions").to_pylist())
    heads = table_io.read_table(tmp_path / "heads.parquet", tables.HEADS)
    summary = table_io.read_table(tmp_path / "summary.parquet", tables.SUMMARY)
    assert heads.num_rows == len(ATTENTION_KERNELS) * L * H
    assert summary.column("n_prompts").to_pylist() == [6]


def test_iter_prompts_reshapes_attention():
    prompts, shards, truth = synthetic_set(n_prompts=4, seed=7)
    for row in iter_prompts(prompts, shards):
        want = truth[row["prompt_id"]]
        assert row["attention"].shape == (L, H, len(row["input_ids"]))
        np.testing.assert_array_equal(row["attention"], want["att"])
        assert row["prediction"] == want["prediction"]


def test_iter_prompts_missing_shard_row():
    prompts, shards, _ = synthetic_set(n_prompts=4, seed=1)
    keep = pc.not_equal(shards.column("prompt_id"), 2)
    with pytest.raises(ValueError, match="no extraction row.*prompt 2"):
        list(iter_prompts(prompts, shards.filter(keep)))


def test_iter_prompts_token_count_mismatch():
    prompts, shards, _ = synthetic_set(n_prompts=2, seed=1)
    ids = prompts.column("input_ids").to_pylist()
    ids[0] = ids[0] + [5]
    prompts = prompts.set_column(prompts.schema.get_field_index("input_ids"), "input_ids",
                                 pa.array(ids, type=pa.list_(pa.int32())))
    with pytest.raises(ValueError, match="prompt 0"):
        list(iter_prompts(prompts, shards))
