"""What a studied model's folder must hold: the config.json of a causal (decoder-only) language
model, its tokenizer files and its weights.

Checked from the folder's files alone (no transformers import), so config validation can run it on a
local model when the Snakefile is parsed and prepare_model on every source. Without it, an encoder
such as BertForMaskedLM runs through the whole study (AutoModelForCausalLM maps bert to
BertLMHeadModel with only a warning) and a folder without tokenizer files fails deep inside the
tokenizer backend.
"""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.core.layers import LayerError, resolve_all

EXPECTED = "a causal (decoder-only) language model is expected (e.g. llama, gpt2, gptj, gpt_neox, mistral, qwen2, gemma3)"

# Bidirectional encoders: every token sees the whole text, so there is no next-token prediction to
# study. Some have a "causal" head in transformers (BertLMHeadModel, RobertaForCausalLM), meant as the
# decoder of an encoder-decoder pair; they are refused too.
ENCODER_TYPES = frozenset({
    "albert", "bert", "big_bird", "camembert", "canine", "convbert", "data2vec-text", "deberta", "deberta-v2",
    "distilbert", "electra", "ernie", "esm", "flaubert", "fnet", "funnel", "ibert", "layoutlm", "longformer",
    "luke", "megatron-bert", "mobilebert", "modernbert", "mpnet", "mra", "nezha", "nystromformer", "rembert",
    "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "squeezebert", "xlm", "xlm-roberta",
    "xlm-roberta-xl", "xmod", "yoso",
})
# Encoder-decoders whose config.json may lack `is_encoder_decoder: true` (it is a class default that
# older checkpoints do not write out).
ENCODER_DECODER_TYPES = frozenset({
    "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "encoder-decoder", "fsmt", "led", "longt5",
    "m2m_100", "marian", "mbart", "mt5", "mvp", "nllb-moe", "pegasus", "pegasus_x", "plbart", "prophetnet",
    "switch_transformers", "t5", "t5gemma", "umt5", "whisper", "xlm-prophetnet",
})
# Class names of models that predict the next token: LlamaForCausalLM, GPT2LMHeadModel, and the
# multimodal decoders AutoModelForCausalLM also loads (Gemma3ForConditionalGeneration).
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel", "WithLMHead", "ForConditionalGeneration")

# What AutoTokenizer builds a fast tokenizer from: tokenizers' own file, a sentencepiece or tiktoken
# model, or a BPE / WordPiece vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "*.model", "*.tiktoken", "vocab.json", "vocab.txt")
WEIGHTS = "*.safetensors"
LEGACY_WEIGHTS = "*.bin"


def causal_lm_problem(config: dict) -> str | None:
    """Why a model's config.json is not a causal decoder LM, in words, or None when it is one."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    found = f"model_type {model_type!r}, architectures {architectures}"
    if config.get("is_encoder_decoder") or model_type in ENCODER_DECODER_TYPES:
        return f"an encoder-decoder model ({found})"
    if model_type in ENCODER_TYPES:
        return f"an encoder-only model ({found})"
    # Remote code names the class AutoModelForCausalLM loads, whatever its architectures say.
    if "AutoModelForCausalLM" in (config.get("auto_map") or {}):
        return None
    if architectures and not any(name.endswith(CAUSAL_HEADS) for name in architectures):
        # e.g. MistralModel (an embedding model's body): AutoModelForCausalLM would add a random head.
        return f"a model without a causal language-model head ({found})"
    return None


def missing_files(folder: Path) -> list[str]:
    """What from_pretrained needs besides config.json that `folder` lacks (at its top level, where
    from_pretrained reads)."""
    missing = []
    if not any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
        missing.append(f"tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if not (any(folder.glob(WEIGHTS)) or any(folder.glob(LEGACY_WEIGHTS))):
        missing.append(f"weights ({WEIGHTS} or {LEGACY_WEIGHTS})")
    return missing


def model_dir_problems(folder: Path, key: str) -> list[str]:
    """Why `folder` (config key `key`) cannot be the studied model; empty when it can."""
    shown = repr(str(folder))
    config_file = folder / "config.json"
    if not config_file.is_file():
        return [f"config key '{key}': {shown} is not a model directory "
                "(expected a folder holding config.json, weights and tokenizer files)"]
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        return [f"config key '{key}': {config_file} cannot be read as JSON ({err})"]
    if not isinstance(config, dict):
        return [f"config key '{key}': {config_file} is not a JSON object"]
    problems = []
    kind = causal_lm_problem(config)
    if kind is not None:
        problems.append(f"config key '{key}': {shown} holds {kind}, but {EXPECTED}; point {key} at one")
    missing = missing_files(folder)
    if missing:
        problems.append(
            f"config key '{key}': {shown} holds config.json but no {' and no '.join(missing)}; a model folder "
            "needs both (save them with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)), "
            f"so point {key} at a complete one"
        )
    return problems


def model_shape(model_config: dict) -> tuple[int | None, int | None]:
    """(layers, attention heads per layer) from a model's config.json, None where it does not say
    (the names differ across architectures: llama's num_hidden_layers, GPT-2's n_layer, ...)."""
    text = model_config.get("text_config") or {}
    def first(*keys):
        return next((c[k] for c in (model_config, text) for k in keys if isinstance(c.get(k), int)), None)
    return first("num_hidden_layers", "n_layer", "num_layers"), first("num_attention_heads", "n_head", "num_heads")


def model_problems(config: dict, name: str, model_config: dict) -> list[str]:
    """What the config asks of a model that this one cannot give, from its config.json: checked as
    soon as the model is known (at parse time for a local or prepared model, else by prepare_model),
    so that nothing fails after the extraction has run."""
    n_layers, n_heads = model_shape(model_config)
    problems = []
    if n_layers is not None:
        keys = [(f"extraction.{key}", config["extraction"][key]) for key in ("kv_layers", "hidden_layers")]
        keys += [(f"settings.{s}.hidden_layer", [config["settings"][s]["hidden_layer"]]) for s in config["study"]["settings"]
                 if config["settings"][s].get("similarity") == "hidden" and config["settings"][s].get("hidden_layer") is not None]
        for key, specs in keys:
            try:
                resolve_all(specs, n_layers, key)
            except LayerError as err:
                problems.append(f"model {name!r}: {err}")
    interventions = config["interventions"]
    if interventions["enabled"] and n_layers is not None and n_heads is not None:
        total = n_layers * n_heads
        if 2 * max(interventions["top_m"]) > total:
            problems.append(
                f"config key 'interventions.top_m': {max(interventions['top_m'])} heads and as many controls need "
                f"{2 * max(interventions['top_m'])} heads, but model {name!r} has {n_layers} layers x {n_heads} heads = {total}; "
                f"use top_m of at most {total // 2}"
            )
    return problems
