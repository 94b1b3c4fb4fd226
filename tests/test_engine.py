"""The capture engine against the eager output_attentions oracle, on tiny random models built offline."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import transformers

from workflow_scripts.core import tables
from workflow_scripts.model import engine
from workflow_scripts.model.engine import EngineError, Request

# ENGINE_TEST_DEVICE=cuda runs the same checks on a GPU (fp32).
DEVICE = os.environ.get("ENGINE_TEST_DEVICE", "cpu")
COMMON = dict(vocab_size=256, num_hidden_layers=3, max_position_embeddings=128, pad_token_id=0)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, **COMMON),
    "mistral": lambda: transformers.MistralConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1, sliding_window=None, **COMMON),
    "qwen2": lambda: transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, **COMMON),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"], **COMMON),
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_head=4, n_layer=3, n_positions=128, vocab_size=256, pad_token_id=0),
    "gptj": lambda: transformers.GPTJConfig(n_embd=32, n_head=4, n_layer=3, n_positions=128, rotary_dim=4, vocab_size=256, pad_token_id=0),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, rotary_pct=0.5, **COMMON),
}


def build(arch: str):
    torch.manual_seed(0)
    config = CONFIGS[arch]()
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(DEVICE).eval()


def oracle(model, ids: list[int]):
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], device=DEVICE), output_attentions=True, output_hidden_states=True, use_cache=True)
    rows = np.stack([a[0, :, -1, :].float().cpu().numpy() for a in out.attentions])
    cache = out.past_key_values
    keys = [cache.layers[l].keys[0].float().cpu().numpy() for l in range(len(cache.layers))]
    values = [cache.layers[l].values[0].float().cpu().numpy() for l in range(len(cache.layers))]
    hidden = [h[0].float().cpu().numpy() for h in out.hidden_states]
    return out.logits[0, -1].float().cpu().numpy(), rows, keys, values, hidden


def prompt(seed: int, length: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, 256, size=length).tolist()


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_engine_matches_eager_oracle_alone_and_left_padded(arch):
    model = build(arch)
    prompts = [prompt(1, 21), prompt(2, 14), prompt(3, 30)]
    expected = [oracle(model, p) for p in prompts]
    engine.prepare(model)
    requests = [
        Request(p, [5, 6, 7], spans=[(1, 4), (6, 9)], kv_positions=[3, 4, 5], hidden_positions=[0, len(p) - 1])
        for p in prompts
    ]
    for batch in ([r] for r in requests), [requests]:  # each prompt alone, then one left-padded batch
        results = [res for chunk in batch for res in engine.run_batch(model, chunk, kv_layers=[0, 1, 2], hidden_layers=[0, 1])]
        for p, res, (logits, rows, keys, values, hidden) in zip(prompts, results, expected):
            np.testing.assert_allclose(res["attention"], rows, atol=1e-5)
            np.testing.assert_allclose(res["label_logits"], logits[[5, 6, 7]], atol=1e-4)
            compared = 0
            for j, layer in enumerate([0, 1, 2]):
                if keys[layer].shape[1] != len(p):
                    continue  # a sliding-window cache keeps only the last window: no oracle there
                compared += 1
                np.testing.assert_allclose(res["keys"][j], keys[layer][:, [3, 4, 5]], atol=1e-5)
                np.testing.assert_allclose(res["values"][j], values[layer][:, [3, 4, 5]], atol=1e-5)
                n_heads, n_kv = rows.shape[1], keys[layer].shape[0]
                for h in range(n_heads):
                    for d, (s, y) in enumerate([(1, 4), (6, 9)]):
                        top = s + int(np.argmax(rows[layer, h, s : y + 1]))
                        assert res["top_positions"][j, h, d] == top
                        around = np.clip(top + np.asarray(tables.DEMO_OFFSETS), 0, len(p) - 1)
                        kv = h // (n_heads // n_kv)
                        np.testing.assert_allclose(res["top_keys"][j, h, d], keys[layer][kv, around], atol=1e-5)
                        np.testing.assert_allclose(res["top_values"][j, h, d], values[layer][kv, around], atol=1e-5)
            assert compared >= 1
            for j, layer in enumerate([0, 1]):
                np.testing.assert_allclose(res["hidden"][j], hidden[layer + 1][[0, len(p) - 1]], atol=1e-5)


def test_engine_keeps_sdpa_for_the_forward_pass():
    model = engine.prepare(build("llama"))
    assert model.config._attn_implementation == engine.CAPTURE
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        engine.run_batch(model, [Request(prompt(4, 12), [1, 2])])
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert len(calls) == 3


def test_architecture_that_bypasses_the_registry_fails_loudly():
    model = build("llama")
    engine.register()
    # Not switched to the capture implementation: no layer reports, which must not pass silently.
    with pytest.raises(EngineError, match="0 of 3 layers reported"):
        engine.run_batch(model, [Request(prompt(5, 10), [1, 2])])


def test_run_restores_prompt_order_across_length_buckets():
    model = engine.prepare(build("qwen2"))
    prompts = [prompt(i, n) for i, n in enumerate([30, 8, 19, 11, 25])]
    results = engine.run(model, [Request(p, [1, 2]) for p in prompts], batch_size=2)
    assert [r["attention"].shape[-1] for r in results] == [30, 8, 19, 11, 25]
    alone = [engine.run_batch(model, [Request(p, [1, 2])])[0] for p in prompts]
    for a, b in zip(results, alone):
        np.testing.assert_allclose(a["attention"], b["attention"], atol=1e-5)


def test_left_pad_positions():
    ids, mask, positions = engine.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_engine_matches_eager_on_the_real_smollm2(smollm2_dir):
    """SmolLM2-135M (30 layers, 9 heads over 3 KV heads): rows within 1e-5, alone and left-padded."""
    torch.manual_seed(0)
    eager = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, attn_implementation="eager").eval()
    captured = engine.prepare(transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, attn_implementation="sdpa").eval())
    prompts = [np.random.default_rng(s).integers(100, 40000, size=n).tolist() for s, n in ((0, 96), (1, 61))]
    batched = engine.run_batch(captured, [Request(p, [1, 2]) for p in prompts])
    for p, res in zip(prompts, batched):
        with torch.inference_mode():
            out = eager(input_ids=torch.tensor([p]), output_attentions=True, use_cache=False)
        rows = np.stack([a[0, :, -1, :].numpy() for a in out.attentions])
        np.testing.assert_allclose(res["attention"], rows, atol=1e-5)
        np.testing.assert_allclose(res["label_logits"], out.logits[0, -1, [1, 2]].numpy(), atol=1e-3)
        alone = engine.run_batch(captured, [Request(p, [1, 2])])[0]
        np.testing.assert_allclose(alone["attention"], rows, atol=1e-5)


def test_run_keeps_captures_when_a_batch_would_mix_requests_with_and_without_them():
    model = engine.prepare(build("llama"))
    with_kv = [Request(prompt(i, 20 + i), [1, 2], spans=[(1, 4), (6, 9)], kv_positions=[3, 4]) for i in range(3)]
    without = [Request(prompt(10 + i, 21 + i), [1, 2]) for i in range(3)]
    results = engine.run(model, with_kv + without, batch_size=4, kv_layers=[1])
    assert all("keys" in r and r["keys"].shape == (1, 2, 2, 8) for r in results[:3])
    assert all("keys" not in r for r in results[3:])
    with pytest.raises(EngineError, match="mixes requests with different captures"):
        engine.run_batch(model, [with_kv[0], without[0]], kv_layers=[1])


OUTPUT_PROJECTIONS = ("self_attn.o_proj", "attn.c_proj", "attn.out_proj", "attention.dense")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "gptj", "gpt_neox"])
def test_head_outputs_are_the_inputs_of_the_output_projection(arch):
    model = build(arch)
    projections = [m for name, m in model.named_modules() if name.endswith(OUTPUT_PROJECTIONS)]
    assert len(projections) == 3
    seen: list[torch.Tensor] = []
    hooks = [p.register_forward_pre_hook(lambda _m, args: seen.append(args[0][:, -1].detach().clone())) for p in projections]
    ids = [prompt(1, 17), prompt(2, 11)]
    expected = []
    for row in ids:  # each prompt alone, through the model's own eager attention
        seen.clear()
        with torch.inference_mode():
            model(input_ids=torch.tensor([row], device=DEVICE))
        expected.append(np.stack([s[0].float().cpu().numpy() for s in seen]))
    for h in hooks:
        h.remove()
    engine.prepare(model)
    results = engine.run_batch(model, [Request(r, [1, 2]) for r in ids], head_outputs=True)  # left-padded together
    for result, want in zip(results, expected):
        n_layers, n_heads, dim = result["head_outputs"].shape
        assert (n_layers, n_heads) == (3, 4)
        np.testing.assert_allclose(result["head_outputs"].reshape(n_layers, -1), want, atol=1e-5, err_msg=arch)
    assert "head_outputs" not in engine.run_batch(model, [Request(ids[0], [1, 2])])[0]


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_a_continuation_over_the_prompts_keys_and_values_is_the_full_forward_of_its_prompt(arch):
    """A content-free twin shares the prompt's first tokens: running only its own tokens over the
    prompt's keys and values gives the label logits of its full forward (the eager oracle), alone
    and in a left-padded batch; the sliding-window layers of gemma3 see a prefix longer than the window."""
    model = build(arch)
    prompts = [prompt(1, 21), prompt(2, 14), prompt(3, 30)]
    twins = [(p[:-3] + [9, 8], len(p) - 3) for p in prompts] + [(p[:5] + [4], 5) for p in prompts]
    expected = [oracle(model, ids)[0][[5, 6, 7]] for ids, _ in twins]
    engine.prepare(model)
    requests = [Request(p, [5, 6, 7], continuations=tuple((start, tuple(ids[start:])) for ids, start in (twins[i], twins[i + 3])))
                for i, p in enumerate(prompts)]
    for batch in ([r] for r in requests), [requests]:
        results = [res for chunk in batch for res in engine.run_batch(model, chunk)]
        for i, res in enumerate(results):
            assert res["continuation_logits"].shape == (2, 3)
            np.testing.assert_allclose(res["continuation_logits"], [expected[i], expected[i + 3]], atol=1e-4)
    # engine.run holds the keys and values of CONTINUATION_BATCH prompts and runs their continuations together.
    many = engine.run(model, requests * 4, batch_size=1)
    assert len(many) == 12 and not any("_pending" in r for r in many)
    for n, res in enumerate(many):
        np.testing.assert_allclose(res["continuation_logits"], [expected[n % 3], expected[n % 3 + 3]], atol=1e-4)
    plain = engine.run_batch(model, [Request(prompts[0], [5, 6, 7])])[0]
    assert "continuation_logits" not in plain
    np.testing.assert_allclose(plain["label_logits"], results[0]["label_logits"], atol=1e-6)
