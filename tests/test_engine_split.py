"""A model split by accelerate (extraction.device_map) captures what the same model captures on one
device: attention rows, keys and values, the peak-attention keys, hidden states, head outputs and
the causal check's edits. This machine has one device, so the split runs through accelerate's
dispatch with weights offloaded to disk and CPU memory (parameters on the meta device, moved in by
hooks at each layer), as layers on other GPUs would be. ENGINE_TEST_DEVICE=cuda runs the model on the
GPU, with half its layers resident there and the rest offloaded (benchmarks/gpu_check.sh)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import transformers

from workflow_scripts.causal import edits as engine_edits
from workflow_scripts.causal.edits import Edit
from workflow_scripts.model import engine, loading
from workflow_scripts.model.engine import Request

N_LAYERS = 4
DEVICE = os.environ.get("ENGINE_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    out = tmp_path_factory.mktemp("split_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    return out


def manifest(model_dir) -> dict:
    return {"name": "split", "path": str(model_dir), "revision": None, "trust_remote_code": False}


def single(model_dir):
    return engine.prepare(loading.load_model(manifest(model_dir), DEVICE, "float32", attn_implementation="sdpa"))


def offloaded(model_dir, offload_dir):
    """Embedding and two layers on disk, the rest in CPU memory (on a GPU: resident there): every
    offloaded weight reaches the forward through accelerate's hooks, and its parameters sit on the
    meta device."""
    from accelerate import dispatch_model

    model = loading.load_model(manifest(model_dir), "cpu", "float32", attn_implementation="sdpa")
    resident = 0 if DEVICE == "cuda" else "cpu"
    device_map = {"model.embed_tokens": "disk", "model.rotary_emb": resident, "model.norm": resident, "lm_head": resident,
                  **{f"model.layers.{i}": "disk" if i % 2 else resident for i in range(N_LAYERS)}}
    model = dispatch_model(model, device_map=device_map, main_device=DEVICE, offload_dir=str(offload_dir))
    assert any(p.device.type == "meta" for p in model.parameters())
    return engine.prepare(model)


def requests() -> list[Request]:
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 256, size=n).tolist() for n in (23, 17, 30)]
    return [Request(p, [5, 6, 7], spans=[(1, 4), (6, 9), (11, 15)], kv_positions=[3, 4, 5, 9],
                    hidden_positions=[0, 8, len(p) - 1]) for p in prompts]


def captures(model) -> list[dict]:
    return engine.run(model, requests(), batch_size=2, kv_layers=[0, 2, 3], hidden_layers=[1, 3], head_outputs=True)


def edits(model) -> np.ndarray:
    config = model.config
    dim = engine_edits.head_dim(config)
    ids = requests()[2].input_ids
    chosen = [Edit(((0, 1), (3, 2)), replace=np.ones((2, dim))), Edit(((1, 0),), drop=(2, 3, 4)),
              Edit(((2, 3), (3, 0)), move_from=tuple(range(1, 10)), move_to=tuple(range(12, 20)), move_fraction=0.5)]
    return engine_edits.intervene(model, ids, [5, 6, 7], chosen, batch_size=2)


def assert_same(got: list[dict], expected: list[dict]) -> None:
    for g, e in zip(got, expected):
        assert set(g) == set(e)
        assert {"attention", "keys", "values", "top_keys", "top_values", "top_positions", "hidden", "head_outputs"} <= set(e)
        for name in e:
            np.testing.assert_allclose(g[name], e[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_offloaded_model_captures_what_one_device_captures(model_dir, tmp_path):
    expected, expected_edits = captures(single(model_dir)), edits(single(model_dir))
    split = offloaded(model_dir, tmp_path)
    assert engine.input_device(split).type == DEVICE
    assert_same(captures(split), expected)
    np.testing.assert_allclose(edits(split), expected_edits, rtol=1e-5, atol=1e-6)


def test_device_map_config_loads_through_accelerate(model_dir):
    """extraction.device_map and max_memory as the model stages pass them (here all on the CPU)."""
    caps = {"0": "2GiB"} if DEVICE == "cuda" else {"cpu": "2GiB"}
    cfg = {"threads": 1, "device": "auto", "dtype": "float32", "device_map": "auto", "max_memory": caps}
    model, device, dtype = loading.prepared_model(manifest(model_dir), cfg)
    assert (device, dtype) == (DEVICE, "float32")
    assert_same(captures(model), captures(single(model_dir)))


def test_max_memory_keys_become_gpu_indices():
    assert loading.max_memory({"0": "70GiB", "1": "75GiB", "cpu": "200GiB"}) == {0: "70GiB", 1: "75GiB", "cpu": "200GiB"}
    assert loading.max_memory(None) is None


def test_placement_summary_counts_modules_per_device():
    assert loading.placement_summary({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": "cpu"}) == (
        "cuda:0: 2 modules, cuda:1: 1 modules, cpu: 1 modules")
